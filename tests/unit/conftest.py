"""Fixtures for the unit tests: the real consul binary from the release mirror,
and throwaway inventories."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tools" / part) for part in ("lab", "bench", "checks")]

import release_mirror  # noqa: E402


def mirrored_binary(product: str, folder: Path) -> Path:
    """The pinned release of `product` from the mirror, checked against its
    SHA256SUMS and unpacked into `folder`."""
    rel = next(r for r in release_mirror.load_manifest() if r.product == product)
    mirror = release_mirror.cache_root() / "releases"
    if not release_mirror.is_cached(rel, mirror):
        pytest.fail(f"{product} {rel.version} is not in the mirror {mirror}; run `make mirror`")
    release_dir = mirror / rel.rel_dir
    archive = release_dir / rel.archive
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == \
        release_mirror.expected_sum(release_dir / rel.sums, rel.archive)
    target = folder / rel.binary
    with zipfile.ZipFile(archive) as release:
        target.write_bytes(release.read(rel.binary))
    target.chmod(target.stat().st_mode | stat.S_IXUSR)
    return target


@pytest.fixture(scope="session")
def consul_bin(tmp_path_factory) -> Path:
    return mirrored_binary("consul", tmp_path_factory.mktemp("consul-bin"))


@pytest.fixture(scope="session")
def consul_template_bin(tmp_path_factory) -> Path:
    return mirrored_binary("consul-template", tmp_path_factory.mktemp("consul-template-bin"))


def write_inventory(path: Path, servers: list[str], clients: list[str],
                    host_vars: dict | None = None) -> Path:
    """An inventory shaped like the lab's, whose hosts are docker containers
    that do not exist: any attempt to touch a host fails loudly."""
    inventory = {
        "all": {
            "vars": {"ansible_connection": "community.docker.docker",
                     **(host_vars or {})},
            "children": {
                "consul_servers": {"hosts": {name: None for name in servers}},
                "consul_clients": {"hosts": {name: None for name in clients}},
            },
        }
    }
    path.write_text(yaml.safe_dump(inventory), encoding="utf-8")
    return path


def ansible_playbook(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
           "ANSIBLE_FILTER_PLUGINS": ":".join(str(REPO / "roles" / role / "filter_plugins")
                                              for role in ("consul", "platform")),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_STDOUT_CALLBACK": "default"}
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), *args],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def dev_agent_running(consul_bin: Path, folder: Path, config: dict | None = None):
    """A real Consul dev agent on loopback ports of its own, with `config`
    (agent JSON) on top; yields its HTTP URL once it has elected itself."""
    http = free_port()
    ports = {"http": http, "dns": -1, "grpc": -1, "grpc_tls": -1,
             "serf_lan": free_port(), "serf_wan": free_port(), "server": free_port()}
    config_file = folder / "agent.json"
    config_file.write_text(json.dumps({"ports": ports, **(config or {})}))
    agent = subprocess.Popen([str(consul_bin), "agent", "-dev", "-bind=127.0.0.1",
                              "-client=127.0.0.1", f"-config-file={config_file}", "-log-level=error"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v1/status/leader", timeout=1) as answer:
                    if json.load(answer):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the dev agent did not elect itself"
            time.sleep(0.2)
        yield url
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def pem_certificate(common_name: str, ca: bool = False, sans: list[str] | None = None) -> tuple[str, str]:
    """A self-signed EC P-256 certificate and its key, PEM (a CA when ca)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]),
                                        critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()).decode())


def encrypt_vault(path: Path, secrets: dict) -> Path:
    """Write `secrets` to `path` encrypted with ansible-vault; returns the
    password file (next to it)."""
    path.write_text(yaml.safe_dump(secrets), encoding="utf-8")
    password = path.parent.parent.parent / "vault-password"
    password.write_text("a test password\n", encoding="utf-8")
    subprocess.run([str(Path(sys.executable).parent / "ansible-vault"), "encrypt", "--vault-password-file",
                    str(password), str(path)], check=True, capture_output=True, cwd=REPO)
    assert path.read_text(encoding="utf-8").startswith("$ANSIBLE_VAULT;")
    return password
