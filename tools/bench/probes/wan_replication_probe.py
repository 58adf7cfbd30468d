#!/usr/bin/env python3
"""Measure ACL replication lag, from inside a secondary datacenter.

Runs on a host of the secondary datacenter (standard library only), so one
clock times both ends with no docker exec in between. Each round makes a
token through the local agent (Consul forwards the write to the primary
datacenter, which holds the ACL system), then asks the local agent for a KV
key with it every few milliseconds: 403 while the token is unknown here,
200 or 404 once the secondary's servers hold its replicated copy. The token
is deleted after each round. The management token comes on stdin. Prints
one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

AGENT = "http://127.0.0.1:8500"


def call(path: str, token: str, method: str = "GET", body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(AGENT + path, data=data, method=method,
                                     headers={"X-Consul-Token": token})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--policy", required=True, help="name of a policy that may read --key")
    parser.add_argument("--key", required=True)
    parser.add_argument("--poll-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--spacing", type=float, default=0.2, help="seconds between rounds")
    args = parser.parse_args()
    management = sys.stdin.readline().strip()
    lags, timeouts, create_ms, timed_out = [], 0, [], []
    for n in range(args.rounds):
        started = time.monotonic()
        status, body = call("/v1/acl/token", management, "PUT", {
            "Description": f"wan replication probe {n}", "Policies": [{"Name": args.policy}],
            "ExpirationTTL": "10m"})
        if status != 200:
            print(json.dumps({"error": f"token create: {status} {body[:200]!r}"}))
            return 1
        created = time.monotonic()
        create_ms.append((created - started) * 1000)
        token = json.loads(body)
        lag, status, answer = None, 0, b""
        while time.monotonic() - created < args.timeout:
            status, answer = call(f"/v1/kv/{args.key}", token["SecretID"])
            if status in (200, 404):
                lag = time.monotonic() - created
                break
            time.sleep(args.poll_ms / 1000)
        if lag is None:
            timeouts += 1
            # What the secondary still answered at the end, for the report.
            timed_out.append({"round": n, "status": status, "answer": answer.decode(errors="replace")[:300]})
        else:
            lags.append(lag * 1000)
        call(f"/v1/acl/token/{token['AccessorID']}", management, "DELETE")
        time.sleep(args.spacing)
    print(json.dumps({"rounds": args.rounds, "lag_ms": lags, "timeouts": timeouts,
                      "timed_out": timed_out, "create_ms": create_ms}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
