"""Which datacenter each host belongs to, for roles that look across hosts.

A host's datacenter is what its inventory says (consul_datacenter, else
platform_datacenter, usually set on the group named after the datacenter);
a host whose inventory says neither is in the primary datacenter. Role
defaults are not part of another host's hostvars, which is why the default
is passed in (platform_primary_datacenter)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def platform_datacenter_of(hosts: Iterable[str], hostvars: Mapping[str, Any], default: str) -> dict[str, str]:
    """{host: datacenter} for the given hosts."""
    found = {}
    for host in hosts:
        own = hostvars.get(host) or {}
        found[host] = str(own.get("consul_datacenter") or own.get("platform_datacenter") or default)
    return found


def platform_hosts_in_datacenter(hosts: Iterable[str], hostvars: Mapping[str, Any], datacenter: str,
                                 default: str) -> list[str]:
    """The hosts (in inventory order) that belong to datacenter."""
    of = platform_datacenter_of(list(hosts), hostvars, default)
    return [host for host, dc in of.items() if dc == datacenter]


def platform_datacenter_problems(groups: Mapping[str, list[str]], hostvars: Mapping[str, Any],
                                 hosts: Iterable[str], servers_group: str, primary: str) -> list[str]:
    """What is wrong with the datacenter layout of the inventory, one
    sentence per problem (empty: nothing).

    Rules: the primary datacenter has servers; every datacenter has an odd
    number of servers (1, 3 or 5); a host sits in at most one group that is
    named after a datacenter, and that is its own datacenter's group."""
    hosts = list(hosts)
    of = platform_datacenter_of(hosts, hostvars, primary)
    datacenters = sorted(set(of.values()) | {primary})
    servers = set(groups.get(servers_group) or [])
    problems = []
    for dc in datacenters:
        count = sum(1 for host, hdc in of.items() if hdc == dc and host in servers)
        if count == 0 and dc == primary:
            problems.append(f"the primary datacenter '{primary}' (platform_primary_datacenter) has no "
                            f"host of "
                            f"'{servers_group}'; the ACL system lives there, so it needs its servers")
        elif count == 0:
            problems.append(f"datacenter '{dc}' has hosts but no server of '{servers_group}': add one, three "
                            f"or five servers to it")
        elif count % 2 == 0:
            problems.append(f"datacenter '{dc}' has {count} servers; raft needs an odd number (1, 3 or 5) "
                            f"to keep quorum through a failure")
    for host in hosts:
        dc_groups = sorted(dc for dc in datacenters if host in (groups.get(dc) or []))
        if len(dc_groups) > 1:
            problems.append(f"host {host} is in the groups of two datacenters ({', '.join(dc_groups)}); "
                            f"a host belongs to one")
        elif dc_groups and dc_groups[0] != of[host]:
            problems.append(f"host {host} is in group '{dc_groups[0]}' but its platform_datacenter is "
                            f"'{of[host]}': set platform_datacenter: {dc_groups[0]} in that group's vars")
    return problems


class FilterModule:
    def filters(self):
        return {
            "platform_datacenter_of": platform_datacenter_of,
            "platform_hosts_in_datacenter": platform_hosts_in_datacenter,
            "platform_datacenter_problems": platform_datacenter_problems,
        }
