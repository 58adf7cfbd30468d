"""Growing the servers from three to five and back (issue 14, item 6).

Two more containers like the scenario's own join `consul_servers` through an
extra inventory file; the Consul plays of site.yml (playbooks/consul.yml,
which site.yml imports; its other plays touch no server) make them voters
without a restart anywhere and with a leader all along.
playbooks/retire_consul_servers.yml then takes them out one at a time; the
same plays with the scenario's inventory delete their agent tokens, and a
second run changes nothing."""

from __future__ import annotations

import itertools
import re
import subprocess
import threading
import time

import pytest
import yaml
from conftest import (
    EdgeLoad,
    KVLedger,
    api_call,
    consul_api,
    record_figures,
    run_playbook,
    secret,
    start_scenario_containers,
    wait_for,
)

SPARES = ["molecule-consul-server-4", "molecule-consul-server-5"]


@pytest.fixture(scope="module")
def spares(tmp_path_factory):
    """The two spare containers, booted, and an inventory file that adds them to consul_servers."""
    subprocess.run(["docker", "rm", "-f", *SPARES], capture_output=True, check=False)
    start_scenario_containers(SPARES)
    extra = tmp_path_factory.mktemp("grow") / "spares.yml"
    extra.write_text(yaml.safe_dump({"consul_servers": {"hosts": {
        name: {"ansible_connection": "community.docker.docker"} for name in SPARES}}}))
    try:
        yield extra
    finally:
        # After a failure half-way, the spares must not stay raft voters.
        run_playbook("retire_consul_servers.yml", "-i", str(extra), "--limit", ",".join(SPARES))
        subprocess.run(["docker", "rm", "-f", *SPARES], capture_output=True, check=False)


class LeaderWatch:
    """Samples the raft leader as server-1 sees it, every 0.2 s, in a thread."""

    def __init__(self, server):
        self.server, self.seen, self._stop = server, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.seen.append(api_call(self.server, "status/leader", token=None)[1])
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)


def changes_of(seen: list[str]) -> int:
    return sum(1 for a, b in itertools.pairwise(seen) if a != b)


def voters(server) -> list[str]:
    raft = consul_api(server, "operator/raft/configuration")
    return sorted(s["Node"] for s in raft["Servers"] if s["Voter"])


def changes(output: str) -> dict[str, int]:
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", output, re.MULTILINE)
    return {host: int(n) for host, n in recap}


def election_lines(hosts, since: str) -> list[str]:
    """Raft's own words for a leader change (a follower that heard no
    heartbeat, an election, a new leader), from each server's journal since
    `since`: the cause of a change, recorded with the figures."""
    pattern = "heartbeat timeout|entering candidate state|election won|lost leadership|leadership transfer"
    lines = []
    for host in hosts:
        out = host.run(f"journalctl -u consul -o short-precise --no-pager --since '{since}' "
                       f"| grep -E -i '{pattern}' | tail -n 20").stdout
        lines += [f"{host.backend.host}: {line}" for line in out.splitlines()]
    return lines


def main_pids(hosts) -> list[str]:
    return [h.check_output("systemctl show -P MainPID consul") for h in hosts]


def test_grow_to_five_servers_and_back_to_three(servers, clients, spares, base_url):
    originals = sorted(s.backend.host for s in servers)
    started = servers[0].check_output("date '+%Y-%m-%d %H:%M:%S'")
    pids = main_pids(servers + clients)
    ledger = KVLedger(clients[0].backend.host, secret("consul_acl_bootstrap_token"), "drill/grow-shrink")
    with EdgeLoad(f"{base_url}/") as edge_load, ledger:
        with LeaderWatch(servers[0]) as grow_watch:
            grown = run_playbook("consul.yml", "-i", str(spares))
            assert grown.returncode == 0, grown.stdout[-3000:]
            wait_for(lambda: voters(servers[0]) == sorted(originals + SPARES), 90, "five voters")
        # A leader in every sample. Its changes are recorded, not asserted:
        # the lab and an idle molecule run saw none, a CI run on this loaded
        # 2-core machine saw one (cause not yet found; issue 14's note).
        assert '""' not in grow_watch.seen and "" not in grow_watch.seen
        # join.hcl changed on every agent (reloaded); no agent restarted.
        assert main_pids(servers + clients) == pids

        with LeaderWatch(servers[0]) as shrink_watch:
            retired = run_playbook("retire_consul_servers.yml", "-i", str(spares),
                                   "--limit", ",".join(SPARES))
            assert retired.returncode == 0, retired.stdout[-3000:]
    assert voters(servers[0]) == originals
    # Writes all along: a failure only where a retiring server cut a stream
    # or refused at a hand-over (nothing else), and none acknowledged was lost.
    grow_changes = changes_of(grow_watch.seen)
    record_figures("grow 3->5: leader changes seen from server-1, and raft's log lines about them",
                   leader_changes=grow_changes,
                   raft_lines=election_lines(servers, started) if grow_changes else [])
    record_figures("grow 3->5 and shrink 5->3: KV writes through a client, / through the edge",
                   succeeded=ledger.ok, failed=len(ledger.failed),
                   leader_changes=changes_of(grow_watch.seen) + changes_of(shrink_watch.seen),
                   edge_requests=edge_load.ok, edge_failed=len(edge_load.failed))
    assert edge_load.ok > 50 and edge_load.failed == [], edge_load.failed[:5]
    assert ledger.ok > 50
    allowed = ("leadership transfer in progress", "stream closed", "No cluster leader", "leadership lost")
    assert [f for f in ledger.failed if not any(a in f for a in allowed)] == [], ledger.failed[:10]
    assert ledger.lost() == []
    assert '""' not in shrink_watch.seen and "" not in shrink_watch.seen
    # The retired servers were pruned from the gossip pool on the server that
    # ran force-leave; server-1 learns it by gossip, a moment later (CI saw
    # both spares still listed right after the play once).
    def spares_gone() -> bool:
        return not {m["Name"] for m in consul_api(servers[0], "agent/members")} & set(SPARES)

    try:
        wait_for(spares_gone, timeout=60, what="the retired servers to leave server-1's member list")
    except AssertionError as timed_out:
        # What each server holds about the spares, and serf's own words.
        held = {s.backend.host: {m["Name"]: m["Status"] for m in consul_api(s, "agent/members")
                                 if m["Name"] in SPARES} for s in servers}
        spares_pattern = "|".join(SPARES)
        said = [line for s in servers for line in s.run(
            f"journalctl -u consul --no-pager -o short-precise --since '{started}' "
            f"| grep -E 'serf|force|prune|Reap|member' | grep -E '{spares_pattern}' | tail -n 30"
        ).stdout.splitlines()]
        raise AssertionError(f"{timed_out}; members (status 3 = left): {held}; journal: {said}") from None

    back = run_playbook("consul.yml")
    assert back.returncode == 0, back.stdout[-3000:]
    tokens = consul_api(servers[0], "acl/tokens")
    identities = {n["NodeName"] for t in tokens for n in t.get("NodeIdentities") or []}
    assert not identities & set(SPARES) and set(originals) <= identities
    again = run_playbook("consul.yml")
    assert again.returncode == 0 and changes(again.stdout) and not any(changes(again.stdout).values()), \
        changes(again.stdout)
    assert main_pids(servers + clients) == pids


def test_retiring_every_server_or_an_even_count_is_refused(servers):
    before = voters(servers[0])
    for limit in (",".join(s.backend.host for s in servers), servers[0].backend.host):
        result = run_playbook("retire_consul_servers.yml", "--limit", limit)
        output = result.stdout + result.stderr
        assert result.returncode != 0 and "leaving an odd number" in output, output[-2000:]
        assert "Stop and disable Consul for good" not in output
    assert voters(servers[0]) == before
