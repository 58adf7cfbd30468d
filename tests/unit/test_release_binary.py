"""The release_binary action against the real mirrored releases, on this machine.

Each case runs ansible-playbook on localhost with install folders under a
temporary directory and a file:// base URL: the real sums files, the real zip
(hashicorp layout) and tar.gz (github layout) archives.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import release_mirror
import yaml
from conftest import REPO, ansible_playbook

MIRROR = release_mirror.cache_root() / "releases"
RELEASES = {r.product: r for r in release_mirror.load_manifest()}


def run_install(tmp_path: Path, product: str, base_url: str, *, method: str = "remote",
                check: bool = False, signing_key_file: str | None = None,
                ) -> tuple[subprocess.CompletedProcess, dict]:
    rel = RELEASES[product]
    key = {"signing_key_file": signing_key_file} if signing_key_file else {}
    play = [{
        "name": "Install one release",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "roles": ["release_binary"],
        "tasks": [
            {"name": "Install", "release_binary": {
                "product": product, "version": rel.version, "base_url": base_url,
                "layout": rel.layout, "install_method": method,
                "download_dir": str(tmp_path / "downloads"),
                "install_root": str(tmp_path / "lib"), "bin_dir": str(tmp_path / "bin"),
                "controller_cache_dir": str(tmp_path / "controller-cache"), **key},
             "register": "installed"},
            {"name": "Show", "ansible.builtin.copy": {
                "content": "{{ installed | to_json }}", "dest": str(tmp_path / "result.json")},
             "check_mode": False},
        ],
    }]
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump(play), encoding="utf-8")
    result = ansible_playbook("-i", "localhost,", str(playbook), *(["--check", "--diff"] if check else []))
    out = tmp_path / "result.json"
    return result, (json.loads(out.read_text()) if out.is_file() else {})


def mirror_url(product: str) -> str:
    # The roles' convention: hashicorp bases hold every product, the others one.
    rel = RELEASES[product]
    return MIRROR.as_uri() if rel.layout == "hashicorp" else (MIRROR / product).as_uri()


@pytest.fixture(autouse=True)
def _mirror_ready():
    for product in ("consul-template", "oauth2-proxy"):
        if not release_mirror.is_cached(RELEASES[product], MIRROR):
            pytest.fail(f"{product} is not in the mirror {MIRROR}; run `make mirror`")


@pytest.mark.parametrize(("product", "method"), [("consul-template", "remote"),
                                                  ("oauth2-proxy", "controller")])
def test_installs_then_leaves_alone(tmp_path, product, method):
    rel = RELEASES[product]
    first, installed = run_install(tmp_path, product, mirror_url(product), method=method)
    assert first.returncode == 0, first.stdout
    assert installed["changed"] is True
    link = tmp_path / "bin" / product
    assert link.resolve() == Path(installed["binary"])
    version = subprocess.run([str(link), "-version" if product == "consul-template" else "--version"],
                             capture_output=True, text=True, check=False)
    assert rel.version in version.stdout + version.stderr

    archive = tmp_path / "downloads" / rel.archive
    assert release_mirror.sha256(archive) == release_mirror.expected_sum(
        MIRROR / rel.rel_dir / rel.sums, rel.archive), "the verified archive is kept on the host"

    again, rerun = run_install(tmp_path, product, mirror_url(product), method=method)
    assert again.returncode == 0, again.stdout
    assert rerun["changed"] is False


def test_check_mode_reports_and_writes_nothing(tmp_path):
    result, installed = run_install(tmp_path, "consul-template", mirror_url("consul-template"),
                                    check=True)
    assert result.returncode == 0, result.stdout
    assert installed["changed"] is True
    assert "installed" in result.stdout  # the diff names what would change
    assert not (tmp_path / "bin").exists()
    assert not (tmp_path / "lib").exists()


def test_repoints_a_link_that_points_elsewhere(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "consul-template").symlink_to("/bin/true")
    result, installed = run_install(tmp_path, "consul-template", mirror_url("consul-template"))
    assert result.returncode == 0, result.stdout
    assert installed["changed"] is True
    assert installed["previous"] == "/bin/true"
    assert (tmp_path / "bin" / "consul-template").resolve() == Path(installed["binary"])


@pytest.mark.parametrize("method", ["remote", "controller"])
def test_a_tampered_archive_installs_nothing(tmp_path, method):
    rel = RELEASES["consul-template"]
    mirror = tmp_path / "mirror"
    shutil.copytree(MIRROR / rel.rel_dir, mirror / rel.rel_dir)
    archive = mirror / rel.rel_dir / rel.archive
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))

    result, _ = run_install(tmp_path, "consul-template", mirror.as_uri(), method=method)
    assert result.returncode != 0
    assert "SHA256" in result.stdout
    assert not (tmp_path / "bin" / "consul-template").exists()
    assert not list((tmp_path / "lib").glob("**/consul-template"))


def test_a_missing_sums_line_is_named(tmp_path):
    rel = RELEASES["consul-template"]
    mirror = tmp_path / "mirror"
    shutil.copytree(MIRROR / rel.rel_dir, mirror / rel.rel_dir)
    (mirror / rel.rel_dir / rel.sums).write_text("0" * 64 + "  something-else.zip\n", encoding="utf-8")
    result, _ = run_install(tmp_path, "consul-template", mirror.as_uri())
    assert result.returncode != 0
    assert f"has no line for {rel.archive}" in result.stdout
    assert not (tmp_path / "bin" / "consul-template").exists()


def make_key(home: Path, name: str) -> Path:
    """A new signing key in its own gpg home; returns its armored public key file."""
    home.mkdir(mode=0o700, parents=True)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet"]
    subprocess.run([*gpg, "--passphrase", "", "--pinentry-mode", "loopback", "--quick-gen-key", name,
                    "ed25519", "sign", "never"], check=True, capture_output=True)
    key = home.parent / f"{home.name}.asc"
    key.write_bytes(subprocess.run([*gpg, "--armor", "--export", name], check=True,
                                   capture_output=True).stdout)
    return key


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    return {"release": make_key(root / "release", "test release signer"),
            "other": make_key(root / "other", "someone else")}


def signed_mirror(tmp_path: Path, keys: dict[str, Path], signer: str = "release") -> tuple[Path, Path]:
    """A copy of consul-template's release whose sums `signer` signed; the
    sums file and its signature."""
    rel = RELEASES["consul-template"]
    mirror = tmp_path / "mirror"
    shutil.copytree(MIRROR / rel.rel_dir, mirror / rel.rel_dir, ignore=shutil.ignore_patterns("*.sig"))
    sums = mirror / rel.rel_dir / rel.sums
    signature = sums.with_name(sums.name + ".sig")
    home = keys[signer].with_suffix("")
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", "--detach-sign", "--output",
                    str(signature), str(sums)], check=True, capture_output=True)
    return sums, signature


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("method", ["remote", "controller"])
def test_a_release_signed_by_the_configured_key_installs(tmp_path, keys, method):
    signed_mirror(tmp_path, keys)
    result, installed = run_install(tmp_path, "consul-template", (tmp_path / "mirror").as_uri(),
                                    method=method, signing_key_file=str(keys["release"]))
    assert result.returncode == 0, result.stdout
    assert installed["changed"] is True


# Each way the sums' signature can be wrong stops the run before anything is
# unpacked: the sums or the signature changed after signing, a signature by
# another key, no signature at all.
TAMPERING = {
    "sums-changed": lambda sums, sig: sums.write_text(sums.read_text() + "0" * 64 + "  extra.zip\n"),
    "sums-hash-flipped": lambda sums, sig: flip_byte(sums, 3),
    "signature-flipped": lambda sums, sig: flip_byte(sig, len(sig.read_bytes()) - 5),
    "signature-missing": lambda sums, sig: sig.unlink(),
    "signature-empty": lambda sums, sig: sig.write_bytes(b""),
}


@pytest.mark.parametrize("method", ["remote", "controller"])
@pytest.mark.parametrize("tamper", list(TAMPERING))
def test_a_tampered_sums_file_or_signature_installs_nothing(tmp_path, keys, method, tamper):
    sums, signature = signed_mirror(tmp_path, keys)
    TAMPERING[tamper](sums, signature)
    result, _ = run_install(tmp_path, "consul-template", (tmp_path / "mirror").as_uri(),
                            method=method, signing_key_file=str(keys["release"]))
    assert result.returncode != 0
    expected = "cannot read the sums' signature" if tamper == "signature-missing" else \
        "does not carry a good signature"
    assert expected in result.stdout, result.stdout
    assert not (tmp_path / "bin" / "consul-template").exists()
    assert not list((tmp_path / "lib").glob("**/consul-template"))


@pytest.mark.parametrize("method", ["remote", "controller"])
def test_sums_signed_by_another_key_install_nothing(tmp_path, keys, method):
    signed_mirror(tmp_path, keys, signer="other")
    result, _ = run_install(tmp_path, "consul-template", (tmp_path / "mirror").as_uri(),
                            method=method, signing_key_file=str(keys["release"]))
    assert result.returncode != 0
    assert "does not carry a good signature" in result.stdout
    assert not (tmp_path / "bin" / "consul-template").exists()


@pytest.mark.parametrize("method", ["remote", "controller"])
def test_a_tampered_archive_with_a_good_signature_installs_nothing(tmp_path, keys, method):
    sums, _ = signed_mirror(tmp_path, keys)
    flip_byte(sums.with_name(RELEASES["consul-template"].archive), 1000)
    result, _ = run_install(tmp_path, "consul-template", (tmp_path / "mirror").as_uri(),
                            method=method, signing_key_file=str(keys["release"]))
    assert result.returncode != 0
    assert "SHA256" in result.stdout
    assert not (tmp_path / "bin" / "consul-template").exists()


def test_a_key_for_a_site_that_signs_nothing_is_refused_by_name(tmp_path, keys):
    result, _ = run_install(tmp_path, "oauth2-proxy", mirror_url("oauth2-proxy"), method="controller",
                            signing_key_file=str(keys["release"]))
    assert result.returncode != 0
    assert "publishes no signature of its sums" in result.stdout


def test_the_lab_mirror_signs_its_hashicorp_releases_with_its_own_key(tmp_path):
    result, installed = run_install(tmp_path, "consul-template", mirror_url("consul-template"),
                                    signing_key_file=str(MIRROR / release_mirror.LAB_KEY_FILE))
    assert result.returncode == 0, result.stdout
    assert installed["changed"] is True


def test_the_bundled_hashicorp_key_is_hashicorps_release_key():
    shown = subprocess.run(["gpg", "--show-keys", "--with-colons", str(
        REPO / "roles/release_binary/files/keys/hashicorp.asc")], capture_output=True, text=True, check=True)
    fingerprints = [line.split(":")[9] for line in shown.stdout.splitlines() if line.startswith("fpr:")]
    assert fingerprints[0] == "C874011F0AB405110D02105534365D9472D7468F"
    assert "HashiCorp Security" in shown.stdout
