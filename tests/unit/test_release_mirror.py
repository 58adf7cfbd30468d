"""The release mirror tool: apt source parsing, go.mod handling, layouts, pins."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import build_base_image
import pytest
import release_mirror
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_mirror_from_deb822_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    assert build_base_image.apt_mirror(tmp_path) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path):
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] https://mirror.example/debian bookworm main\n")
    assert build_base_image.apt_mirror(tmp_path) == "https://mirror.example/debian"


def test_each_suite_has_a_recipe_and_an_image_of_its_own():
    assert set(build_base_image.SUITE_PACKAGES) == set(build_base_image.SUITES)
    digests = {build_base_image.recipe_digest(suite) for suite in build_base_image.SUITES}
    assert len(digests) == len(build_base_image.SUITES)


@pytest.mark.parametrize("unit", ["LINK_DNS_UNIT", "SSH_HOST_KEYS_DROP_IN"])
def test_the_image_units_pass_systemd_analyze_verify(tmp_path, unit):
    """The units the trixie image carries, checked by systemd itself (the
    drop-in as part of a service that starts sshd's test)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    text = getattr(build_base_image, unit)
    if unit == "SSH_HOST_KEYS_DROP_IN":
        text = "[Unit]\nDescription=sshd stand-in\n" + text + "ExecStart=/bin/true\n"
    path = tmp_path / "lab-check.service"
    # What this controller may lack (resolved, sshd) is swapped for what it has.
    for missing, present in (("systemd-resolved.service", "sysinit.target"),
                             ("/usr/bin/ssh-keygen", "/bin/true"), ("/usr/sbin/sshd", "/bin/true")):
        text = text.replace(missing, present)
    path.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                            capture_output=True, text=True, check=False)
    problems = [line for line in result.stderr.splitlines() if "lab-check.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_local_replaces_become_requirements():
    gomod = """module github.com/hashicorp/consul
replace (
\tgithub.com/hashicorp/consul/api => ./api
\tgithub.com/hashicorp/consul/sdk => ./sdk
)
replace github.com/other/mod v1.0.0 => github.com/fork/mod v1.0.1
require (
\tgithub.com/hashicorp/consul/api v1.31.2
\tgithub.com/hashicorp/consul/sdk v0.16.1 // indirect
\tgithub.com/other/mod v1.0.0
)
"""
    assert release_mirror.local_submodules(gomod) == {
        "github.com/hashicorp/consul/api": "v1.31.2",
        "github.com/hashicorp/consul/sdk": "v0.16.1",
    }


def test_module_replacements_are_carried_into_the_wrapper():
    gomod = """module github.com/ory/hydra/v2
replace github.com/ory/hydra-client-go/v2 => ./internal/httpclient
replace github.com/gobuffalo/pop/v6 => github.com/ory/pop/v6 v6.2.1-0.2024
replace (
\tgithub.com/a/b v1.0.0 => github.com/c/b v1.0.1
\tgithub.com/d/e => ../e
)
require github.com/ory/hydra-client-go/v2 v2.2.1
"""
    assert release_mirror.module_replacements(gomod) == [
        "replace github.com/gobuffalo/pop/v6 => github.com/ory/pop/v6 v6.2.1-0.2024",
        "replace github.com/a/b v1.0.0 => github.com/c/b v1.0.1",
    ]
    assert release_mirror.local_submodules(gomod) == {"github.com/ory/hydra-client-go/v2": "v2.2.1"}


def test_ory_and_github_layout_names():
    releases = {r.product: r for r in release_mirror.load_manifest()}
    hydra, proxy = releases["hydra"], releases["oauth2-proxy"]
    assert hydra.archive == f"hydra_{hydra.version}-linux_sqlite_64bit.tar.gz"
    assert hydra.sums == f"hydra_{hydra.version}_checksums.txt"
    assert hydra.member == "hydra"
    assert proxy.member == f"oauth2-proxy-v{proxy.version}.linux-amd64/oauth2-proxy"


def test_hashicorp_layout_names():
    rel = next(r for r in release_mirror.load_manifest() if r.product == "consul")
    assert rel.rel_dir == f"consul/{rel.version}"
    assert rel.archive == f"consul_{rel.version}_linux_amd64.zip"
    assert rel.sums == f"consul_{rel.version}_SHA256SUMS"


def role_defaults(role: str) -> dict:
    loader = type("DefaultsLoader", (yaml.SafeLoader,), {})
    loader.add_constructor("!unsafe", lambda loader_, node: loader_.construct_scalar(node))
    return yaml.load((REPO / f"roles/{role}/defaults/main.yml").read_text(), Loader=loader)


def test_the_mirror_builds_the_versions_the_roles_pin():
    releases = {r.product: r for r in release_mirror.load_manifest()}
    assert releases["consul"].version == role_defaults("consul")["consul_version"]
    assert releases["consul-template"].version == role_defaults("consul_template")["consul_template_version"]
    assert releases["oauth2-proxy"].version == role_defaults("oauth2_proxy")["oauth2_proxy_version"]
    assert releases["hydra"].version == role_defaults("lab_idp")["lab_idp_hydra_version"]
    # The build stamps the binary with the same version.
    assert f"VERSION=v{releases['oauth2-proxy'].version}" in releases["oauth2-proxy"].ldflags
    assert "{version}" not in releases["hydra"].ldflags


def test_no_version_is_written_twice():
    manifest = (REPO / "files/releases.yml").read_text(encoding="utf-8")
    for release in release_mirror.load_manifest():
        assert f'"{release.version}"' not in manifest and f" {release.version}\n" not in manifest


def test_a_missing_pin_is_named(tmp_path):
    manifest = tmp_path / "releases.yml"
    manifest.write_text("consul:\n  version_from: roles/consul/defaults/main.yml:no_such_var\n"
                        "  official_base: x\n  layout: hashicorp\n  go_module: m\n  go_package: p\n"
                        "  binary: consul\n  ldflags: ''\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="no_such_var"):
        release_mirror.load_manifest(manifest)


def test_web_service_role_installs_the_packaged_version():
    project = tomllib.loads((REPO / "files/python-web-service/pyproject.toml").read_text())
    assert (role_defaults("python_web_service")["python_web_service_version"]
            == project["project"]["version"])


def test_pack_then_verify_round_trip(tmp_path):
    rel = next(r for r in release_mirror.load_manifest() if r.product == "consul")
    folder = tmp_path / rel.rel_dir
    folder.mkdir(parents=True)
    release_mirror.pack(rel, b"#!/bin/sh\necho fake\n", folder)
    assert release_mirror.is_cached(rel, tmp_path)
    (folder / rel.archive).write_bytes(b"tampered")
    assert not release_mirror.is_cached(rel, tmp_path)
