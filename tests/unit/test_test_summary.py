"""tools/checks/test_summary.py: the closing line of `make test` and its exit code."""

from __future__ import annotations

from pathlib import Path

import test_summary


def junit(path: Path, tests: int, failures: int = 0, skipped: int = 0) -> None:
    cases = "".join(f'<testcase name="t{i}"/>' for i in range(tests))
    path.write_text(f'<testsuites><testsuite name="s" tests="{tests}" failures="{failures}" errors="0" '
                    f'skipped="{skipped}">{cases}</testsuite></testsuites>', encoding="utf-8")


def test_every_scenario_of_the_repository_is_expected():
    expected = test_summary.expected_reports()
    assert expected[0] == "unit.xml"
    assert "molecule-default.xml" in expected


def test_all_reports_with_tests_pass(tmp_path, capsys):
    junit(tmp_path / "unit.xml", 5)
    junit(tmp_path / "molecule-default.xml", 3, skipped=1)
    assert test_summary.main(["x", str(tmp_path)], ["unit.xml", "molecule-default.xml"]) == 0
    assert "tests: 7 passed, 0 failed, 1 skipped" in capsys.readouterr().out


def test_a_missing_scenario_report_fails_the_run(tmp_path, capsys):
    junit(tmp_path / "unit.xml", 5)
    assert test_summary.main(["x", str(tmp_path)], ["unit.xml", "molecule-default.xml"]) == 1
    assert "molecule-default.xml is missing" in capsys.readouterr().out


def test_a_verifier_that_ran_no_test_fails_the_run(tmp_path, capsys):
    junit(tmp_path / "unit.xml", 5)
    junit(tmp_path / "molecule-default.xml", 0)
    assert test_summary.main(["x", str(tmp_path)], ["unit.xml", "molecule-default.xml"]) == 1
    assert "molecule-default.xml counts no test" in capsys.readouterr().out


def test_a_failure_fails_the_run(tmp_path):
    junit(tmp_path / "unit.xml", 5, failures=1)
    junit(tmp_path / "molecule-default.xml", 3)
    assert test_summary.main(["x", str(tmp_path)], ["unit.xml", "molecule-default.xml"]) == 1
