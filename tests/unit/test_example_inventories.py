"""The staging and production examples as an operator fills them in: every
vault variable they read is listed in vault.yml.example, and with an
encrypted vault site.yml and the benchmark playbooks pass --syntax-check and
the preflight passes, before any host is touched (the example hosts do not
exist). Without the vault the preflight stops and names what is missing."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO, ansible_playbook, encrypt_vault, pem_certificate

ENVIRONMENTS = ["production", "staging"]
VAULT_NAME = re.compile(r"\bvault_[a-z0-9_]+")


def vault_names_read(inventory: Path) -> set[str]:
    return {name for path in inventory.glob("group_vars/**/*.yml")
            for name in VAULT_NAME.findall(path.read_text(encoding="utf-8"))}


def vault_values(names: set[str]) -> dict[str, str]:
    ca_cert, ca_key = pem_certificate("Example CA", ca=True)
    edge_cert, edge_key = pem_certificate("consul.example.com", sans=["consul.example.com"])
    known = {"vault_consul_gossip_key": "q2kMqAiPX4yuJtqG3UJ0YlmHPCs4gb8fFYYnBa/qi5o=",
             "vault_consul_acl_bootstrap_token": "3f0c7a52-9d1e-4b6a-8c2f-5e7d9a1b4c63",
             "vault_consul_tls_ca_cert": ca_cert, "vault_consul_tls_ca_key": ca_key,
             "vault_edge_tls_cert": edge_cert, "vault_edge_tls_key": edge_key,
             "vault_oauth2_proxy_client_secret": "an-example-client-secret-of-enough-length"}
    assert names <= set(known), f"no test value for {sorted(names - set(known))}"
    return {name: known[name] for name in names}


@pytest.fixture(params=ENVIRONMENTS)
def example(request, tmp_path) -> Path:
    folder = tmp_path / request.param
    shutil.copytree(REPO / "inventories" / request.param, folder, ignore=shutil.ignore_patterns(".secrets"))
    return folder


def test_vault_example_lists_every_vault_variable_the_inventory_reads(example):
    example_file = example / "group_vars/all/vault.yml.example"
    listed = set(VAULT_NAME.findall(example_file.read_text(encoding="utf-8")))
    read = vault_names_read(example)
    assert read, "the example reads no vault variable"
    assert read <= listed, f"vault.yml.example does not list {sorted(read - listed)}"


def test_site_and_benchmark_playbooks_pass_syntax_check(example):
    password = encrypt_vault(example / "group_vars/all/vault.yml", vault_values(vault_names_read(example)))
    bench = sorted(str(p.relative_to(REPO)) for p in (REPO / "playbooks/bench").glob("*.yml"))
    for playbook in ["site.yml", *bench]:
        result = ansible_playbook("-i", str(example / "hosts.yml"), "--vault-password-file", str(password),
                                  "--syntax-check", playbook)
        assert result.returncode == 0, playbook + result.stdout + result.stderr


def test_preflight_passes_with_the_vault_filled_in(example):
    password = encrypt_vault(example / "group_vars/all/vault.yml", vault_values(vault_names_read(example)))
    result = ansible_playbook("-i", str(example / "hosts.yml"), "--vault-password-file", str(password),
                              "playbooks/preflight.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    recap = re.findall(r"^(\S+)\s+: ok=\d+ .*failed=(\d+)", result.stdout, re.MULTILINE)
    assert {host for host, _ in recap} >= {"edge-1." + example.name + ".example.internal"}
    assert all(failed == "0" for _, failed in recap)
    assert not (example / ".secrets").exists(), "the preflight wrote secrets"


def test_preflight_without_the_vault_stops_and_names_the_missing_secret(example):
    result = ansible_playbook("-i", str(example / "hosts.yml"), "playbooks/preflight.yml")
    assert result.returncode != 0
    assert "vault_oauth2_proxy_client_secret" in result.stdout + result.stderr
