"""The upgrade drill (issue 14, item 1): a platform of its own (three servers,
two app hosts running the web service, an edge; containers
like the scenario's, its own datacenter, secrets and inventory, the scenario's
settings otherwise) starts on the older Consul release the mirror holds
(files/releases.yml, upgrade_from), then playbooks/upgrade.yml takes it to
the pinned release while a ledger of KV writes runs through a client agent
and `/` is requested through the drill's edge all along. No IdP: `/` needs
no sign-in, and oauth2-proxy only reads the scenario's discovery document.

The drill's platform is built as AWX / Ansible Automation Platform would
build it: site.yml through ansible-runner in AWX's project layout
(conftest.run_in_awx_layout), with the project's own ansible.cfg."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from conftest import (
    REPO,
    EdgeLoad,
    KVLedger,
    container_address,
    record_figures,
    restarts_in,
    run_in_awx_layout,
    run_playbook,
    start_scenario_containers,
)

sys.path.insert(0, str(REPO / "tools" / "lab"))
import release_mirror

SERVERS = [f"molecule-upgrade-server-{i}" for i in (1, 2, 3)]
APPS = ["molecule-upgrade-app-1", "molecule-upgrade-app-2"]
EDGE = "molecule-upgrade-edge-1"
CLIENTS = [*APPS, EDGE]
# Writes refused at a hand-over (nothing applied), a stream cut by a
# server's restart, and the writing client agent's own restart (nothing answers).
ALLOWED = ("leadership transfer in progress", "stream closed", "curl: (7)", "curl: (52)", "curl: (56)")


def agent_version(container: str, token: str) -> str:
    """The version the agent in `container` runs (the token goes in on stdin)."""
    out = subprocess.run(["docker", "exec", "-i", container, "sh", "-c",
                          'read -r t; curl -sS -H "X-Consul-Token: $t" localhost:8500/v1/agent/self'],
                         input=token + "\n", capture_output=True, text=True, check=False, timeout=30).stdout
    return json.loads(out or "{}").get("Config", {}).get("Version", "")


def scenario_settings() -> dict:
    """The scenario's inventory settings for every host (molecule.yml), with
    its environment variables filled in."""
    text = (REPO / "molecule" / "default" / "molecule.yml").read_text(encoding="utf-8")
    return yaml.safe_load(os.path.expandvars(text))["provisioner"]["inventory"]["group_vars"]["all"]


@pytest.fixture(scope="module")
def drill(tmp_path_factory):
    older = release_mirror.upgrade_from("consul")
    assert older, "files/releases.yml holds no older consul release for the drill"
    folder = tmp_path_factory.mktemp("upgrade")
    start_scenario_containers([*SERVERS, *CLIENTS])
    # The lab web CA's name constraints allow no IP address: the drill's
    # edge is reached by its container address under the name localhost.
    edge_url = "https://localhost"
    inventory = folder / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {
        "vars": {**scenario_settings(),
                 "ansible_connection": "community.docker.docker",
                 "platform_secrets_dir": str(folder / "secrets"),
                 "platform_datacenter": "upgrade",
                 "consul_version": older[0],
                 "edge_public_url": edge_url,
                 "edge_nginx_public_url": edge_url,
                 "oauth2_proxy_public_url": edge_url},
        "children": {"consul_servers": {"hosts": dict.fromkeys(SERVERS)},
                     "consul_clients": {"hosts": dict.fromkeys(CLIENTS)},
                     "app": {"hosts": dict.fromkeys(APPS)},
                     "edge": {"hosts": {EDGE: None}}}}}))
    try:
        yield {"inventory": str(inventory), "folder": folder, "from": older[0], "edge_url": edge_url,
               "edge_address": container_address(EDGE)}
    finally:
        subprocess.run(["docker", "rm", "-f", *SERVERS, *CLIENTS], capture_output=True, check=False)


def test_upgrade_servers_then_clients_leader_last_with_writes_going_on(drill):
    target = release_mirror.load_manifest()[0].version
    built = run_in_awx_layout("site.yml", drill["inventory"], drill["folder"] / "awx-job", "site-build")
    assert built.returncode == 0 and built.status == "successful", built.stdout[-3000:] + built.stderr[-2000:]
    # The project's ansible.cfg was read from `project/`: its Mitogen strategy
    # draws ansible-core's warning about third-party strategy plugins.
    assert "third party strategy plugins" in built.stdout + built.stderr
    management = (drill["folder"] / "secrets" / "consul_acl_bootstrap_token").read_text().strip()
    assert {agent_version(h, management) for h in [*SERVERS, *CLIENTS]} == {drill["from"]}
    web_ca = drill["folder"] / "secrets" / "web-ca" / "web-ca.pem"
    with EdgeLoad(f"{drill['edge_url']}/", ca=web_ca, address=drill["edge_address"]) as edge_load, \
            KVLedger(APPS[0], management, "drill/upgrade") as writer:
        time.sleep(2)
        upgraded = run_playbook("upgrade.yml", "-e", f"consul_version={target}", inventory=drill["inventory"])
        time.sleep(2)
    assert upgraded.returncode == 0, upgraded.stdout[-3000:]
    assert {agent_version(h, management) for h in [*SERVERS, *CLIENTS]} == {target}

    # A snapshot was taken and copied to the controller before anything changed.
    snapshots = sorted((drill["folder"] / "secrets" / "snapshots").glob("consul-upgrade-*.snap"))
    first_restart = upgraded.stdout.index("Restart Consul on")
    assert snapshots and upgraded.stdout.index(str(snapshots[-1])) < first_restart

    # Servers one at a time, then the client; the leader last of the servers,
    # after the only hand-over.
    order = restarts_in(upgraded.stdout)
    restarted = [host for step, host in order if step == "Restart Consul on"]
    assert sorted(restarted[:3]) == SERVERS and sorted(restarted[3:]) == CLIENTS, order
    handed = [host for step, host in order if step == "Hand raft leadership over before restarting"]
    assert handed == [restarted[2]], order

    # Every write either succeeded or failed in one of the expected ways.
    record_figures("upgrade drill: KV writes through the client during the upgrade",
                   succeeded=writer.ok, failed=len(writer.failed),
                   kinds=sorted({next((a for a in ALLOWED if a in f), f[:60]) for f in writer.failed}),
                   edge_requests=edge_load.ok, edge_failed=len(edge_load.failed),
                   edge_retried_once_after_reload=edge_load.retries)
    # `/` through the edge failed no request, the edge's own agent's restart included.
    assert edge_load.ok > 50 and edge_load.failed == [], edge_load.failed[:5]
    assert writer.ok > 50
    unexpected = [f for f in writer.failed if not any(a in f for a in ALLOWED)]
    assert not unexpected, unexpected[:10]
    # The ledger: every write Consul acknowledged is there after the upgrade.
    assert writer.lost() == []
