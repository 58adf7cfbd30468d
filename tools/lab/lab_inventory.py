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


def group(name: str) -> list[str]:
    hosts = groups().get(name)
    if not hosts:
        raise SystemExit(f"the lab inventory {HOSTS_FILE} has no hosts in group {name!r}")
    return hosts


def first(name: str) -> str:
    return group(name)[0]
