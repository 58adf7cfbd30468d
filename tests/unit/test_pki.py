"""The pki role on this machine: a CA and certificates with community.crypto,
issued again only when a request changed, a file is missing or it is asked."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from conftest import ansible_playbook
from cryptography import x509


def run_pki(tmp_path: Path, sans: list[str], reissue: bool = False) -> str:
    play = [{
        "name": "One CA and one certificate",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "tasks": [{"name": "PKI", "ansible.builtin.import_role": {"name": "pki"}, "vars": {
            "pki_dir": str(tmp_path / "ca"), "pki_ca_name": "test-ca", "pki_ca_common_name": "Test CA",
            "pki_reissue": reissue,
            "pki_certificates": [{"name": "web", "sans": sans, "extended_key_usage": ["serverAuth"]}]}}],
    }]
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump(play), encoding="utf-8")
    result = ansible_playbook("-i", "localhost,", str(playbook))
    assert result.returncode == 0, result.stdout[-3000:]
    return result.stdout


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sans_of(path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(ext.get_values_for_type(x509.DNSName))


def test_issues_once_then_keeps_everything(tmp_path):
    first = run_pki(tmp_path, ["DNS:web.localhost"])
    cert, ca = tmp_path / "ca" / "web.pem", tmp_path / "ca" / "test-ca.pem"
    assert sans_of(cert) == ["web.localhost"]
    x509.load_pem_x509_certificate(cert.read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate(ca.read_bytes()))
    assert "changed=0" not in first
    before = {p.name: digest(p) for p in (tmp_path / "ca").iterdir()}

    again = run_pki(tmp_path, ["DNS:web.localhost"])
    assert "changed=0" in again
    outcome = again.split("Issue this host's certificates that are missing or changed, and")[1]
    assert "skipping" in outcome.split("TASK")[0]
    assert {p.name: digest(p) for p in (tmp_path / "ca").iterdir()} == before


def test_a_new_san_issues_again_with_the_same_ca(tmp_path):
    run_pki(tmp_path, ["DNS:web.localhost"])
    ca_before = digest(tmp_path / "ca" / "test-ca.pem")
    run_pki(tmp_path, ["DNS:web.localhost", "DNS:other.localhost"])
    assert sans_of(tmp_path / "ca" / "web.pem") == ["other.localhost", "web.localhost"]
    assert digest(tmp_path / "ca" / "test-ca.pem") == ca_before


def test_reissue_and_a_lost_certificate_issue_again(tmp_path):
    run_pki(tmp_path, ["DNS:web.localhost"])
    cert = tmp_path / "ca" / "web.pem"
    first = digest(cert)
    run_pki(tmp_path, ["DNS:web.localhost"], reissue=True)
    second = digest(cert)
    assert second != first
    cert.unlink()
    run_pki(tmp_path, ["DNS:web.localhost"])
    assert cert.is_file() and digest(cert) != second


def test_a_new_ca_issues_every_certificate_again(tmp_path):
    run_pki(tmp_path, ["DNS:web.localhost"])
    for name in ("test-ca.pem", "test-ca-key.pem"):
        (tmp_path / "ca" / name).unlink()
    run_pki(tmp_path, ["DNS:web.localhost"])
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "test-ca.pem").read_bytes())
    x509.load_pem_x509_certificate((tmp_path / "ca" / "web.pem").read_bytes()).verify_directly_issued_by(ca)
