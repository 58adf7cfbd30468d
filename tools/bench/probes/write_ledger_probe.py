#!/usr/bin/env python3
"""Steady KV writes with a ledger, from inside the lab (failover bench, chaos).

Runs on a lab host (standard library only) against its local agent, so the
write path is the real one: client agent -> RPC -> the leader. Writer threads
each PUT a new key after the other (no pause) until standard input closes.
Every write is timed on the wall clock, which the host shares with its
containers, so the caller can line writes up with the moments it killed
something. When stdin closes, every write Consul acknowledged (HTTP 200 with
body `true`) is read back with a consistent read and compared, the prefix is
deleted, and one JSON document goes to stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
import uuid

AGENT = ("127.0.0.1", 8500)


def request(method: str, path: str, token: str, body: str | None = None,
            timeout: float = 10.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection(*AGENT, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"X-Consul-Token": token})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def writer(index: int, prefix: str, token: str, timeout: float, stop: threading.Event,
           ledger: list, lock: threading.Lock) -> None:
    seq = 0
    while not stop.is_set():
        seq += 1
        key, value = f"{prefix}/{index}-{seq}", uuid.uuid4().hex
        start = time.time()
        try:
            status, body = request("PUT", f"/v1/kv/{key}", token, value, timeout)
            acked = status == 200 and body.strip() == "true"
            error = "" if acked else f"HTTP {status}: {body.strip()[:80]}"
        except Exception as exc:  # every exception is a failed write, never a silent end
            acked, error = False, type(exc).__name__
            time.sleep(0.05)
        with lock:
            ledger.append({"key": key, "value": value, "start": start, "end": time.time(),
                           "acked": acked, "error": error})


def verify(prefix: str, token: str, ledger: list) -> dict:
    """Read every acknowledged write back; count the missing or different."""
    lost = []
    for entry in (e for e in ledger if e["acked"]):
        for attempt in range(5):
            try:
                status, body = request("GET", f"/v1/kv/{entry['key']}?raw&consistent", token)
                break
            except Exception:  # retried, then counted as lost below
                time.sleep(0.5 * (attempt + 1))
        else:
            status, body = 0, ""
        if status != 200 or body != entry["value"]:
            lost.append({"key": entry["key"], "status": status})
    return {"acked": sum(e["acked"] for e in ledger), "lost": lost}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per write")
    parser.add_argument("--prefix", default=f"bench/ledger-{uuid.uuid4().hex[:8]}")
    args = parser.parse_args()
    with open(args.token_file, encoding="utf-8") as handle:
        token = handle.read().strip()

    stop, lock, ledger = threading.Event(), threading.Lock(), []
    threads = [threading.Thread(target=writer, args=(i, args.prefix, token, args.timeout, stop, ledger, lock))
               for i in range(args.writers)]
    for thread in threads:
        thread.start()
    sys.stdin.read()  # runs until the caller closes stdin
    stop.set()
    for thread in threads:
        thread.join()
    ledger.sort(key=lambda e: e["start"])
    result = {"prefix": args.prefix, "writers": args.writers, "verify": verify(args.prefix, token, ledger),
              "writes": [{k: e[k] for k in ("start", "end", "acked", "error")} for e in ledger]}
    request("DELETE", f"/v1/kv/{args.prefix}?recurse", token)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
