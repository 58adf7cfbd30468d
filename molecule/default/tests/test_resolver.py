"""Every node resolves *.consul through its own agent, and every other name
as before (role consul_resolver; in these containers, the dnsmasq path)."""

from __future__ import annotations

import pytest
from conftest import get_host, group

NODES = group("consul_servers") + group("consul_clients")


def addresses(host, name: str) -> set[str]:
    result = host.run(f"getent ahostsv4 {name}")
    return {line.split()[0] for line in result.stdout.splitlines()}


@pytest.fixture(scope="module")
def server_ips() -> set[str]:
    return {get_host(name).interface("eth0").addresses[0] for name in group("consul_servers")}


@pytest.mark.parametrize("node", NODES)
def test_consul_names_resolve_through_the_local_agent(node, server_ips):
    host = get_host(node)
    assert addresses(host, "consul.service.consul") == server_ips
    assert host.file("/etc/resolv.conf").contains("^nameserver 127.0.0.1$")


@pytest.mark.parametrize("node", NODES)
def test_other_names_still_resolve(node):
    host = get_host(node)
    other = next(name for name in NODES if name != node)
    assert addresses(host, other) == {get_host(other).interface("eth0").addresses[0]}


@pytest.mark.parametrize("node", NODES)
def test_the_forwarder_listens_on_loopback_only(node):
    host = get_host(node)
    assert host.socket("udp://127.0.0.1:53").is_listening
    assert not host.socket("udp://0.0.0.0:53").is_listening
    ip = host.interface("eth0").addresses[0]
    assert not host.socket(f"udp://{ip}:53").is_listening
