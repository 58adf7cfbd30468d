"""The cluster as a whole: membership, raft, KV replication, DNS."""

from __future__ import annotations

import uuid

from conftest import consul_api, dns_a_records, group


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
