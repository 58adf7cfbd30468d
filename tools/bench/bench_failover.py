#!/usr/bin/env python3
"""`make bench-failover`: kill -9 the leader under KV writes, many times.

Four writers on edge-1 put new keys through the local client agent without a
pause (tools/bench/probes/write_ledger_probe.py). Each round waits until autopilot
calls every server healthy, SIGKILLs the leader's consul (systemd starts it
again), and takes the time from the kill to the end of the first write that
was sent after the kill and acknowledged. At the end every acknowledged write
is read back (the ledger). Writes docs/bench/failover.json and .png.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    OUT,
    SERVERS,
    LedgerProbe,
    cluster_healthy,
    kill_consul,
    leader,
    percentile,
    recovery_after,
    round_bars,
    settled_leader,
    wait_for,
    write_report,
)


def kill_rounds(count: int, settle_s: float = 2.0) -> tuple[list[dict], dict]:
    rounds = []
    with LedgerProbe() as probe:
        for number in range(1, count + 1):
            victim = settled_leader(f"round {number}", settle_s)
            kill_at = kill_consul(victim)
            survivors = [s for s in SERVERS if s != victim]
            new_leader_s = wait_for(lambda s=survivors, v=victim: leader(s) not in (None, v),
                                    timeout=60, interval=0.05)
            rounds.append({"round": number, "killed": victim, "kill_at": kill_at,
                           "new_leader_seen_s": new_leader_s})
            print(f"  round {number}: killed {victim}'s consul", flush=True)
        wait_for(cluster_healthy, timeout=120, interval=0.5)
        time.sleep(settle_s)
    for entry in rounds:
        entry.update(recovery_after(probe.result["writes"], entry["kill_at"]))
    return rounds, probe.result


def plot(recoveries: list[float], path: Path) -> None:
    round_bars(path, [("kill -> first acknowledged write", recoveries, "tab:blue")], 2.0,
               "target: p99 under 2 s", "round (kill -9 of the leader's consul)",
               "kill -> first acknowledged write (s)",
               "Leader failover under KV writes, raft_multiplier = 1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"failover: {args.kills} kills of the leader under KV writes", flush=True)
    rounds, probe = kill_rounds(args.kills)
    recoveries = [r["recovery_s"] for r in rounds if r["recovery_s"] is not None]
    writes = probe["writes"]
    summary = {
        "kills": len(rounds), "recovered": len(recoveries),
        "p50_s": percentile(recoveries, 50), "p99_s": percentile(recoveries, 99),
        "max_s": max(recoveries), "target_p99_s": 2.0,
        "writes": len(writes), "writes_acked": probe["verify"]["acked"],
        "writes_failed": sum(not w["acked"] for w in writes),
        "acked_writes_lost": len(probe["verify"]["lost"]),
        "failed_write_errors": dict(Counter(w["error"][:60] for w in writes
                                            if not w["acked"]).most_common(5)),
        "write_rate_per_s": round(len(writes) / (writes[-1]["end"] - writes[0]["start"]), 1),
    }
    print(f"kill -> first acknowledged write: p50 {summary['p50_s']} s, p99 {summary['p99_s']} s, "
          f"max {summary['max_s']} s over {summary['kills']} kills (target p99 < 2 s)")
    print(f"{summary['writes']} writes ({summary['write_rate_per_s']}/s), "
          f"{summary['writes_failed']} failed, {summary['acked_writes_lost']} acknowledged lost")
    path = write_report("failover", {
        "setup": "lab: 3 servers (raft_multiplier = 1), 4 writers on edge-1 through its client "
                 "agent, systemctl kill --signal=KILL of the leader's consul.service",
        "summary": summary, "rounds": rounds})
    plot(recoveries, OUT / "failover.png")
    print(f"wrote {path} and {OUT / 'failover.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
