"""How the hand-over benchmark turns the write ledger into unavailability."""

from __future__ import annotations

import bench_handover


def write(start: float, end: float, acked: bool = True) -> dict:
    return {"start": start, "end": end, "acked": acked}


def test_the_longest_time_without_an_acknowledged_write():
    writes = [write(9.0, 10.1), write(10.1, 10.2), write(10.2, 10.9),
              write(10.9, 11.0, acked=False), write(11.0, 11.3), write(11.3, 12.5)]
    gap = bench_handover.longest_gap(writes, start=10.0, end=12.0)
    # acknowledged ends inside the window: 10.1, 10.2, 10.9, 11.3; the end
    # of the window counts as well, so 11.3 -> 12.0 is the longest.
    assert gap == {"unavailable_s": 0.7, "failed_writes": 1, "acked_writes": 4}


def test_no_acknowledged_write_means_the_whole_window():
    writes = [write(10.5, 11.5, acked=False)]
    assert bench_handover.longest_gap(writes, 10.0, 13.0)["unavailable_s"] == 3.0


def test_writes_outside_the_window_do_not_count():
    writes = [write(1.0, 2.0), write(20.0, 21.0, acked=False)]
    assert bench_handover.longest_gap(writes, 10.0, 11.0) == {
        "unavailable_s": 1.0, "failed_writes": 0, "acked_writes": 0}
