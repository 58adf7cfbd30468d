"""The cluster as a whole: membership, raft, KV replication, DNS."""

from __future__ import annotations

import re
import uuid

from conftest import consul_api, dns_a_records, group, run_playbook


def test_every_node_is_an_alive_member(servers):
    members = consul_api(servers[0], "agent/members")
    status = {m["Name"]: m["Status"] for m in members}
    expected = group("consul_servers") + group("consul_clients")
    assert sorted(status) == sorted(expected)
    assert set(status.values()) == {1}, status  # 1 is serf's "alive"


def test_three_voters_one_leader(servers):
    config = consul_api(servers[0], "operator/raft/configuration")
    voters = [s for s in config["Servers"] if s["Voter"]]
    assert len(voters) == 3
    assert sum(1 for s in config["Servers"] if s["Leader"]) == 1
    leaders = {consul_api(s, "status/leader") for s in servers}
    assert len(leaders) == 1 and leaders != {""}


def test_kv_written_on_one_node_is_read_on_another(servers, clients):
    key, value = f"molecule/replication-{uuid.uuid4()}", f"value-{uuid.uuid4()}"
    assert consul_api(clients[0], f"kv/{key}", "PUT", value) is True
    for reader in servers:
        assert consul_api(reader, f"kv/{key}?raw") == value
    consul_api(servers[-1], f"kv/{key}", "DELETE")


def test_dns_answers_for_the_consul_service(clients):
    # one A record per server
    assert len(dns_a_records(clients[0], "consul.service.consul")) == 3


def test_autopilot_settings_follow_the_inventory_without_a_restart(servers):
    """A changed autopilot variable is written through the operator API by one
    task on one server of each datacenter (each has its own raft; the only
    changes of the run, no agent restarted), and putting it back is that
    change again."""
    def max_trailing_logs() -> int:
        return consul_api(servers[0], "operator/autopilot/configuration")["MaxTrailingLogs"]

    def changes(output: str) -> dict[str, int]:
        recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", output, re.MULTILINE)
        return {host: int(n) for host, n in recap}

    pids = [s.check_output("systemctl show -P MainPID consul") for s in servers]
    first_of_each = {group("consul_servers", dc)[0]: 1 for dc in ("dc1", "dc2")}
    assert max_trailing_logs() == 250
    try:
        result = run_playbook("site.yml", "--tags", "consul", "-e", "consul_autopilot_max_trailing_logs=300")
        assert result.returncode == 0, result.stdout[-3000:]
        assert max_trailing_logs() == 300
        assert {h: n for h, n in changes(result.stdout).items() if n} == first_of_each, result.stdout[-2000:]
    finally:
        back = run_playbook("site.yml", "--tags", "consul")
    assert back.returncode == 0 and max_trailing_logs() == 250
    assert {h: n for h, n in changes(back.stdout).items() if n} == first_of_each, back.stdout[-2000:]
    assert [s.check_output("systemctl show -P MainPID consul") for s in servers] == pids
