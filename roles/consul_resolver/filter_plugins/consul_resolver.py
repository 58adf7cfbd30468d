"""What systemd-resolved would use as global upstream servers on a host.

The role's drop-in gives resolved's global scope the agent (DNS=127.0.0.1:8600)
with a routing-only domain. That is only right where the upstream servers
for every other name belong to a link (networkd, NetworkManager). Servers in
the global scope as well (a DNS= of the host's own resolved.conf, or the
nameservers of a foreign /etc/resolv.conf that resolved reads) would share
one scope with the agent, and names would go to the wrong one.
"""

from __future__ import annotations

import re

# resolved's own resolv.conf files: a host pointed at one of them is not
# read as "foreign", and the stub addresses are resolved itself.
RESOLVED_FILES = ("/run/systemd/resolve/stub-resolv.conf", "/run/systemd/resolve/resolv.conf",
                  "/usr/lib/systemd/resolv.conf", "/lib/systemd/resolv.conf")
STUB_ADDRESSES = {"127.0.0.53", "127.0.0.54"}
PROBE_SEPARATOR = "--- consul-resolver ---"


def _config_servers(cat_config: str, own_drop_in: str) -> list[str]:
    """DNS= of resolved.conf and its drop-ins as `systemd-analyze cat-config`
    prints them (one `# <path>` header per file), without the role's own
    drop-in. An empty DNS= empties the list, as systemd reads it."""
    servers: list[str] = []
    section, skipping = "", False
    for raw in cat_config.splitlines():
        line = raw.strip()
        header = re.fullmatch(r"#\s*(/\S+\.conf)", line)
        if header:
            skipping, section = header[1] == own_drop_in, ""
            continue
        if skipping or not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        key, sep, value = line.partition("=")
        if section == "[Resolve]" and sep and key.strip() == "DNS":
            servers = servers + value.split() if value.strip() else []
    return servers


def _foreign_servers(target: str, content: str) -> list[str]:
    if target in RESOLVED_FILES:
        return []
    return [server for server in re.findall(r"(?m)^\s*nameserver\s+(\S+)", content)
            if server not in STUB_ADDRESSES]


def consul_resolver_global_upstreams(probe: str, own_drop_in: str) -> list[str]:
    """The global upstream servers resolved would use besides the role's own.

    `probe` is what tasks/resolved.yml prints: the target of /etc/resolv.conf
    (readlink -f), its content and `systemd-analyze cat-config
    systemd/resolved.conf`, separated by PROBE_SEPARATOR lines."""
    parts = probe.split(PROBE_SEPARATOR)
    if len(parts) != 3:
        raise ValueError(f"consul_resolver_global_upstreams: expected 3 parts in the probe, got {len(parts)}")
    target, content, cat_config = (part.strip("\n") for part in parts)
    return _config_servers(cat_config, own_drop_in) + _foreign_servers(target.strip(), content)


class FilterModule:
    def filters(self):
        return {"consul_resolver_global_upstreams": consul_resolver_global_upstreams}
