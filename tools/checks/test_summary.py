#!/usr/bin/env python3
"""Sum the JUnit XML reports of one `make test` run into a closing line.

The suite runs pytest more than once (unit tests, then testinfra inside
molecule); this prints the figures that tests recorded (figures.jsonl:
requests retried after a reload, smuggling attempts refused, ...) and then
the totals as one plain "N passed, N failed" line.

It fails (exit 1) when a report that a full run must produce is missing or
counts no test: unit.xml and one molecule-<scenario>.xml per scenario under
molecule/. A verifier that collected nothing must not pass on the unit
tests alone.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def expected_reports(repo: Path = REPO) -> list[str]:
    scenarios = sorted(p.parent.name for p in (repo / "molecule").glob("*/molecule.yml"))
    return ["unit.xml", *(f"molecule-{name}.xml" for name in scenarios)]


def report_counts(report: Path) -> dict[str, int]:
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    return counts


def totals(folder: Path) -> dict[str, int]:
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for report in sorted(folder.glob("*.xml")):
        for key, value in report_counts(report).items():
            counts[key] += value
    return counts


def empty_or_missing(folder: Path, expected: list[str]) -> list[str]:
    problems = []
    for name in expected:
        report = folder / name
        if not report.is_file():
            problems.append(f"{name} is missing")
        elif report_counts(report)["tests"] == 0:
            problems.append(f"{name} counts no test")
    return problems


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


def main(argv: list[str], expected: list[str] | None = None) -> int:
    folder = Path(argv[1]) if len(argv) > 1 else Path(".cache/test-results")
    recorded = figures(folder)
    if recorded:
        print("figures recorded by the tests:", *recorded, sep="\n")
    counts = totals(folder)
    failed = counts["failures"] + counts["errors"]
    passed = counts["tests"] - failed - counts["skipped"]
    print(f"tests: {passed} passed, {failed} failed, {counts['skipped']} skipped")
    problems = empty_or_missing(folder, expected_reports() if expected is None else expected)
    for problem in problems:
        print(f"test reports: {problem}")
    return 1 if failed or problems or counts["tests"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
