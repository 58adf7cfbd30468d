"""The lab's topology, read from its inventory (inventories/lab/hosts.yml).

The one place the tools learn which containers are servers, app hosts, the
edge or the IdP: nothing in tools/ names a lab host itself.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

HOSTS_FILE = Path(__file__).resolve().parents[2] / "inventories" / "lab" / "hosts.yml"


@cache
def groups(path: Path = HOSTS_FILE) -> dict[str, list[str]]:
    """Every group of the inventory with its hosts (children included), in file order."""
    found: dict[str, list[str]] = {}

    def walk(name: str, node: dict | None) -> list[str]:
        node = node or {}
        hosts = list((node.get("hosts") or {}).keys())
        for child, child_node in (node.get("children") or {}).items():
            hosts += [h for h in walk(child, child_node) if h not in hosts]
        found[name] = hosts
        return hosts

    for name, node in yaml.safe_load(path.read_text(encoding="utf-8")).items():
        walk(name, node)
    return found


@cache
def primary_datacenter() -> str:
    """The lab's primary datacenter (group_vars/all/consul.yml)."""
    settings_file = HOSTS_FILE.parent / "group_vars" / "all" / "consul.yml"
    settings = yaml.safe_load(settings_file.read_text(encoding="utf-8"))
    return settings.get("platform_primary_datacenter", "dc1")


def group(name: str, datacenter: str | None = None) -> list[str]:
    """The group's hosts, all of them or those of one datacenter (the group
    named after it)."""
    hosts = groups().get(name)
    if datacenter is not None:
        hosts = [h for h in hosts or [] if h in groups().get(datacenter, [])]
    if not hosts:
        raise SystemExit(f"the lab inventory {HOSTS_FILE} has no hosts in group {name!r}"
                         f"{'' if datacenter is None else ' in datacenter ' + datacenter}")
    return hosts


def first(name: str, datacenter: str | None = None) -> str:
    return group(name, datacenter)[0]
