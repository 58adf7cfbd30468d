#!/usr/bin/env python3
"""`make bench-wan`: ACL replication lag between the lab's datacenters.

A token made in the primary (dc1) until it works in dc2: the probe
(tools/bench/probes/wan_replication_probe.py) runs on dc2's app host, makes
each token through its local agent (Consul forwards the write to dc1) and
polls a KV read with it until dc2's server holds the replicated copy.
Two series: tokens made one at a time (3 s apart) and back to back (0.2 s
apart, each deleted after use). Consul's replication runs at most about one
round a second (a token bucket with a small burst), which the second series
runs into. Writes docs/bench/wan.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab_inventory
from benchlib import MANAGEMENT_TOKEN, REPO, SERVERS, consul_api, percentile, run, write_report

PROBE = REPO / "tools" / "bench" / "probes" / "wan_replication_probe.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="back-to-back tokens")
    parser.add_argument("--isolated", type=int, default=50, help="tokens made 3 s apart")
    parser.add_argument("--secondary", default="dc2")
    args = parser.parse_args(argv)
    host = lab_inventory.first("app", args.secondary)
    policy = f"bench-wan-{uuid.uuid4().hex[:8]}"
    key = f"bench/wan/{policy}"
    code, body = consul_api(SERVERS[0], "/v1/acl/policy", MANAGEMENT_TOKEN, "PUT", json.dumps(
        {"Name": policy, "Description": "tools/bench/bench_wan.py, deleted at the end",
         "Rules": 'key_prefix "bench/wan/" { policy = "read" }'}))
    if code != 200:
        raise SystemExit(f"could not make the probe's policy: {code} {body[:200]}")
    policy_id = json.loads(body)["ID"]
    raws = {}
    try:
        run("docker", "cp", str(PROBE), f"{host}:/root/wan_replication_probe.py")
        for series, rounds, spacing in (("isolated", args.isolated, 3.0), ("back_to_back", args.rounds, 0.2)):
            print(f"measuring {rounds} tokens made in dc1 until usable on {host}, {spacing} s apart ...",
                  flush=True)
            raws[series] = json.loads(run(
                "docker", "exec", "-i", host, "python3", "/root/wan_replication_probe.py",
                "--rounds", str(rounds), "--policy", policy, "--key", key, "--spacing", str(spacing),
                capture=True, stdin=MANAGEMENT_TOKEN.read_text(encoding="utf-8").strip() + "\n"))
            if "error" in raws[series]:
                raise SystemExit(raws[series]["error"])
    finally:
        consul_api(SERVERS[0], f"/v1/acl/policy/{policy_id}", MANAGEMENT_TOKEN, "DELETE")
    summary = {}
    for series, raw in raws.items():
        lags = raw["lag_ms"]
        summary[series] = {
            "rounds": raw["rounds"], "usable": len(lags), "timeouts": raw["timeouts"],
            "p50_ms": round(percentile(lags, 50), 1), "p99_ms": round(percentile(lags, 99), 1),
            "max_ms": round(max(lags), 1), "mean_ms": round(statistics.mean(lags), 1),
            "create_p50_ms": round(percentile(raw["create_ms"], 50), 1)}
    path = write_report("wan", {
        "setup": (f"lab: dc1 (3 servers) and dc2 (1 server), probe on {host}; each token made "
                  "through dc2's agent (forwarded to dc1), polled every 5 ms with a KV read in dc2"),
        "results": summary, "raw": raws})
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
