"""Quorum lost for good (issue 14, item 5): two of the three server
containers are destroyed. playbooks/recover_consul_quorum.yml makes the
survivor a cluster of one with raft's peers.json, and it still holds the
data; the lost hosts are rebuilt empty and the Consul plays of site.yml
(playbooks/consul.yml) bring the servers back to three, which serve the same
data to every client."""

from __future__ import annotations

import subprocess
import uuid

from conftest import (
    api_call,
    autopilot_healthy,
    consul_api,
    run_playbook,
    start_scenario_containers,
    wait_for,
)

KEY = "drill/quorum"


def voters(server) -> list[str]:
    raft = consul_api(server, "operator/raft/configuration?stale")
    return sorted(s["Node"] for s in raft["Servers"] if s["Voter"])


def test_two_of_three_servers_lost_for_good(servers, clients):
    survivor, lost = servers[0], [s.backend.host for s in servers[1:]]
    value = f"survived {uuid.uuid4().hex[:8]}"
    assert consul_api(survivor, f"kv/{KEY}", "PUT", value) is True
    try:
        subprocess.run(["docker", "rm", "-f", *lost], check=True, capture_output=True)
        wait_for(lambda: api_call(survivor, "status/leader", token=None)[1] == '""', 60,
                 "the survivor to lose its leader")
        # No quorum: a write cannot be committed.
        assert api_call(survivor, f"kv/{KEY}", "PUT", "lost")[0] != 200

        recovered = run_playbook("recover_consul_quorum.yml", "--limit", survivor.backend.host)
        assert recovered.returncode == 0, recovered.stdout[-3000:]
        assert voters(survivor) == [survivor.backend.host]
        assert api_call(survivor, f"kv/{KEY}?raw") == (200, value)
        assert survivor.run("test -e /opt/consul/raft/peers.json").rc != 0, "raft did not read peers.json"

        start_scenario_containers(lost)
        rebuilt = run_playbook("consul.yml")
        assert rebuilt.returncode == 0, rebuilt.stdout[-3000:]
        everyone = sorted(s.backend.host for s in servers)
        wait_for(lambda: voters(survivor) == everyone, 90, "three voters again")
        wait_for(lambda: autopilot_healthy(survivor), 60, "a healthy raft")
        for node in servers + clients:
            assert api_call(node, f"kv/{KEY}?raw") == (200, value), node.backend.host
    finally:
        api_call(survivor, f"kv/{KEY}", "DELETE")
