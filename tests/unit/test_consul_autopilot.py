"""The consul role's autopilot module (roles/consul/library/consul_autopilot.py),
run by ansible-playbook against a real Consul dev agent: it writes only what
differs, check mode writes nothing, --diff shows the change, durations are
compared by value, and a second run changes nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import dev_agent_running

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "roles/consul/library/consul_autopilot.py"
spec = importlib.util.spec_from_file_location("consul_autopilot", MODULE)
autopilot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(autopilot)

MANAGEMENT = "0b6f4a2e-1c3d-4e5f-8a9b-7c6d5e4f3a2b"


@pytest.mark.parametrize(("text", "value"), [
    ("200ms", 0.2), ("0.2s", 0.2), ("10s", 10.0), ("1m30s", 90.0), ("1h", 3600.0), ("0", 0.0),
    ("1500us", 0.0015), ("2\u00b5s", 2e-6), ("0s", 0.0)])
def test_durations_are_read_like_go_does(text, value):
    assert autopilot.seconds(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "2x", "10", "1m30", "s", "-1s", "1s ", "1s\n", "1d", "1e3s", "1.s"])
def test_what_is_not_a_duration_is_refused(text):
    with pytest.raises(ValueError):
        autopilot.seconds(text)


@pytest.fixture(scope="module")
def agent(consul_bin, tmp_path_factory):
    config = {"acl": {"enabled": True, "default_policy": "deny",
                      "tokens": {"initial_management": MANAGEMENT}}}
    with dev_agent_running(consul_bin, tmp_path_factory.mktemp("autopilot-agent"), config) as url:
        yield url


def current(url: str) -> dict:
    request = urllib.request.Request(f"{url}/v1/operator/autopilot/configuration",
                                     headers={"X-Consul-Token": MANAGEMENT})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.load(answer)


def run(tmp_path: Path, url: str, *flags: str, token: str = MANAGEMENT, **settings) -> tuple[int, dict, str]:
    """Run the module once on localhost; (rc, its result, the whole output)."""
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [{
        "name": "autopilot", "register": "result",
        "consul_autopilot": {"url": url, "token": token, **settings}}, {
        "name": "show", "ansible.builtin.copy": {
            "content": "{{ result | to_json }}", "dest": str(tmp_path / "result.json")},
        "check_mode": False}]}]
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump(play))
    env = {**os.environ, "ANSIBLE_LIBRARY": str(MODULE.parent), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_STDOUT_CALLBACK": "default"}
    result = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
                             "-c", "local", str(playbook), *flags],
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    registered = json.loads((tmp_path / "result.json").read_text()) if result.returncode == 0 else {}
    return result.returncode, registered, output


def test_only_what_differs_is_written_and_check_mode_writes_nothing(agent, tmp_path):
    before = current(agent)
    rc, result, output = run(tmp_path, agent, "--check", "--diff", max_trailing_logs=300)
    assert rc == 0 and result["changed"] and result["differing"] == ["max_trailing_logs"], output
    assert "-    max_trailing_logs: 250" in output and "+    max_trailing_logs: 300" in output, output
    assert current(agent)["MaxTrailingLogs"] == before["MaxTrailingLogs"] == 250

    rc, result, output = run(tmp_path, agent, max_trailing_logs=300, last_contact_threshold="0.2s")
    assert rc == 0 and result["changed"] and result["differing"] == ["max_trailing_logs"], output
    after = current(agent)
    assert after["MaxTrailingLogs"] == 300
    # Everything else is as it was (the write carries the whole configuration).
    assert {k: v for k, v in after.items() if k not in ("MaxTrailingLogs", "ModifyIndex", "CreateIndex")} == \
        {k: v for k, v in before.items() if k not in ("MaxTrailingLogs", "ModifyIndex", "CreateIndex")}

    rc, result, output = run(tmp_path, agent, max_trailing_logs=300, last_contact_threshold="200ms")
    assert rc == 0 and not result["changed"], output


def test_a_token_without_operator_write_fails_with_the_reason(agent, tmp_path):
    rc, _, output = run(tmp_path, agent, token="00000000-0000-0000-0000-000000000000", max_trailing_logs=250)
    assert rc != 0
    assert "could not read the autopilot configuration" in output and "403" in output, output
    assert "00000000-0000-0000-0000-000000000000" not in output


def test_a_bad_duration_fails_before_anything_is_written(agent, tmp_path):
    before = current(agent)
    rc, _, output = run(tmp_path, agent, last_contact_threshold="2x", max_trailing_logs=999)
    assert rc != 0 and "last_contact_threshold" in output and "not a duration" in output, output
    assert current(agent)["ModifyIndex"] == before["ModifyIndex"]
