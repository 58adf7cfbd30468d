#!/usr/bin/python3
"""Turn the catalog's instances of a service into an nginx upstream block.

consul-template renders the healthy instances as JSON data (never as nginx
syntax) and runs this program. Catalog data is written by anyone who may
register the service, so each instance is checked before it becomes
configuration: its address must be a unicast IP literal that is not the
edge's own loopback, link-local, unspecified or multicast, and its port an
integer from 1 to 65535. Anything else is left out and logged with the
instance's ID and node (escaped, shortened). The upstream file is replaced
atomically, and nginx is reloaded only when its content changed.

Usage: consul-edge-upstreams DATA CONF UPSTREAM [RELOAD COMMAND...]
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# Placeholder server when no instance is usable: nginx answers 502 at once.
NO_INSTANCE = "    # No usable instance: nginx answers 502 at once.\n    server 127.0.0.1:9 down;\n"
MAX_SHOWN = 120


class Rejected(ValueError):
    """An instance whose data must not become configuration."""


def shown(value: Any) -> str:
    """A value for a log line: JSON-escaped (no newline or control character
    survives) and shortened, so catalog data cannot forge log lines."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "...(shortened)"


def server_address(instance: dict[str, Any]) -> str:
    """`host:port` for nginx's `server` directive, or Rejected."""
    address, port = instance.get("address"), instance.get("port")
    if not isinstance(address, str) or not address:
        raise Rejected("address is not a non-empty string")
    if "%" in address:
        raise Rejected("address carries an IPv6 zone")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise Rejected("address is not an IP literal") from None
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        raise Rejected("address is loopback, link-local, unspecified or multicast")
    # bool is an int in Python; JSON true is no port.
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise Rejected("port is not an integer from 1 to 65535")
    host = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    return f"{host}:{port}"


def upstream_block(name: str, instances: list[Any], log=print) -> str:
    """The upstream block of the instances that pass, in a stable order."""
    servers: set[str] = set()
    for instance in instances:
        if not isinstance(instance, dict):
            log(f"instance left out: not an object: {shown(instance)}")
            continue
        try:
            servers.add(server_address(instance))
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


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    data, conf, name, reload_command = Path(argv[0]), Path(argv[1]), argv[2], argv[3:]

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
    if not write_if_changed(conf, upstream_block(name, instances, log)):
        return 0
    log(f"upstream {name} changed")
    if reload_command:
        return subprocess.run(reload_command, check=False).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
