#!/usr/bin/env python3
"""Sum the JUnit XML reports of one `make test` run into a closing line.

The suite runs pytest more than once (unit tests, then testinfra inside
molecule); this prints the figures that tests recorded (figures.jsonl:
requests retried after a reload, smuggling attempts refused, ...) and then
the totals as one plain "N passed, N failed" line.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def totals(folder: Path) -> dict[str, int]:
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for report in sorted(folder.glob("*.xml")):
        root = ET.parse(report).getroot()
        suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
        for suite in suites:
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    return counts


def figures(folder: Path) -> list[str]:
    path = folder / "figures.jsonl"
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        what = record.pop("what")
        lines.append(f"  {what}: " + ", ".join(f"{k}={v}" for k, v in record.items()))
    return lines


def main(argv: list[str]) -> int:
    folder = Path(argv[1]) if len(argv) > 1 else Path(".cache/test-results")
    recorded = figures(folder)
    if recorded:
        print("figures recorded by the tests:", *recorded, sep="\n")
    counts = totals(folder)
    failed = counts["failures"] + counts["errors"]
    passed = counts["tests"] - failed - counts["skipped"]
    print(f"tests: {passed} passed, {failed} failed, {counts['skipped']} skipped")
    return 1 if failed or counts["tests"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
