"""The consul role's HCL, rendered for servers and clients, passes the real
`consul validate`; a value Consul rejects makes it fail."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ansible_playbook, write_inventory

SERVERS = ["unit-server-1", "unit-server-2", "unit-server-3"]
CLIENTS = ["unit-client-1"]


def render(tmp_path: Path, *extra: str) -> Path:
    inventory = write_inventory(tmp_path / "hosts.yml", SERVERS, CLIENTS,
                                {"ansible_connection": "local"})
    out = tmp_path / "rendered"
    result = ansible_playbook("-i", str(inventory), "tests/unit/render_consul_config.yml",
                              "-e", f"render_dir={out}", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def validate(consul_bin: Path, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(consul_bin), "validate", str(folder)],
                          check=False, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    return render(tmp_path_factory.mktemp("render"))


@pytest.mark.parametrize("host", [SERVERS[0], CLIENTS[0]])
def test_rendered_config_is_valid(consul_bin, rendered, host):
    result = validate(consul_bin, rendered / host)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration is valid!" in result.stdout


def test_server_gets_server_settings(rendered):
    files = sorted(p.name for p in (rendered / SERVERS[0]).iterdir())
    assert files == ["acl.hcl", "consul.hcl", "gossip.hcl", "join.hcl", "logging.hcl", "server.hcl", "tls"]
    server = (rendered / SERVERS[0] / "server.hcl").read_text()
    assert "raft_multiplier = 1" in server
    # The server list lives in join.hcl alone, so growing or shrinking the
    # servers changes no file that needs a restart.
    join = (rendered / SERVERS[0] / "join.hcl").read_text()
    assert "bootstrap_expect = 3" in join
    assert '"unit-server-1", "unit-server-2", "unit-server-3"' in join
    common = (rendered / SERVERS[0] / "consul.hcl").read_text()
    for restart_file in ("consul.hcl", "server.hcl"):
        text = (rendered / SERVERS[0] / restart_file).read_text()
        assert "unit-server-2" not in text and "bootstrap_expect" not in text, restart_file
    assert 'client_addr = "127.0.0.1"' in common
    assert "verify_server_hostname = true" in common
    acl = (rendered / SERVERS[0] / "acl.hcl").read_text()
    assert 'default_policy           = "deny"' in acl


def test_client_gets_client_settings(rendered):
    files = sorted(p.name for p in (rendered / CLIENTS[0]).iterdir())
    assert files == ["acl.hcl", "client.hcl", "consul.hcl", "gossip.hcl", "join.hcl", "logging.hcl", "tls"]
    assert "bootstrap_expect" not in (rendered / CLIENTS[0] / "join.hcl").read_text()
    client = (rendered / CLIENTS[0] / "client.hcl").read_text()
    assert "server = false" in client
    assert "tls = true" in client  # auto_encrypt
    assert "enabled = false" in (rendered / CLIENTS[0] / "consul.hcl").read_text()


def test_validate_rejects_what_consul_rejects(consul_bin, tmp_path):
    # The preflight would stop this value; here it goes straight into the
    # templates to prove that the validation step can fail.
    broken = render(tmp_path, "-e", "consul_datacenter=dc.1")
    result = validate(consul_bin, broken / SERVERS[0])
    assert result.returncode != 0
    assert "datacenter" in (result.stdout + result.stderr).lower()


def test_two_datacenters_render_a_federated_valid_config(tmp_path, consul_bin):
    dc2 = ["unit-dc2-server-1", "unit-dc2-client-1"]
    inventory = write_inventory(tmp_path / "hosts.yml", [*SERVERS, dc2[0]], [*CLIENTS, dc2[1]],
                                {"ansible_connection": "local", "platform_primary_datacenter": "dc1"})
    data = yaml.safe_load(inventory.read_text(encoding="utf-8"))
    data["all"]["children"]["dc1"] = {"hosts": dict.fromkeys(SERVERS + CLIENTS),
                                      "vars": {"platform_datacenter": "dc1"}}
    data["all"]["children"]["dc2"] = {"hosts": dict.fromkeys(dc2), "vars": {"platform_datacenter": "dc2"}}
    inventory.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = tmp_path / "rendered"
    result = ansible_playbook("-i", str(inventory), "tests/unit/render_consul_config.yml",
                              "-e", f"render_dir={out}")
    assert result.returncode == 0, result.stdout + result.stderr
    for host in (SERVERS[0], *dc2):
        checked = validate(consul_bin, out / host)
        assert checked.returncode == 0, host + checked.stdout + checked.stderr

    def text(host: str, name: str) -> str:
        return (out / host / name).read_text(encoding="utf-8")

    # dc2's server: its own raft of one, the WAN pool of dc1's servers, the
    # primary's tokens replicated with the replication token.
    assert 'datacenter = "dc2"' in text(dc2[0], "consul.hcl")
    assert 'primary_datacenter = "dc1"' in text(dc2[0], "consul.hcl")
    join = text(dc2[0], "join.hcl")
    assert 'retry_join = ["unit-dc2-server-1"]' in join and "bootstrap_expect = 1" in join
    assert f"retry_join_wan = {json.dumps(sorted(SERVERS))}".replace('","', '", "') in join
    acl = text(dc2[0], "acl.hcl")
    replication = (out / "secrets" / "consul_tokens" / "replication").read_text(encoding="utf-8").strip()
    assert "enable_token_replication = true" in acl and f'replication = "{replication}"' in acl
    # dc1's servers: their raft of three, dc2's server in the WAN pool, no replication.
    join = text(SERVERS[0], "join.hcl")
    assert "bootstrap_expect = 3" in join and 'retry_join_wan = ["unit-dc2-server-1"]' in join
    assert "unit-dc2" not in join.split("retry_join_wan")[0]
    assert "replication" not in text(SERVERS[0], "acl.hcl")
    # dc2's client: joins dc2's server only; no WAN pool, no replication token.
    join = text(dc2[1], "join.hcl")
    assert 'retry_join = ["unit-dc2-server-1"]' in join and "retry_join_wan" not in join
    assert "replication" not in text(dc2[1], "acl.hcl")
    assert 'primary_datacenter = "dc1"' in text(dc2[1], "consul.hcl")
    # Each server's certificate names its own datacenter, from the one CA.
    for host, dc in ((dc2[0], "dc2"), (SERVERS[0], "dc1")):
        cert = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-issuer",
                               "-in", str(out / host / "tls" / "server.pem")],
                              check=True, capture_output=True, text=True).stdout
        assert f"DNS:server.{dc}.consul" in cert and "Consul Agent CA dc1" in cert, cert
