"""Fixtures for the unit tests: the real consul binary from the release mirror,
and throwaway inventories."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
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
           "ANSIBLE_FILTER_PLUGINS": str(REPO / "roles/consul/filter_plugins"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_STDOUT_CALLBACK": "default"}
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), *args],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
