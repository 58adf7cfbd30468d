"""Secrets from an encrypted vault reach the roles through the example
inventories' mappings: the given values are used, none is generated for them,
and two controllers holding the same inventory and vault render the same
configuration."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO, ansible_playbook, encrypt_vault, pem_certificate, write_inventory
from cryptography import x509

SERVERS = ["vault-server-1", "vault-server-2", "vault-server-3"]
CLIENTS = ["vault-client-1"]
GOSSIP_KEY = "q2kMqAiPX4yuJtqG3UJ0YlmHPCs4gb8fFYYnBa/qi5o="
BOOTSTRAP_TOKEN = "3f0c7a52-9d1e-4b6a-8c2f-5e7d9a1b4c63"


@pytest.fixture(scope="module", params=["production", "staging"])
def vault_inventory(request, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The example inventory's group_vars/all with an encrypted vault.yml
    filled in as vault.yml.example says, and the vault's password file."""
    folder = tmp_path_factory.mktemp(f"inventory-{request.param}")
    shutil.copytree(REPO / "inventories" / request.param / "group_vars" / "all",
                    folder / "group_vars" / "all")
    write_inventory(folder / "hosts.yml", SERVERS, CLIENTS, {"ansible_connection": "local"})
    cert, key = pem_certificate("Vault test CA", ca=True)
    secrets = {"vault_consul_gossip_key": GOSSIP_KEY, "vault_consul_acl_bootstrap_token": BOOTSTRAP_TOKEN,
               "vault_consul_tls_ca_cert": cert, "vault_consul_tls_ca_key": key}
    password = encrypt_vault(folder / "group_vars" / "all" / "vault.yml", secrets)
    return folder, password, secrets


def render(inventory: Path, password: Path, out: Path) -> Path:
    result = ansible_playbook("-i", str(inventory / "hosts.yml"), "--vault-password-file", str(password),
                              "tests/unit/render_consul_config.yml", "-e", f"render_dir={out}")
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def hcl_files(rendered: Path) -> dict[str, str]:
    """Each host's HCL; the render folder (the config folder of this test
    run, /etc/consul.d on a host) is written as <config_dir>."""
    return {str(path.relative_to(rendered)):
            path.read_text(encoding="utf-8").replace(str(rendered), "<config_dir>")
            for path in sorted(rendered.glob("*/*.hcl"))}


def test_the_vault_secrets_are_used_and_none_is_generated_for_them(vault_inventory, tmp_path):
    inventory, password, secrets = vault_inventory
    rendered = render(inventory, password, tmp_path / "controller")
    gossip = (rendered / SERVERS[0] / "gossip.hcl").read_text(encoding="utf-8")
    assert re.search(rf'^encrypt += "{re.escape(GOSSIP_KEY)}"$', gossip, re.MULTILINE), gossip
    assert not (rendered / "secrets" / "consul_gossip_key").exists()
    assert not (rendered / "secrets" / "consul_acl_bootstrap_token").exists()
    ca = (rendered / "secrets" / "tls" / "consul-agent-ca.pem").read_text(encoding="utf-8")
    assert ca.strip() == secrets["vault_consul_tls_ca_cert"].strip()
    issued = x509.load_pem_x509_certificate((rendered / SERVERS[0] / "tls" / "server.pem").read_bytes())
    assert issued.issuer.rfc4514_string() == "CN=Vault test CA"


def test_two_controllers_with_the_same_vault_render_the_same_configuration(vault_inventory, tmp_path):
    inventory, password, _ = vault_inventory
    first = hcl_files(render(inventory, password, tmp_path / "controller-a"))
    second = hcl_files(render(inventory, password, tmp_path / "controller-b"))
    common = ("acl.hcl", "consul.hcl", "gossip.hcl", "join.hcl", "logging.hcl")
    assert set(first) == {f"{host}/{name}" for host in SERVERS for name in (*common, "server.hcl")} | \
        {f"{CLIENTS[0]}/{name}" for name in (*common, "client.hcl")}
    assert first == second
    # The agent tokens are derived per node, not one value for all.
    agents = {text for name, text in first.items() if name.endswith("acl.hcl")}
    assert len(agents) == len(SERVERS + CLIENTS)


def test_without_a_vault_each_controller_generates_its_own_secrets(vault_inventory, tmp_path):
    inventory, password, _ = vault_inventory
    (inventory / "group_vars" / "all" / "vault.yml").rename(tmp_path / "vault.yml")
    try:
        first = render(inventory, password, tmp_path / "controller-a")
        second = render(inventory, password, tmp_path / "controller-b")
    finally:
        (tmp_path / "vault.yml").rename(inventory / "group_vars" / "all" / "vault.yml")
    keys = [(folder / "secrets" / "consul_gossip_key").read_text(encoding="utf-8")
            for folder in (first, second)]
    assert keys[0] != keys[1]
    assert (first / SERVERS[0] / "gossip.hcl").read_text(encoding="utf-8") != \
        (second / SERVERS[0] / "gossip.hcl").read_text(encoding="utf-8")
