#!/usr/bin/env python3
"""`make bench-handover`: planned restarts of the raft leader under KV writes.

Four writers on edge-1 put new keys through the local client agent without a
pause (tools/bench/probes/write_ledger_probe.py), as in `make bench-failover`.
Each round waits until autopilot calls every server healthy, then restarts
the leader's consul in one of two ways:

- handover: `playbooks/restart_consul.yml --limit <leader>`, the consul
  role's rolling restart, which hands leadership to a follower
  (transfer-leader) before it restarts the agent;
- plain: `systemctl restart consul` on the leader, as a restart without the
  hand-over would (a server does not leave raft on SIGTERM, so the followers
  wait for its heartbeats to stop and hold an election).

A round's unavailability is the longest time in which no write was
acknowledged, from the start of the restart until the cluster is healthy
again. At the end every acknowledged write is read back (the ledger).
Writes docs/bench/handover.json and .png.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    BIN,
    LAB_INVENTORY,
    OUT,
    REPO,
    LedgerProbe,
    cluster_healthy,
    leader,
    percentile,
    round_bars,
    run,
    settled_leader,
    wait_for,
    write_report,
)

TARGET_P99_S = 0.5


def longest_gap(writes: list[dict], start: float, end: float) -> dict:
    """The longest time in [start, end] in which no write was acknowledged."""
    acks = sorted(w["end"] for w in writes if w["acked"] and start <= w["end"] <= end)
    points = [start, *acks, end]
    return {"unavailable_s": round(max(b - a for a, b in itertools.pairwise(points)), 3),
            "failed_writes": sum(not w["acked"] for w in writes if start <= w["start"] <= end),
            "acked_writes": len(acks)}


def restart_leader(way: str, victim: str) -> None:
    if way == "handover":
        run(str(BIN / "ansible-playbook"), "-i", str(LAB_INVENTORY),
            str(REPO / "playbooks" / "restart_consul.yml"), "--limit", victim, capture=True)
    else:
        run("docker", "exec", victim, "systemctl", "restart", "consul.service")


def rounds_of(way: str, count: int, settle_s: float = 2.0) -> list[dict]:
    rounds = []
    for number in range(1, count + 1):
        victim = settled_leader(f"{way} round {number}", settle_s)
        start = time.time()
        restart_leader(way, victim)
        restarted = time.time()
        if wait_for(cluster_healthy, timeout=120, interval=0.2) is None:
            raise SystemExit(f"{way} round {number}: not healthy 120 s after the restart")
        rounds.append({"way": way, "round": number, "restarted": victim, "start": start,
                       "restart_done_s": round(restarted - start, 2), "end": time.time(),
                       "leader_after": leader()})
        print(f"  {way} round {number}: restarted {victim}'s consul", flush=True)
    return rounds


def plot(data: dict, path: Path) -> None:
    round_bars(path, [(way, [r["unavailable_s"] for r in data["rounds"] if r["way"] == way],
                       colour) for way, colour in (("handover", "tab:blue"), ("plain", "tab:gray"))],
               TARGET_P99_S, f"target: p99 under {TARGET_P99_S} s (handover)",
               "round (planned restart of the leader's consul)",
               "longest time without an acknowledged write (s)",
               "Planned leader restarts under KV writes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="rounds of each way")
    args = parser.parse_args(argv)
    print(f"handover: {args.rounds} planned restarts of the leader each way, under KV writes",
          flush=True)
    with LedgerProbe() as probe:
        rounds = rounds_of("handover", args.rounds) + rounds_of("plain", args.rounds)
    writes = probe.result["writes"]
    for entry in rounds:
        entry.update(longest_gap(writes, entry["start"], entry["end"]))
    summary = {"writes": len(writes), "writes_acked": probe.result["verify"]["acked"],
               "acked_writes_lost": len(probe.result["verify"]["lost"]),
               "target_p99_s": TARGET_P99_S}
    for way in ("handover", "plain"):
        gaps = [r["unavailable_s"] for r in rounds if r["way"] == way]
        summary[way] = {"rounds": len(gaps), "p50_s": percentile(gaps, 50),
                        "p99_s": percentile(gaps, 99), "max_s": max(gaps),
                        "failed_writes": sum(r["failed_writes"] for r in rounds
                                             if r["way"] == way),
                        "leader_moved": sum(r["leader_after"] != r["restarted"] for r in rounds
                                            if r["way"] == way),
                        "failed_write_errors": dict(Counter(
                            w["error"][:80] for w in writes if not w["acked"]
                            and any(r["way"] == way and r["start"] <= w["start"] <= r["end"]
                                    for r in rounds)).most_common(5))}
        print(f"{way}: unavailable p50 {summary[way]['p50_s']} s, p99 {summary[way]['p99_s']} s,"
              f" {summary[way]['failed_writes']} failed writes", flush=True)
    print(f"{summary['writes']} writes, {summary['acked_writes_lost']} acknowledged lost")
    data = {"setup": "lab: 3 servers (raft_multiplier = 1), 4 writers on edge-1 through its "
                     "client agent; handover = playbooks/restart_consul.yml --limit <leader>, "
                     "plain = systemctl restart consul on the leader",
            "summary": summary, "rounds": rounds}
    path = write_report("handover", data)
    plot(data, OUT / "handover.png")
    print(f"wrote {path} and {OUT / 'handover.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
