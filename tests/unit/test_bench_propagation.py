"""How the propagation benchmark turns probe samples into its figures."""

from __future__ import annotations

import bench_propagation
import pytest


def probe_output(approach: str, latencies: list[tuple[float | None, float | None]],
                 write_s: float = 0.005, failed: int = 0) -> dict:
    names = [f"{approach}@10.0.0.{i}:8080" for i in (1, 2)]
    return {
        "changes": [{"value": f"bench {i}", "write_s": write_s,
                     "latency_s": dict(zip(names, pair, strict=True))}
                    for i, pair in enumerate(latencies)],
        "targets": [{"name": name, "approach": approach, "requests": 100,
                     "failed_requests": failed, "failure_samples": []} for name in names],
    }


def test_nearest_rank_percentiles():
    values = list(range(1, 101))
    assert bench_propagation.percentile(values, 50) == 50
    assert bench_propagation.percentile(values, 99) == 99
    assert bench_propagation.percentile([7.0], 99) == 7.0


def test_a_change_counts_when_the_slowest_instance_serves_it():
    raws = {
        "ours": probe_output("ours", [(0.1, 0.3), (0.2, 0.1)]),
        "seed": probe_output("seed", [(0.4, 0.5), (None, 0.2)], failed=7),
    }
    summary = bench_propagation.summarise(raws)
    assert summary["ours"]["latencies_ms"] == [300.0, 200.0]
    assert summary["ours"]["after_write_ack_ms"]["p50"] == pytest.approx(195.0)
    assert summary["ours"]["failed_requests"] == 0
    # A change some instance never served is counted apart, not as fast.
    assert summary["seed"]["changes_not_served"] == 1
    assert summary["seed"]["latencies_ms"] == [500.0]
    assert summary["seed"]["failed_requests"] == 14
    assert summary["seed"]["failed_pct"] == 7.0
