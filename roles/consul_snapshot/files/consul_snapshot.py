#!/usr/bin/python3
"""Take, check and prune this datacenter's Consul snapshots.

consul-snapshot.timer starts this on every server; only the server that
leads raft takes a snapshot, so one is taken per round however many servers
there are, and a round still runs when any one server is down. The leader is
asked of /v1/status/leader (no token needed) and compared with this host's
own addresses, so the snapshot token needs no right beyond the one a
snapshot needs (`acl = "write"`).

Each snapshot is saved with `consul snapshot save` (which writes
NAME.unverified, verifies it and renames it), then read back with
`consul snapshot inspect`; one that fails the check is removed and the run
fails. Old snapshots are pruned: the newest --keep-latest are kept, and the
newest of each of the last --keep-daily days. Only files named like this
program names them are ever removed.

The token comes from CONSUL_HTTP_TOKEN_FILE (a systemd credential), the agent
address from CONSUL_HTTP_ADDR, as for the consul CLI itself.

Usage: consul-snapshot --dir DIR --datacenter DC [--keep-latest N]
                       [--keep-daily N] [--consul PATH] [--any-server]
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

STAMP = "%Y%m%dT%H%M%SZ"
# fullmatch, ASCII digits only: `$` would also match before a final line
# break, and \d any Unicode digit.
NAME = re.compile(r"consul-(?P<dc>[a-z0-9_-]+)-(?P<stamp>[0-9]{8}T[0-9]{6}Z)\.snap")


class SnapshotError(RuntimeError):
    """A step failed; the message says which and why."""


def snapshot_name(datacenter: str, when: dt.datetime) -> str:
    return f"consul-{datacenter}-{when.astimezone(dt.UTC).strftime(STAMP)}.snap"


def taken_at(name: str, datacenter: str) -> dt.datetime | None:
    """When the snapshot called `name` was taken; None for any other file
    (another datacenter's, an unverified one, anything an operator put there)."""
    match = NAME.fullmatch(name)
    if not match or match["dc"] != datacenter:
        return None
    try:
        return dt.datetime.strptime(match["stamp"], STAMP).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def to_prune(names: list[str], datacenter: str, keep_latest: int, keep_daily: int) -> list[str]:
    """The snapshots among `names` that the retention does not keep: all but
    the newest keep_latest and the newest of each of the newest keep_daily
    days (UTC). Files that are not this datacenter's snapshots never appear."""
    dated = sorted(((when, name) for name in names
                    if (when := taken_at(name, datacenter)) is not None), reverse=True)
    keep = {name for _, name in dated[:keep_latest]}
    days: set[dt.date] = set()
    for when, name in dated:
        if when.date() not in days and len(days) < keep_daily:
            days.add(when.date())
            keep.add(name)
    return sorted(name for _, name in dated if name not in keep)


def leader_address(http_addr: str, timeout: float = 5.0) -> str:
    """The raft leader's IP as this agent sees it; "" when there is none."""
    base = http_addr if "://" in http_addr else f"http://{http_addr}"
    with urllib.request.urlopen(f"{base}/v1/status/leader", timeout=timeout) as reply:
        leader = json.loads(reply.read().decode("utf-8"))
    if not leader:
        return ""
    host, _, _ = leader.rpartition(":")
    return host.strip("[]")


def is_own_address(address: str) -> bool:
    """Whether `address` is one of this host's: only then can a socket bind to it."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError:
            return False
    return True


def consul(binary: str, *args: str) -> str:
    result = subprocess.run([binary, *args], capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().replace("\n", " ")
        raise SnapshotError(f"`consul {' '.join(args[:2])}` failed: {detail}")
    return result.stdout


def take(binary: str, folder: Path, datacenter: str, now: dt.datetime) -> tuple[Path, dict]:
    """Save a snapshot into folder and check it with `consul snapshot inspect`."""
    path = folder / snapshot_name(datacenter, now)
    consul(binary, "snapshot", "save", str(path))
    try:
        meta = json.loads(consul(binary, "snapshot", "inspect", "-format=json", str(path)))["Meta"]
    except (SnapshotError, ValueError, KeyError, TypeError) as error:
        path.unlink(missing_ok=True)
        raise SnapshotError(f"{path.name} did not pass `consul snapshot inspect` and was removed: {error}") \
            from None
    return path, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, type=Path, help="folder of the snapshots (0700)")
    parser.add_argument("--datacenter", required=True)
    parser.add_argument("--keep-latest", type=int, default=24)
    parser.add_argument("--keep-daily", type=int, default=7)
    parser.add_argument("--consul", default="/usr/local/bin/consul")
    parser.add_argument("--any-server", action="store_true",
                        help="take a snapshot even when this server does not lead")
    args = parser.parse_args(argv)
    if args.keep_latest < 1 or args.keep_daily < 0:
        parser.error("--keep-latest must be 1 or more and --keep-daily 0 or more")

    http_addr = os.environ.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500")
    try:
        leader = leader_address(http_addr)
        if not leader:
            raise SnapshotError("the cluster has no leader; no snapshot can be taken")
        if not args.any_server and not is_own_address(leader):
            print(f"not the leader ({leader} leads and takes the snapshot); nothing to do", flush=True)
            return 0
        path, meta = take(args.consul, args.dir, args.datacenter, dt.datetime.now(dt.UTC))
        print(f"saved {path.name}: raft index {meta.get('Index')}, term {meta.get('Term')}, "
              f"{path.stat().st_size} bytes, checked with consul snapshot inspect", flush=True)
        for name in to_prune([p.name for p in args.dir.iterdir()], args.datacenter,
                             args.keep_latest, args.keep_daily):
            (args.dir / name).unlink()
            print(f"pruned {name}", flush=True)
    except (SnapshotError, OSError, ValueError) as error:
        print(f"consul-snapshot: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
