"""The snapshot program (roles/consul_snapshot/files/consul_snapshot.py):
retention as a table, hostile file names that must never be pruned, and the
real thing against a Consul dev agent with ACLs on: the role's own contract
token saves and checks a snapshot, tokens with less right are refused."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import dev_agent_running

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "roles/consul_snapshot/files/consul_snapshot.py"
spec = importlib.util.spec_from_file_location("consul_snapshot", PROGRAM)
snapshot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(snapshot)

UTC = dt.UTC


def names(dc: str, start: dt.datetime, count: int, step: dt.timedelta) -> list[str]:
    return [snapshot.snapshot_name(dc, start - i * step) for i in range(count)]


def at(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)


@pytest.mark.parametrize(("existing", "keep_latest", "keep_daily", "pruned"), [
    # 30 hourly ones: the newest 24 stay, and of the older six, none is the
    # newest of its day (25 Nov 23:00 is), so all six go.
    (names("dc1", at("2026-11-26 05:00"), 30, HOUR), 24, 7,
     names("dc1", at("2026-11-25 05:00"), 6, HOUR)),
    # Ten daily ones at noon, keep 1 + 7 days: the three oldest days go.
    (names("dc1", at("2026-11-26 12:00"), 10, DAY), 1, 7,
     names("dc1", at("2026-11-19 12:00"), 3, DAY)),
    # No daily retention: only the newest N.
    (names("dc1", at("2026-11-26 12:00"), 5, HOUR), 2, 0,
     names("dc1", at("2026-11-26 10:00"), 3, HOUR)),
    # Several a day: the newest of each day is the daily one.
    (names("dc1", at("2026-11-26 23:00"), 72, HOUR), 1, 3,
     [n for n in names("dc1", at("2026-11-26 23:00"), 72, HOUR)
      if n not in {snapshot.snapshot_name("dc1", at(d)) for d in
                   ("2026-11-26 23:00", "2026-11-25 23:00", "2026-11-24 23:00")}]),
    # Fewer than the retention: nothing goes.
    (names("dc1", at("2026-11-26 12:00"), 3, HOUR), 24, 7, []),
    ([], 24, 7, []),
], ids=["hourly-for-a-day", "daily-for-a-week", "latest-only", "newest-of-each-day", "few", "none"])
def test_retention(existing, keep_latest, keep_daily, pruned):
    assert snapshot.to_prune(existing, "dc1", keep_latest, keep_daily) == sorted(pruned)


# Files in the folder that the program did not name: never pruned, however
# old the time in them looks.
FOREIGN = [
    "consul-dc2-20200101T000000Z.snap",          # another datacenter's
    "consul-dc1-20200101T000000Z.snap.unverified",
    "consul-dc1-20200101T000000Z.snap.bak",
    "consul-dc1-20201301T000000Z.snap",          # month 13
    "consul-dc1-20200230T000000Z.snap",          # 30 February
    "consul-dc1-2020-01-01T00:00:00Z.snap",
    "consul-dc1-20200101T000000Z.snap\n",
    "consul-dc1-20200101T000000Z.snap/../../etc/passwd",
    "../consul-dc1-20200101T000000Z.snap",
    "consul-dc1-20200101T000000Z.snap\x00",
    "CONSUL-DC1-20200101T000000Z.SNAP",
    "consul-dc1-\u0662\u0660\u0662\u0660\u0660\u0661\u0660\u0661T000000Z.snap",  # Arabic-Indic digits
    "restore-in-progress.snap",
    "notes.txt",
    "",
]


@pytest.mark.parametrize("name", FOREIGN, ids=repr)
def test_files_the_program_did_not_name_are_never_pruned(name):
    assert snapshot.taken_at(name, "dc1") is None
    existing = [*names("dc1", at("2026-11-26 12:00"), 3, HOUR), name]
    assert name not in snapshot.to_prune(existing, "dc1", 1, 0)


def test_a_datacenter_whose_name_holds_a_dash_keeps_its_own_snapshots_apart():
    theirs = snapshot.snapshot_name("dc1-old", at("2020-01-01 00:00"))
    assert snapshot.taken_at(theirs, "dc1") is None
    assert snapshot.taken_at(theirs, "dc1-old") == at("2020-01-01 00:00")


def test_names_are_utc_whatever_the_local_zone():
    cest = dt.timezone(dt.timedelta(hours=2))
    assert snapshot.snapshot_name("dc1", dt.datetime(2026, 6, 1, 2, 30, tzinfo=cest)) == \
        "consul-dc1-20260601T003000Z.snap"


@pytest.mark.parametrize(("address", "own"), [
    ("127.0.0.1", True), ("::1", True), ("192.0.2.1", False), ("2001:db8::1", False)])
def test_only_the_host_holding_the_leader_address_takes_snapshots(address, own):
    assert snapshot.is_own_address(address) is own


# --- the real thing -----------------------------------------------------------

MANAGEMENT = "5f2d5a41-9d0e-4a0b-8d1e-3c2b1a0f9e8d"


def contract_rules() -> str:
    contract = yaml.safe_load((REPO / "roles/consul_snapshot/vars/main.yml").read_text())
    (token,) = contract["consul_snapshot_consul_acl"]["tokens"]
    return token["rules"]


def acl_put(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{url}/v1/acl/{path}", method="PUT", data=json.dumps(body).encode(),
                                     headers={"X-Consul-Token": MANAGEMENT})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


@pytest.fixture(scope="module")
def acl_agent(consul_bin, tmp_path_factory):
    config = {"datacenter": "dc1", "acl": {"enabled": True, "default_policy": "deny",
                                           "tokens": {"initial_management": MANAGEMENT}}}
    with dev_agent_running(consul_bin, tmp_path_factory.mktemp("acl-agent"), config) as url:
        yield url


def token_with(url: str, name: str, rules: str) -> str:
    acl_put(url, "policy", {"Name": name, "Rules": rules})
    return acl_put(url, "token", {"Description": name, "Policies": [{"Name": name}]})["SecretID"]


def run_program(url: str, consul_bin: Path, folder: Path, token: str, *extra: str):
    token_file = folder.parent / f"{folder.name}.token"
    token_file.write_text(token + "\n")
    env = {**os.environ, "CONSUL_HTTP_ADDR": url.removeprefix("http://"),
           "CONSUL_HTTP_TOKEN_FILE": str(token_file)}
    env.pop("CONSUL_HTTP_TOKEN", None)
    return subprocess.run([sys.executable, str(PROGRAM), "--dir", str(folder), "--datacenter", "dc1",
                           "--consul", str(consul_bin), *extra],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_contract_token_saves_checks_and_prunes(acl_agent, consul_bin, tmp_path):
    folder = tmp_path / "snapshots"
    folder.mkdir(mode=0o700)
    old = names("dc1", at("2020-01-01 12:00"), 3, DAY)
    for name in old + FOREIGN[:4]:
        (folder / name).write_text("old")
    result = run_program(acl_agent, consul_bin, folder, token_with(acl_agent, "snapshot", contract_rules()),
                         "--keep-latest", "1", "--keep-daily", "2")
    assert result.returncode == 0, result.stderr
    taken = [p for p in folder.iterdir() if snapshot.taken_at(p.name, "dc1") and p.name not in old]
    assert len(taken) == 1, sorted(p.name for p in folder.iterdir())
    assert stat.S_IMODE(taken[0].stat().st_mode) == 0o600
    assert f"saved {taken[0].name}: raft index" in result.stdout
    inspected = subprocess.run([str(consul_bin), "snapshot", "inspect", "-format=json", str(taken[0])],
                               capture_output=True, text=True, check=True)
    assert json.loads(inspected.stdout)["Meta"]["Index"] > 0
    # Kept: the new one and the newest of the two newest days (today's is the
    # new one, so the newest old one); every foreign file stays.
    remaining = sorted(p.name for p in folder.iterdir())
    assert remaining == sorted([taken[0].name, old[0], *FOREIGN[:4]])
    assert f"pruned {old[1]}" in result.stdout and f"pruned {old[2]}" in result.stdout


@pytest.mark.parametrize("rules", ['operator = "write"', 'acl = "read"',
                                   'key_prefix "" {\n  policy = "write"\n}'],
                         ids=["operator-write", "acl-read", "all-keys-write"])
def test_less_than_acl_write_is_refused_and_leaves_no_file(acl_agent, consul_bin, tmp_path, rules):
    folder = tmp_path / "snapshots"
    folder.mkdir(mode=0o700)
    name = "weak-" + str(abs(hash(rules)))
    result = run_program(acl_agent, consul_bin, folder, token_with(acl_agent, name, rules))
    assert result.returncode == 1
    assert "Permission denied" in result.stderr, result.stderr
    assert list(folder.iterdir()) == []


def test_no_token_is_refused(acl_agent, consul_bin, tmp_path):
    folder = tmp_path / "snapshots"
    folder.mkdir(mode=0o700)
    result = run_program(acl_agent, consul_bin, folder, "")
    assert result.returncode == 1 and list(folder.iterdir()) == []


def test_bad_retention_is_refused_before_anything_runs(tmp_path):
    result = subprocess.run([sys.executable, str(PROGRAM), "--dir", str(tmp_path), "--datacenter", "dc1",
                             "--keep-latest", "0"], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "--keep-latest must be 1 or more" in result.stderr
