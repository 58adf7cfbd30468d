"""One topology: the lab inventory is the source; molecule's platforms and the
tools follow it."""

from __future__ import annotations

from pathlib import Path

import lab_inventory
import yaml

REPO = Path(__file__).resolve().parents[2]


def inventory_groups_of(host: str) -> set[str]:
    return {name for name, hosts in lab_inventory.groups().items() if host in hosts and name != "all"}


def test_molecule_platforms_are_the_lab_hosts_with_their_groups():
    molecule = yaml.safe_load((REPO / "molecule/default/molecule.yml").read_text(encoding="utf-8"))
    platforms = {p["name"].removeprefix("molecule-"): set(p["groups"]) for p in molecule["platforms"]}
    assert sorted(platforms) == sorted(lab_inventory.group("all"))
    for host, groups in platforms.items():
        assert groups <= inventory_groups_of(host), host
        # Molecule's inventory has no children: each platform names its leaf
        # groups and consul_clients itself.
        assert inventory_groups_of(host) - groups <= {"consul_clients"} or "consul_clients" in groups, host


def test_groups_include_their_children():
    groups = lab_inventory.groups()
    assert set(groups["consul_clients"]) == set(groups["app"]) | set(groups["edge"])
    # Three servers in dc1, one in dc2; every Consul node in one datacenter.
    assert len(set(groups["consul_servers"]) & set(groups["dc1"])) == 3
    assert len(set(groups["consul_servers"]) & set(groups["dc2"])) == 1
    nodes = set(groups["consul_servers"]) | set(groups["consul_clients"])
    assert nodes == set(groups["dc1"]) | set(groups["dc2"])
    assert not set(groups["dc1"]) & set(groups["dc2"])


def test_no_tool_names_a_lab_host():
    hosts = lab_inventory.group("all")
    for path in (REPO / "tools").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        named = [h for h in hosts if f'"{h}"' in text or f"'{h}'" in text]
        assert not named, f"{path.relative_to(REPO)} names {named}; read lab_inventory instead"
