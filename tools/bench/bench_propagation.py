#!/usr/bin/env python3
"""`make bench-propagation`: KV write -> new greeting served, ours vs the seed's.

Ours: consul-template renders JSON and `systemctl reload`s the service, which
re-reads it in place. The seed's: consul-template restarts the service on
every change. Both run side by side on the lab's app hosts (the seed's on port
8081, set up by playbooks/bench/seed_approach.yml and removed afterwards),
rendering the same key with the same wait timers. They are measured one after
the other, each with only its own consul-template running, so that the
seed's restarts do not take CPU from ours in the middle of a measurement. A
probe on the edge host times each write and keeps a steady request load on
the measured instances (tools/bench/probes/propagation_probe.py).
Writes docs/bench/propagation.json and docs/bench/propagation.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab_inventory
from benchlib import (
    LAB_INVENTORY,
    OUT,
    REPO,
    ScratchToken,
    container_ip,
    percentile,
    playbook,
    run,
    write_report,
)

PROBE = REPO / "tools" / "bench" / "probes" / "propagation_probe.py"
APPROACHES = {
    "ours": "consul-template renders JSON, service reloads in place (SIGHUP)",
    "seed": "consul-template restarts the service on every change (the blog post)",
}
PORTS = {"ours": 8080, "seed": 8081}
DAEMONS = {"ours": "consul-template", "seed": "consul-template-seed"}


def seed_approach(state: str) -> None:
    playbook(LAB_INVENTORY, "playbooks/bench/seed_approach.yml",
             extra=["-e", f"bench_seed_state={state}"])


def summarise(raws: dict[str, dict]) -> dict:
    summary = {}
    for approach, description in APPROACHES.items():
        raw = raws[approach]
        names = [t["name"] for t in raw["targets"] if t["approach"] == approach]
        # A change counts once every instance of the approach serves it.
        per_change = [None if any(c["latency_s"][n] is None for n in names)
                      else max(c["latency_s"][n] for n in names) for c in raw["changes"]]
        served = [v * 1000 for v in per_change if v is not None]
        # The same, counted from the write's acknowledgement: what is left
        # once raft has committed (a slow disk shows up in the write alone).
        after_ack = [(v - c["write_s"]) * 1000
                     for v, c in zip(per_change, raw["changes"], strict=True) if v is not None]
        writes = [c["write_s"] * 1000 for c in raw["changes"]]
        targets = [t for t in raw["targets"] if t["approach"] == approach]
        summary[approach] = {
            "description": description,
            "changes": len(per_change),
            "changes_not_served": per_change.count(None),
            "p50_ms": round(percentile(served, 50), 1),
            "p95_ms": round(percentile(served, 95), 1),
            "p99_ms": round(percentile(served, 99), 1),
            "max_ms": round(max(served), 1),
            "requests": sum(t["requests"] for t in targets),
            "failed_requests": sum(t["failed_requests"] for t in targets),
            "failed_pct": round(100 * sum(t["failed_requests"] for t in targets)
                                / max(1, sum(t["requests"] for t in targets)), 2),
            "after_write_ack_ms": {f"p{p}": round(percentile(after_ack, p), 1)
                                   for p in (50, 95, 99)},
            "kv_write_ms": {f"p{p}": round(percentile(writes, p), 1) for p in (50, 95, 99)},
            "latencies_ms": [round(v, 1) for v in served],
        }
    return summary


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, failures) = plt.subplots(1, 2, figsize=(11, 4.2),
                                        gridspec_kw={"width_ratios": [3, 1]})
    for approach, result in summary.items():
        values = sorted(result["latencies_ms"])
        cdf.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post",
                 label=f"{approach}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
    cdf.axvline(250, color="grey", linestyle="--", linewidth=1)
    cdf.text(255, 0.05, "target p99 250 ms", color="grey", fontsize=8)
    cdf.set_xlabel("KV write -> served by every instance (ms)")
    cdf.set_ylabel("fraction of changes")
    cdf.set_title(f"Propagation over {next(iter(summary.values()))['changes']} changes")
    cdf.legend(loc="lower right", fontsize=8)
    cdf.grid(alpha=0.3)
    names = list(summary)
    counts = [summary[n]["failed_requests"] for n in names]
    bars = failures.bar(names, counts, color=["tab:blue", "tab:orange"][:len(names)])
    failures.bar_label(bars)
    failures.set_title("Failed requests under load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=100)
    # The primary's app hosts: KV is per datacenter, and the change is written there.
    parser.add_argument("--apps", nargs="+",
                        default=lab_inventory.group("app", lab_inventory.primary_datacenter()))
    parser.add_argument("--probe-host", default=lab_inventory.first("edge"))
    parser.add_argument("--token-file", default="",
                        help="on the probe host: a token that may write the key "
                             "(default: a scratch token of the ui-operator role)")
    args = parser.parse_args(argv)

    seed_approach("present")
    raws = {}
    scratch = None if args.token_file else ScratchToken(args.probe_host, "ui-operator")
    try:
        if scratch is not None:
            args.token_file = scratch.__enter__()
        ips = [container_ip(app) for app in args.apps]
        run("docker", "cp", str(PROBE), f"{args.probe_host}:/root/propagation_probe.py")
        for approach in APPROACHES:
            for other, daemon in DAEMONS.items():
                for app in args.apps:
                    run("docker", "exec", app, "systemctl",
                        "start" if other == approach else "stop", daemon)
            targets = [arg for ip in ips
                       for arg in ("--target", f"{approach}={ip}:{PORTS[approach]}")]
            print(f"measuring {approach}: {args.changes} changes ...", flush=True)
            raws[approach] = json.loads(run(
                "docker", "exec", args.probe_host, "python3", "/root/propagation_probe.py",
                "--changes", str(args.changes), "--token-file", args.token_file, *targets,
                capture=True))
    finally:
        if scratch is not None:
            scratch.__exit__()
        for app in args.apps:
            run("docker", "exec", app, "systemctl", "start", DAEMONS["ours"])
        seed_approach("absent")

    summary = summarise(raws)
    write_report("propagation", {
        "setup": ("lab: 3 servers, app-1 and app-2, probe on edge-1; one approach at a "
                  "time, ~100 req/s on each of its instances"),
        "results": summary,
        "raw": raws,
    })
    plot(summary, OUT / "propagation.png")
    print(f"{'approach':<6} {'changes':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'requests':>9} {'failed':>7} {'failed %':>8}")
    for approach, result in summary.items():
        print(f"{approach:<6} {result['changes']:>7} {result['p50_ms']:>8} {result['p95_ms']:>8} "
              f"{result['p99_ms']:>8} {result['requests']:>9} {result['failed_requests']:>7} "
              f"{result['failed_pct']:>8}")
    for approach, result in summary.items():
        print(f"{approach}: after the write was acknowledged p50/p95/p99 "
              f"{'/'.join(str(v) for v in result['after_write_ack_ms'].values())} ms; "
              f"KV write itself {'/'.join(str(v) for v in result['kv_write_ms'].values())} ms")
    print(f"report: {OUT / 'propagation.json'}, {OUT / 'propagation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
