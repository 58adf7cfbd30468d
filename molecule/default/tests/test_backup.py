"""Backups and the restore drill (issue 14, items 3 and 4): the servers'
snapshot timer, the fetch to the controller, and a restore onto servers whose
data is gone: KV, a policy and a token come back, the client agents rejoin
with the certificates and tokens they have, and the web service serves the
restored greeting."""

from __future__ import annotations

import contextlib
import json
import re
import stat
import uuid

import pytest
from conftest import (
    SECRETS,
    EdgeLoad,
    KVLedger,
    api_call,
    consul_api,
    get_host,
    group,
    record_figures,
    run_playbook,
    secret,
    wait_for,
    write_private_file,
)

SNAPSHOTS = "/var/lib/consul-snapshots"
KEY = "python-web-service/greeting"
RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


@pytest.fixture(scope="module")
def apps():
    return [get_host(name) for name in group("app")]


def snapshot_files(server) -> set[str]:
    """The snapshots on a server; the folder appears with the unit's first run."""
    return set(server.check_output(
        f"if [ -d {SNAPSHOTS} ]; then find {SNAPSHOTS} -maxdepth 1 -name 'consul-*.snap' -printf '%f\\n'; fi")
        .split())


def served(app) -> str:
    """The greeting the instance serves (check_output drops the final newline)."""
    return app.check_output("curl -s --max-time 2 localhost:8080/")


def test_the_leader_alone_takes_a_snapshot_that_only_its_user_reads(servers):
    before = {s.backend.host: snapshot_files(s) for s in servers}
    for server in servers:
        assert server.run("systemctl start consul-snapshot.service").rc == 0
    new = {s.backend.host: snapshot_files(s) - before[s.backend.host] for s in servers}
    # One host took it (two files there only if the hourly timer fired too).
    takers = [name for name, files in new.items() if files]
    assert len(takers) == 1, new
    taker = next(s for s in servers if s.backend.host == takers[0])
    name = max(new[taker.backend.host])
    journal = taker.check_output("journalctl -u consul-snapshot.service -o cat --no-pager -n 20")
    assert f"saved {name}: raft index" in journal
    for other in servers:
        if other is not taker:
            assert "leads and takes the snapshot" in other.check_output(
                "journalctl -u consul-snapshot.service -o cat --no-pager -n 5")
    folder, snap = taker.file(SNAPSHOTS), taker.file(f"{SNAPSHOTS}/{name}")
    assert (folder.mode, folder.user) == (0o700, "consul-snapshot")
    assert (snap.mode, snap.user) == (0o600, "consul-snapshot")
    token = taker.file("/etc/consul-tokens/consul-snapshot.token")
    assert (token.mode, token.user, token.group) == (0o640, "root", "consul-snapshot")
    assert taker.run(f"consul snapshot inspect {SNAPSHOTS}/{name}").rc == 0
    assert taker.service("consul-snapshot.timer").is_enabled
    assert taker.service("consul-snapshot.timer").is_running


def test_the_snapshot_token_reads_no_data(servers):
    server = servers[0]
    snapshot_token = server.check_output("cat /etc/consul-tokens/consul-snapshot.token").strip()
    write_private_file(server, "/root/.consul-test-snapshot.header", f"X-Consul-Token: {snapshot_token}\n")
    for path in (f"kv/{KEY}", "agent/self", "operator/raft/configuration"):
        status = server.check_output(
            "curl -s -o /dev/null -w '%{http_code}' -H @/root/.consul-test-snapshot.header "
            f"http://127.0.0.1:8500/v1/{path}")
        assert status == "403", path


def test_restore_onto_servers_that_lost_their_data(servers, clients, apps, base_url):
    server = servers[0]
    original = api_call(server, f"kv/{KEY}?raw")  # 404: no key, the default greeting
    drill = f"Restored greeting {uuid.uuid4().hex[:8]}"
    drill_secret = str(uuid.uuid4())
    watches = contextlib.ExitStack()
    try:
        # Known state: a greeting, a policy and a token of our own.
        assert consul_api(server, f"kv/{KEY}", "PUT", drill) is True
        consul_api(server, "acl/policy", "PUT",
                   json.dumps({"Name": "drill-policy", "Rules": 'key "drill/" { policy = "read" }'}))
        consul_api(server, "acl/token", "PUT", json.dumps(
            {"SecretID": drill_secret, "Description": "drill-token", "Policies": [{"Name": "drill-policy"}]}))
        wait_for(lambda: all(served(app) == drill for app in apps), 30, "the drill greeting served")

        fetched = run_playbook("fetch_consul_snapshot.yml", "-e", "consul_snapshot_fetch_fresh=true")
        assert fetched.returncode == 0, fetched.stdout[-3000:]
        folder = SECRETS / "snapshots"
        # Each datacenter's newest is fetched; dc1's is restored here.
        snapshot = max(folder.glob("consul-dc1-*.snap"))
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
        assert str(snapshot) in fetched.stdout

        # A later change the restore must undo.
        assert consul_api(server, f"kv/{KEY}", "PUT", "after the snapshot") is True
        wait_for(lambda: all(served(app) == "after the snapshot" for app in apps), 30, "the later greeting")

        # From here on / through the edge is watched: the web service and the
        # edge serve what they rendered last while the servers have no data.
        edge_load = watches.enter_context(EdgeLoad(f"{base_url}/"))
        # Every server loses its data; the servers are converged anew.
        for each in servers:
            assert each.run("systemctl stop consul && find /opt/consul -mindepth 1 -delete").rc == 0
        rebuilt = run_playbook("site.yml", "--limit", "consul_servers:&dc1")
        assert rebuilt.returncode == 0, rebuilt.stdout[-3000:]
        assert api_call(server, f"kv/{KEY}")[0] == 404, "the rebuilt cluster still had the old data"

        restored = run_playbook("restore_consul_snapshot.yml",
                                "-e", f"consul_snapshot_restore_file={snapshot}")
        assert restored.returncode == 0, restored.stdout[-3000:]
        # The cluster's return: every write acknowledged from here on is kept.
        ledger = watches.enter_context(
            KVLedger(clients[0].backend.host, secret("consul_acl_bootstrap_token"), "drill/restore"))

        assert api_call(server, f"kv/{KEY}?raw") == (200, drill)
        assert consul_api(server, "acl/policy/name/drill-policy")["Name"] == "drill-policy"
        write_private_file(server, "/root/.consul-test-drill.header", f"X-Consul-Token: {drill_secret}\n")
        own = server.check_output("curl -s -H @/root/.consul-test-drill.header http://127.0.0.1:8500/v1/acl/token/self")
        assert '"Description":"drill-token"' in own.replace(" ", "")

        # The clients kept their certificates and tokens: their RPCs work
        # again, and every app instance is registered and passing.
        wait_for(lambda: all(api_call(c, f"kv/{KEY}?raw")[1] == drill for c in clients), 60,
                 "every client agent reading the restored KV through the servers")
        passing = "health/service/python-web-service?passing"
        wait_for(lambda: len(consul_api(clients[0], passing)) == len(apps), 60,
                 "every web service instance passing")
        wait_for(lambda: all(served(app) == drill for app in apps), 30, "the restored greeting served")

        # site.yml over the restored cluster has nothing left to do in dc1.
        # dc2 saw the rebuilt dc1 with a Connect CA of another trust domain
        # (its primary refused to sign dc2's new intermediate), so the run
        # may set dc2's CA up again: the secondary-CA check and the restart
        # of dc2's server, nothing else.
        converged = run_playbook("site.yml")
        watches.close()
        assert converged.returncode == 0, converged.stdout[-3000:]
        assert RECAP.findall(converged.stdout), converged.stdout[-2000:]
        dc2_server = group("consul_servers", "dc2")[0]
        # (task, host it changed): the rolling restart runs once on the
        # play's first host and acts on dc2's server through delegation.
        steps = set()
        for block in re.split(r"^(?:TASK|RUNNING HANDLER) \[", converged.stdout, flags=re.MULTILINE)[1:]:
            title, _, body = block.partition("]")
            steps |= {(title, who.split(" -> ")[-1]) for who in re.findall(r"^changed: \[([^\]]+)\]", body,
                                                                           flags=re.MULTILINE)}
        assert all(host == dc2_server for _, host in steps), sorted(steps)
        if steps:
            assert ("consul : Check that the Connect CA of a secondary datacenter has its intermediate",
                    dc2_server) in steps, sorted(steps)
        roots = consul_api(get_host(dc2_server), "connect/ca/roots")
        active = [r for r in roots["Roots"] if r["ID"] == roots["ActiveRootID"]]
        assert active and active[0].get("IntermediateCerts"), "dc2's Connect CA has no intermediate"
        record_figures("restore drill: / through the edge from the wipe to the re-run, "
                       "KV writes from the restore on", edge_requests=edge_load.ok,
                       edge_failed=len(edge_load.failed), writes=ledger.ok, writes_failed=len(ledger.failed))
        assert edge_load.ok > 50 and edge_load.failed == [], edge_load.failed[:5]
        # Writes may be refused until the clients reach the restored servers;
        # none that Consul acknowledged may be missing.
        assert ledger.ok > 50 and ledger.lost() == []
    finally:
        watches.close()
        if original[0] == 200:
            api_call(server, f"kv/{KEY}", "PUT", original[1])
        else:
            api_call(server, f"kv/{KEY}", "DELETE")
        for token in consul_api(server, "acl/tokens"):
            if token.get("Description") == "drill-token":
                api_call(server, f"acl/token/{token['AccessorID']}", "DELETE")
        status, body = api_call(server, "acl/policy/name/drill-policy")
        if status == 200:
            api_call(server, f"acl/policy/{json.loads(body)['ID']}", "DELETE")


def test_restore_without_a_file_stops_with_the_variable_named():
    result = run_playbook("restore_consul_snapshot.yml",
                          "-e", "consul_snapshot_restore_file=/nonexistent.snap")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "consul_snapshot_restore_file" in output and "is not a file" in output, output[-2000:]
    assert "Restore the snapshot into the cluster" not in output


def test_a_snapshot_of_another_datacenter_is_not_restored_into_this_one(tmp_path):
    # Named as dc2's timer names its snapshots; the first server is dc1's.
    other = tmp_path / "consul-dc2-20260101-000000.snap"
    other.write_bytes(b"never streamed to a server")
    result = run_playbook("restore_consul_snapshot.yml", "-e", f"consul_snapshot_restore_file={other}")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "snapshot of another datacenter than dc1" in output, output[-2000:]
    assert "Restore the snapshot into the cluster" not in output
