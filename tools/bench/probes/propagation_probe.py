#!/usr/bin/env python3
"""Measure KV write -> new greeting served, from inside the lab.

Runs on a lab host (standard library only) so that the KV write and every
request are timed on one clock, with no docker exec in between. For each
change it writes a new greeting through the local agent, and a steady load of
requests against every target tells when each target first serves it. Every
failed request (error, non-200, or not a greeting) is counted per target.
Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field


@dataclass
class Target:
    approach: str
    host: str
    port: int
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    # greeting -> monotonic time of the first response that carried it
    first_seen: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return f"{self.approach}@{self.host}:{self.port}"


def load(target: Target, interval: float, stop: threading.Event) -> None:
    """Keep-alive GETs every `interval` seconds; reconnect after any error."""
    conn = None
    while not stop.is_set():
        started = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(target.host, target.port, timeout=2)
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read().decode()
            now = time.monotonic()
            with target.lock:
                target.requests += 1
                if response.status != 200 or not body.startswith("bench "):
                    target.failures.append(f"{now:.3f} HTTP {response.status} {body[:40]!r}")
                else:
                    target.first_seen.setdefault(body.rstrip("\n"), now)
        except Exception as exc:  # every exception is a failed request, never a silent end
            with target.lock:
                target.requests += 1
                target.failures.append(f"{time.monotonic():.3f} {type(exc).__name__}: {exc}")
            if conn is not None:
                conn.close()
            conn = None
        pause = interval - (time.monotonic() - started)
        if pause > 0:
            time.sleep(pause)


def put(consul: str, key: str, token: str, value: str) -> None:
    request = urllib.request.Request(f"{consul}/v1/kv/{key}", data=value.encode(),
                                     method="PUT", headers={"X-Consul-Token": token})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.read().strip() == b"true"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", required=True,
                        help="APPROACH=HOST:PORT, repeatable")
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5,
                        help="changes made under load first and not counted")
    parser.add_argument("--interval", type=float, default=0.01,
                        help="seconds between requests of one load thread")
    parser.add_argument("--timeout", type=float, default=15.0,
                        help="give up on a change after this many seconds")
    parser.add_argument("--key", default="python-web-service/greeting")
    parser.add_argument("--consul", default="http://127.0.0.1:8500")
    parser.add_argument("--token-file", required=True)
    args = parser.parse_args()
    with open(args.token_file, encoding="utf-8") as handle:
        token = handle.read().strip()

    targets = []
    for spec in args.target:
        approach, _, address = spec.partition("=")
        host, _, port = address.rpartition(":")
        targets.append(Target(approach, host, int(port)))

    # A first value, served everywhere, before the load starts.
    put(args.consul, args.key, token, "bench warm-up")
    time.sleep(3)

    stop = threading.Event()
    threads = [threading.Thread(target=load, args=(t, args.interval, stop), daemon=True)
               for t in targets]
    for thread in threads:
        thread.start()
    time.sleep(1)

    changes = []
    run = uuid.uuid4().hex[:6]
    for index in range(-args.warmup, args.changes):
        value = f"bench {run} {index}"
        written = time.monotonic()
        put(args.consul, args.key, token, value)
        acknowledged = time.monotonic()
        deadline = written + args.timeout
        while time.monotonic() < deadline:
            if all(value in t.first_seen for t in targets):
                break
            time.sleep(0.005)
        if index < 0:
            time.sleep(random.uniform(0.3, 0.6))
            continue
        changes.append({
            "value": value,
            "write_s": round(acknowledged - written, 4),
            "latency_s": {t.name: (round(t.first_seen[value] - written, 4)
                                   if value in t.first_seen else None)
                          for t in targets},
        })
        # Let a restarted service settle, and do not write on a fixed beat.
        time.sleep(random.uniform(0.3, 0.6))

    stop.set()
    for thread in threads:
        thread.join()
    print(json.dumps({
        "changes": changes,
        "targets": [{"name": t.name, "approach": t.approach, "requests": t.requests,
                     "failed_requests": len(t.failures), "failure_samples": t.failures[:10]}
                    for t in targets],
    }))


if __name__ == "__main__":
    main()
