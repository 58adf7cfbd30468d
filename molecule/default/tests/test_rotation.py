"""Rotating the gossip key and reissuing certificates keep the cluster up.

Runs the real playbooks against molecule's own inventory. The other tests
read the secrets from the controller's folder when they run, so they pass
before or after a rotation.
"""

from __future__ import annotations

import uuid

from conftest import SECRETS, autopilot_healthy, consul_api, group, run_playbook, wait_for


def main_pid(host) -> str:
    return host.check_output("systemctl show -p MainPID --value consul")


def test_gossip_key_rotation(servers, clients):
    old_key = (SECRETS / "consul_gossip_key").read_text().strip()
    result = run_playbook("rotate_gossip_key.yml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    new_key = (SECRETS / "consul_gossip_key").read_text().strip()
    assert new_key != old_key

    rings = consul_api(servers[0], "operator/keyring")
    for ring in rings:  # one per pool (WAN and LAN of each member)
        assert list(ring["Keys"]) == [new_key]
        assert ring["PrimaryKeys"] == {new_key: ring["NumNodes"]}
    members = consul_api(servers[0], "agent/members")
    assert {m["Name"] for m in members if m["Status"] == 1} == set(
        group("consul_servers") + group("consul_clients"))
    for host in servers + clients:  # read back, never grep: a command line would log the key
        assert new_key in host.file("/etc/consul.d/gossip.hcl").content_string
    key = f"molecule/rotation-{uuid.uuid4()}"
    assert consul_api(clients[0], f"kv/{key}", "PUT", "after") is True
    assert consul_api(servers[-1], f"kv/{key}?raw") == "after"


def test_certificate_reissue_reloads_without_restart(servers):
    before = {s.backend.host: s.file("/etc/consul.d/tls/server.pem").sha256sum for s in servers}
    pids = {s.backend.host: main_pid(s) for s in servers}
    result = run_playbook("reissue_certificates.yml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    for server in servers:
        name = server.backend.host
        on_host = server.file("/etc/consul.d/tls/server.pem")
        assert on_host.sha256sum != before[name]
        assert on_host.content_string == (SECRETS / "tls" / f"{name}.pem").read_text()
        assert main_pid(server) == pids[name]  # reloaded, not restarted
    wait_for(lambda: all(autopilot_healthy(s) for s in servers), 60,
             "a healthy raft of three after the reload, seen from every server")
