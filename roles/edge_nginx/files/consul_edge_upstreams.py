#!/usr/bin/python3
"""Turn the catalog's instances of a service into an nginx upstream block.

consul-template renders the healthy instances as JSON data (never as nginx
syntax) and runs this program. Catalog data is written by anyone who may
register the service, so each instance is checked before it becomes
configuration, against an allowlist: its address must be exactly one IP
literal (IPv4 as four decimal parts without leading zeros, or IPv6, without
a zone) that lies in one of the networks given with --allow-network, and its
port an integer from 1 to 65535. Whatever the allowed networks, an address is
refused if it is loopback, link-local, unspecified (or in 0.0.0.0/8),
multicast or reserved, or an IPv6 address that embeds an IPv4 address
(IPv4-mapped, IPv4-compatible, 6to4, NAT64, Teredo). Anything else is left
out and logged with the instance's ID and node (escaped, shortened) and the
reason. The server address written is the canonical form of the IP. The
upstream file is replaced atomically, and nginx is reloaded only when its
content changed.

The options come first; everything after UPSTREAM is the reload command,
never read as options. At least one --allow-network is required; a network
with host bits set, or that is not a network, is a usage error (exit 2, the
upstream file is left as it is).

Usage: consul-edge-upstreams --allow-network=CIDR... DATA CONF UPSTREAM [RELOAD COMMAND...]
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Placeholder server when no instance is usable: nginx answers 502 at once.
NO_INSTANCE = "    # No usable instance: nginx answers 502 at once.\n    server 127.0.0.1:9 down;\n"
MAX_SHOWN = 120
ALLOW_NETWORK = "--allow-network"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# What an IP literal may hold at all: a cheap first gate, before the parser.
IP_CHARACTERS = re.compile(r"[0-9A-Fa-f:.]+")

# IPv6 ranges that embed an IPv4 address, which the kernel or a gateway may
# turn into traffic to that IPv4 address: ::ffff:127.0.0.1 is the edge's own
# loopback through a dual-stack socket, and a 6to4 relay, NAT64 or Teredo
# gateway reaches whatever IPv4 address the bits name. An allowed IPv6
# network may well contain them (::/0, or a generous NAT64 prefix), so they are
# refused whatever the allowed networks say: the IPv4 inside is never checked
# against them. ipaddress's own properties (ipv4_mapped, sixtofour, teredo)
# name the same ranges; the explicit list also covers NAT64 and the
# IPv4-compatible form, and does not depend on the Python version.
EMBEDDED_IPV4 = [
    (ipaddress.ip_network("::ffff:0:0/96"), "an IPv4-mapped IPv6 address (::ffff:0:0/96)"),
    (ipaddress.ip_network("::/96"), "an IPv4-compatible IPv6 address (::/96)"),
    (ipaddress.ip_network("2002::/16"), "a 6to4 address (2002::/16)"),
    (ipaddress.ip_network("64:ff9b::/96"), "a NAT64 address (64:ff9b::/96)"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "a local-use NAT64 address (64:ff9b:1::/48)"),
    (ipaddress.ip_network("2001::/32"), "a Teredo address (2001::/32)"),
]
# "This network": 0.0.0.0 reaches the host itself, and Linux may treat the
# rest of 0.0.0.0/8 as unicast.
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


class Rejected(ValueError):
    """An instance whose data must not become configuration."""


class UsageError(ValueError):
    """A command line this program cannot run with."""


def shown(value: Any) -> str:
    """A value for a log line: JSON-escaped (no newline or control character
    survives) and shortened, so catalog data cannot forge log lines."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "...(shortened)"


def allowed_ip(address: Any, allowed: Sequence[Network]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IP of an instance's address if the allowlist admits it, or Rejected.
    Reasons name the address only in its canonical form, never as given."""
    if not isinstance(address, str) or not address:
        raise Rejected("address is not a non-empty string")
    if "%" in address:
        raise Rejected("address carries an IPv6 zone")
    if not IP_CHARACTERS.fullmatch(address):
        raise Rejected("address holds characters no IP literal has")
    try:
        # Strict: no leading zeros, octal, hex or short IPv4 forms, no integers.
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise Rejected("address is not an IP literal") from None
    if ip.version == 6:
        for network, what in EMBEDDED_IPV4:
            # :: and ::1 are in ::/96 too; they are refused below, as themselves.
            if ip in network and not (ip.is_unspecified or ip.is_loopback):
                raise Rejected(f"address {ip} is {what}, which embeds an IPv4 address")
    if ip.is_unspecified or ip in THIS_NETWORK:
        raise Rejected(f"address {ip} is unspecified or in this network (0.0.0.0/8)")
    if ip.is_loopback:
        raise Rejected(f"address {ip} is loopback")
    if ip.is_link_local:
        raise Rejected(f"address {ip} is link-local")
    if ip.is_multicast:
        raise Rejected(f"address {ip} is multicast")
    if ip.is_reserved:
        raise Rejected(f"address {ip} is reserved")
    home = next((network for network in allowed if ip in network), None)
    if home is None:
        raise Rejected(f"address {ip} is in no allowed network")
    # An IPv4 network's own address and its broadcast address name no host.
    if home.version == 4 and home.prefixlen < 31 and ip in (home.network_address, home.broadcast_address):
        raise Rejected(f"address {ip} is the network or broadcast address of {home}")
    return ip


def server_address(instance: dict[str, Any], allowed: Sequence[Network]) -> str:
    """`host:port` for nginx's `server` directive, or Rejected."""
    ip = allowed_ip(instance.get("address"), allowed)
    port = instance.get("port")
    # bool is an int in Python; JSON true is no port.
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise Rejected("port is not an integer from 1 to 65535")
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{host}:{port}"


def upstream_block(name: str, instances: list[Any], allowed: Sequence[Network], log=print) -> str:
    """The upstream block of the instances that pass, in a stable order."""
    servers: set[str] = set()
    for instance in instances:
        if not isinstance(instance, dict):
            log(f"instance left out: not an object: {shown(instance)}")
            continue
        try:
            servers.add(server_address(instance, allowed))
        except Rejected as why:
            log(f"instance left out: id={shown(instance.get('id'))} "
                f"node={shown(instance.get('node'))}: {why}")
    lines = "".join(f"    server {server} max_fails=1 fail_timeout=5s;\n" for server in sorted(servers))
    return (f"# Written by consul-edge-upstreams from the catalog's healthy instances.\n"
            f"upstream {name} {{\n{lines or NO_INSTANCE}    keepalive 16;\n}}\n")


def write_if_changed(path: Path, content: str) -> bool:
    try:
        if path.read_text(encoding="utf-8") == content:
            return False
    except FileNotFoundError:
        pass
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.chmod(scratch, 0o644)
        os.replace(scratch, path)
    except BaseException:
        os.unlink(scratch)
        raise
    return True


def allowed_network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise UsageError(f"{ALLOW_NETWORK} {text!r} is not an IP network: {exc}") from None


def parse_command_line(argv: list[str]) -> tuple[list[Network], list[str]]:
    """The allowed networks and the positional arguments. Options come first
    (`--allow-network CIDR` or `--allow-network=CIDR`, `--` ends them); all
    after them, the reload command included, is left as given."""
    allowed: list[Network] = []
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option == "--":
            break
        if option == ALLOW_NETWORK:
            if not rest:
                raise UsageError(f"{ALLOW_NETWORK} needs a network")
            allowed.append(allowed_network(rest.pop(0)))
        elif option.startswith(f"{ALLOW_NETWORK}="):
            allowed.append(allowed_network(option.removeprefix(f"{ALLOW_NETWORK}=")))
        else:
            raise UsageError(f"unknown option {option!r}")
    if not allowed:
        raise UsageError(f"at least one {ALLOW_NETWORK} is required")
    if len(rest) < 3:
        raise UsageError("DATA, CONF and UPSTREAM are required")
    return allowed, rest


def main(argv: list[str]) -> int:
    try:
        allowed, positionals = parse_command_line(argv)
    except UsageError as exc:
        print(f"consul-edge-upstreams: {exc}\n{__doc__.strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    data, conf, name, reload_command = (Path(positionals[0]), Path(positionals[1]), positionals[2],
                                        positionals[3:])

    def log(message: str) -> None:
        print(f"consul-edge-upstreams: {conf.name}: {message}", file=sys.stderr, flush=True)

    try:
        instances = json.loads(data.read_text(encoding="utf-8"))
        if not isinstance(instances, list):
            raise ValueError("not a JSON list")
    except (OSError, ValueError) as exc:
        # Keep serving what nginx has; consul-template renders again on change.
        log(f"data {data} unreadable, upstream left as it is: {exc}")
        return 0
    if not write_if_changed(conf, upstream_block(name, instances, allowed, log)):
        return 0
    log(f"upstream {name} changed")
    if reload_command:
        return subprocess.run(reload_command, check=False).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
