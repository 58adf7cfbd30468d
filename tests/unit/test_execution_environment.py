"""execution-environment.yml (AWX / Ansible Automation Platform) stays in
step with the repository: ansible-builder accepts it and writes a build
context, its collections are requirements.yml, its Python pins are the ones
requirements.txt installs here, and every collection the playbooks call is
in requirements.yml."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

EE = REPO / "execution-environment.yml"


def pins() -> dict[str, str]:
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return {name.lower(): version for name, version in
            (line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))}


def test_ansible_builder_writes_a_build_context(tmp_path):
    result = subprocess.run([str(Path(sys.executable).parent / "ansible-builder"), "create", "-f", str(EE),
                             "-c", str(tmp_path / "context"), "--output-filename", "Containerfile"],
                            capture_output=True, text=True, check=False, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    context = tmp_path / "context"
    containerfile = (context / "Containerfile").read_text(encoding="utf-8")
    assert "consul-platform/ee-base:latest" in containerfile
    galaxy = yaml.safe_load((context / "_build" / "requirements.yml").read_text(encoding="utf-8"))
    assert galaxy == yaml.safe_load((REPO / "requirements.yml").read_text(encoding="utf-8"))


def test_the_python_pins_are_the_ones_this_controller_runs():
    spec = yaml.safe_load(EE.read_text(encoding="utf-8"))["dependencies"]
    pinned = pins()
    wanted = [spec["ansible_core"]["package_pip"], spec["ansible_runner"]["package_pip"], *spec["python"]]
    for requirement in wanted:
        name, version = requirement.split("==", 1)
        assert pinned.get(name.lower()) == version, f"{requirement}: requirements.txt pins {pinned.get(name)}"


def test_every_collection_the_playbooks_call_is_required():
    required = {c["name"] for c in yaml.safe_load((REPO / "requirements.yml").read_text())["collections"]}
    used = set()
    for path in [REPO / "site.yml", *REPO.glob("playbooks/**/*.yml"), *REPO.glob("roles/*/tasks/*.yml"),
                 *REPO.glob("roles/*/handlers/*.yml")]:
        used |= set(re.findall(r"^\s*-?\s*((?:community|ansible)\.(?!builtin\b)[a-z_]+)\.[a-z_]+:",
                               path.read_text(encoding="utf-8"), re.MULTILINE))
    assert used, "no collection call found: the pattern is wrong"
    assert used <= required, f"not in requirements.yml: {sorted(used - required)}"
