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
from conftest import ansible_playbook

MIRROR = release_mirror.cache_root() / "releases"
RELEASES = {r.product: r for r in release_mirror.load_manifest()}


def run_install(tmp_path: Path, product: str, base_url: str, *, method: str = "remote",
                check: bool = False) -> tuple[subprocess.CompletedProcess, dict]:
    rel = RELEASES[product]
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
                "controller_cache_dir": str(tmp_path / "controller-cache")},
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
