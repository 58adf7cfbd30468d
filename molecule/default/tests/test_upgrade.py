"""The upgrade drill (issue 14, item 1): a cluster of its own (three servers
and a client, containers like the scenario's, its own datacenter, secrets
and inventory) starts on the older Consul release the mirror holds
(files/releases.yml, upgrade_from), then playbooks/upgrade.yml takes it to
the pinned release while a ledger of KV writes runs through the client agent."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml
from conftest import (
    CACHE,
    REPO,
    KVLedger,
    record_figures,
    restarts_in,
    run_playbook,
    start_scenario_containers,
)

sys.path.insert(0, str(REPO / "tools" / "lab"))
import release_mirror

SERVERS = [f"molecule-upgrade-server-{i}" for i in (1, 2, 3)]
CLIENT = "molecule-upgrade-client-1"
# Writes refused at a hand-over (nothing applied), a stream cut by a
# server's restart, and the client agent's own restart (nothing answers).
ALLOWED = ("leadership transfer in progress", "stream closed", "curl: (7)", "curl: (52)", "curl: (56)")


def agent_version(container: str, token: str) -> str:
    """The version the agent in `container` runs (the token goes in on stdin)."""
    out = subprocess.run(["docker", "exec", "-i", container, "sh", "-c",
                          'read -r t; curl -sS -H "X-Consul-Token: $t" localhost:8500/v1/agent/self'],
                         input=token + "\n", capture_output=True, text=True, check=False, timeout=30).stdout
    return json.loads(out or "{}").get("Config", {}).get("Version", "")


@pytest.fixture(scope="module")
def drill(tmp_path_factory):
    older = release_mirror.upgrade_from("consul")
    assert older, "files/releases.yml holds no older consul release for the drill"
    folder = tmp_path_factory.mktemp("upgrade")
    inventory = folder / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {
        "vars": {"ansible_connection": "community.docker.docker",
                 "platform_release_install_method": "controller",
                 "platform_hashicorp_release_url": f"file://{CACHE}/releases",
                 "platform_secrets_dir": str(folder / "secrets"),
                 "platform_datacenter": "upgrade",
                 "consul_version": older[0]},
        "children": {"consul_servers": {"hosts": dict.fromkeys(SERVERS)},
                     "consul_clients": {"hosts": {CLIENT: None}}}}}))
    start_scenario_containers([*SERVERS, CLIENT])
    try:
        yield {"inventory": str(inventory), "folder": folder, "from": older[0]}
    finally:
        subprocess.run(["docker", "rm", "-f", *SERVERS, CLIENT], capture_output=True, check=False)


def test_upgrade_servers_then_clients_leader_last_with_writes_going_on(drill):
    target = release_mirror.load_manifest()[0].version
    built = run_playbook("consul.yml", inventory=drill["inventory"])
    assert built.returncode == 0, built.stdout[-3000:]
    management = (drill["folder"] / "secrets" / "consul_acl_bootstrap_token").read_text().strip()
    assert {agent_version(h, management) for h in [*SERVERS, CLIENT]} == {drill["from"]}
    with KVLedger(CLIENT, management, "drill/upgrade") as writer:
        time.sleep(2)
        upgraded = run_playbook("upgrade.yml", "-e", f"consul_version={target}", inventory=drill["inventory"])
        time.sleep(2)
    assert upgraded.returncode == 0, upgraded.stdout[-3000:]
    assert {agent_version(h, management) for h in [*SERVERS, CLIENT]} == {target}

    # A snapshot was taken and copied to the controller before anything changed.
    snapshots = sorted((drill["folder"] / "secrets" / "snapshots").glob("consul-upgrade-*.snap"))
    first_restart = upgraded.stdout.index("Restart Consul on")
    assert snapshots and upgraded.stdout.index(str(snapshots[-1])) < first_restart

    # Servers one at a time, then the client; the leader last of the servers,
    # after the only hand-over.
    order = restarts_in(upgraded.stdout)
    restarted = [host for step, host in order if step == "Restart Consul on"]
    assert sorted(restarted[:3]) == SERVERS and restarted[3:] == [CLIENT], order
    handed = [host for step, host in order if step == "Hand raft leadership over before restarting"]
    assert handed == [restarted[2]], order

    # Every write either succeeded or failed in one of the expected ways.
    record_figures("upgrade drill: KV writes through the client during the upgrade",
                   succeeded=writer.ok, failed=len(writer.failed),
                   kinds=sorted({next((a for a in ALLOWED if a in f), f[:60]) for f in writer.failed}))
    assert writer.ok > 50
    unexpected = [f for f in writer.failed if not any(a in f for a in ALLOWED)]
    assert not unexpected, unexpected[:10]
    # The ledger: every write Consul acknowledged is there after the upgrade.
    assert writer.lost() == []
