"""Which datacenter each host is in, and the preflight rules for several
datacenters (roles/platform/filter_plugins/platform_datacenters.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "platform_datacenters", REPO / "roles/platform/filter_plugins/platform_datacenters.py")
dcs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dcs)

HOSTVARS = {
    "s1": {"platform_datacenter": "dc1"}, "s2": {"platform_datacenter": "dc1"},
    "s3": {"platform_datacenter": "dc1"}, "a1": {},
    "t1": {"platform_datacenter": "dc2"}, "b1": {"platform_datacenter": "dc2"},
    # consul_datacenter set on the host wins over the platform fact.
    "u1": {"platform_datacenter": "dc2", "consul_datacenter": "dc3"},
}
GROUPS = {"consul_servers": ["s1", "s2", "s3", "t1", "u1"], "dc1": ["s1", "s2", "s3"], "dc2": ["t1", "b1"]}


def test_a_host_without_a_datacenter_is_in_the_primary():
    assert dcs.platform_datacenter_of(["s1", "a1", "t1", "u1", "unknown"], HOSTVARS, "dc1") == {
        "s1": "dc1", "a1": "dc1", "t1": "dc2", "u1": "dc3", "unknown": "dc1"}


def test_hosts_in_a_datacenter_keep_inventory_order():
    in_dc1 = dcs.platform_hosts_in_datacenter(["s3", "t1", "s1", "a1"], HOSTVARS, "dc1", "dc1")
    assert in_dc1 == ["s3", "s1", "a1"]
    assert dcs.platform_hosts_in_datacenter(GROUPS["consul_servers"], HOSTVARS, "dc2", "dc1") == ["t1"]
    assert dcs.platform_hosts_in_datacenter(GROUPS["consul_servers"], HOSTVARS, "dc9", "dc1") == []


def test_a_good_layout_has_no_problem():
    hosts = ["s1", "s2", "s3", "a1", "t1", "b1", "u1"]
    assert dcs.platform_datacenter_problems(GROUPS, HOSTVARS, hosts, "consul_servers", "dc1") == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"groups": {"consul_servers": ["s1", "s2", "t1", "u1"]}}, "datacenter 'dc1' has 2 servers"),
    ({"groups": {"consul_servers": ["s1", "s2", "s3", "u1"]}}, "datacenter 'dc2' has hosts but no server"),
    ({"primary": "dc7"}, "the primary datacenter 'dc7' (platform_primary_datacenter) has no host"),
    ({"groups": {"dc2": ["t1", "b1", "s1"]}}, "host s1 is in the groups of two datacenters (dc1, dc2)"),
    ({"hostvars": {"b1": {"platform_datacenter": "dc1"}}},
     "host b1 is in group 'dc2' but its platform_datacenter is 'dc1'"),
], ids=["even", "no-server", "primary-empty", "two-groups", "group-and-var-disagree"])
def test_each_layout_problem_is_named(change, expected):
    groups = {**GROUPS, **change.get("groups", {})}
    hostvars = {**HOSTVARS, **change.get("hostvars", {})}
    hosts = ["s1", "s2", "s3", "a1", "t1", "b1", "u1"]
    problems = dcs.platform_datacenter_problems(groups, hostvars, hosts, "consul_servers",
                                                change.get("primary", "dc1"))
    assert any(expected in p for p in problems), problems
