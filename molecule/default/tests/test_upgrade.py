"""The upgrade drill (issue 14, item 1) on real-host terms (issue 15).

A platform of its own (three servers, two app hosts running the web
service, an edge; its own datacenter, secrets and inventory, the scenario's
settings otherwise) starts on the older Consul release the mirror holds
(files/releases.yml, upgrade_from), then playbooks/upgrade.yml takes it to
the pinned release while a ledger of KV writes runs through a client agent
and `/` is requested through the drill's edge all along. No IdP: `/` needs
no sign-in, and oauth2-proxy only reads the scenario's discovery document.

Its hosts are what operators run, not what the rest of the scenario uses:
Debian 13 (trixie) with systemd-resolved and sshd, reached over SSH as the
unprivileged `deploy` with password-less sudo (`become`), a key pair and
known_hosts made for this run only, and an inventory laid out like
inventories/production (hosts.yml, group_vars by topic, its connection.yml).
The platform is built as AWX / Ansible Automation Platform would build it:
site.yml through ansible-runner in AWX's project layout
(conftest.run_in_awx_layout), with the project's own ansible.cfg; a second
run must change nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    REPO,
    TRIXIE_IMAGE,
    EdgeLoad,
    KVLedger,
    container_address,
    provision_ssh_access,
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
# The writing client agent answers HTTP a moment before it has rejoined the
# servers: allowed only in that window after its own start, never while
# servers restart (a client that loses every server there is a defect).
REJOINING = "No known Consul servers"
REJOIN_SECONDS = 20


def agent_version(container: str, token: str) -> str:
    """The version the agent in `container` runs (the token goes in on stdin)."""
    out = subprocess.run(["docker", "exec", "-i", container, "sh", "-c",
                          'read -r t; curl -sS -H "X-Consul-Token: $t" localhost:8500/v1/agent/self'],
                         input=token + "\n", capture_output=True, text=True, check=False, timeout=30).stdout
    return json.loads(out or "{}").get("Config", {}).get("Version", "")


def agent_started_at(container: str) -> float:
    """When the Consul agent in `container` last started (epoch seconds; the
    containers share the host's clock)."""
    out = subprocess.run(["docker", "exec", container, "systemctl", "show", "--timestamp=unix",
                          "--property=ActiveEnterTimestamp", "--value", "consul"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return float(out.strip().lstrip("@"))


def scenario_settings() -> dict:
    """The scenario's inventory settings for every host (molecule.yml), with
    its environment variables filled in."""
    text = (REPO / "molecule" / "default" / "molecule.yml").read_text(encoding="utf-8")
    return yaml.safe_load(os.path.expandvars(text))["provisioner"]["inventory"]["group_vars"]["all"]


def changed_per_host(output: str) -> dict[str, int]:
    """`changed=` of every host in a run's PLAY RECAP."""
    return {host: int(changed) for host, changed in
            re.findall(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", output, flags=re.MULTILINE)}


def write_inventory(folder: Path, hosts: dict[str, dict], settings: dict) -> Path:
    """The drill's inventory in inventories/production's layout: hosts.yml
    with the groups, group_vars/all/ by topic, the production example's own
    connection.yml with this run's SSH key and known_hosts added."""
    inventory = folder / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    production = REPO / "inventories" / "production" / "group_vars" / "all" / "connection.yml"
    connection = yaml.safe_load(production.read_text(encoding="utf-8"))
    first = next(iter(hosts.values()))
    connection.update({k: v for k, v in first.items() if k != "ansible_host"})
    (inventory / "group_vars" / "all" / "connection.yml").write_text(yaml.safe_dump(connection))
    (inventory / "group_vars" / "all" / "platform.yml").write_text(yaml.safe_dump(settings))

    def members(names):
        return {name: {"ansible_host": hosts[name]["ansible_host"]} for name in names}

    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "consul_servers": {"hosts": members(SERVERS)},
        "consul_clients": {"children": {"app": {"hosts": members(APPS)},
                                        "edge": {"hosts": members([EDGE])}}}}}}))
    return inventory


@pytest.fixture(scope="module")
def drill(tmp_path_factory):
    older = release_mirror.upgrade_from("consul")
    assert older, "files/releases.yml holds no older consul release for the drill"
    folder = tmp_path_factory.mktemp("upgrade")
    # systemd-resolved answers every *.localhost with loopback itself, so the
    # drill's hosts learn the scenario IdP's name from /etc/hosts instead of
    # docker's DNS alias.
    start_scenario_containers([*SERVERS, *CLIENTS], image=TRIXIE_IMAGE,
                              hosts={"idp.localhost": container_address("molecule-idp-1")})
    # The lab web CA's name constraints allow no IP address: the drill's
    # edge is reached by its container address under the name localhost.
    edge_url = "https://localhost"
    hosts = provision_ssh_access([*SERVERS, *CLIENTS], folder)
    inventory = str(write_inventory(folder, hosts, {
        **scenario_settings(),
        "platform_secrets_dir": str(folder / "secrets"),
        # A platform of one datacenter of its own (the scenario's names dc1
        # the primary).
        "platform_datacenter": "upgrade",
        "platform_primary_datacenter": "upgrade",
        "consul_version": older[0],
        "edge_public_url": edge_url,
        "edge_nginx_public_url": edge_url,
        "oauth2_proxy_public_url": edge_url}))
    try:
        started = time.monotonic()
        built = run_in_awx_layout("site.yml", inventory, folder / "awx-job", "site-build")
        build_seconds = time.monotonic() - started
        started = time.monotonic()
        rerun = (run_in_awx_layout("site.yml", inventory, folder / "awx-job", "site-rerun")
                 if built.status == "successful" else None)
        record_figures("trixie over SSH with become: site.yml", build_seconds=round(build_seconds, 1),
                       rerun_seconds=round(time.monotonic() - started, 1))
        yield {"inventory": inventory, "folder": folder, "from": older[0], "edge_url": edge_url,
               "edge_address": container_address(EDGE), "built": built, "rerun": rerun}
    finally:
        subprocess.run(["docker", "rm", "-f", *SERVERS, *CLIENTS], capture_output=True, check=False)


def test_upgrade_servers_then_clients_leader_last_with_writes_going_on(drill):
    target = release_mirror.load_manifest()[0].version
    built = drill["built"]
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
                   kinds=sorted({next((a for a in (*ALLOWED, REJOINING) if a in f), f[:60])
                                 for f in writer.failed}),
                   edge_requests=edge_load.ok, edge_failed=len(edge_load.failed),
                   edge_retried_once_after_reload=edge_load.retries)
    # `/` through the edge failed no request, the edge's own agent's restart included.
    assert edge_load.ok > 50 and edge_load.failed == [], edge_load.failed[:5]
    assert writer.ok > 50
    started = agent_started_at(APPS[0])
    rejoining = [(f, at) for f, at in zip(writer.failed, writer.failed_at, strict=True) if REJOINING in f]
    assert all(started <= at <= started + REJOIN_SECONDS for _, at in rejoining), \
        (f"{APPS[0]}'s agent started at {started:.1f}", rejoining)
    unexpected = [f for f in writer.failed if not any(a in f for a in (*ALLOWED, REJOINING))]
    assert not unexpected, unexpected[:10]
    # The ledger: every write Consul acknowledged is there after the upgrade.
    assert writer.lost() == []


def on(container: str, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", container, "sh", "-c", script],
                          capture_output=True, text=True, check=False, timeout=60)


def test_a_second_run_over_ssh_changes_nothing(drill):
    rerun = drill["rerun"]
    assert rerun is not None, "the build failed; see the upgrade test"
    assert rerun.returncode == 0 and rerun.status == "successful", rerun.stdout[-3000:]
    assert changed_per_host(rerun.stdout) == dict.fromkeys([*SERVERS, *CLIENTS], 0), \
        [line for line in rerun.stdout.splitlines() if line.startswith("changed:")][:20]


@pytest.mark.parametrize("node", [*SERVERS, *CLIENTS])
def test_the_hosts_are_debian_13_reached_over_ssh_as_deploy_with_sudo(drill, node):
    assert "VERSION_CODENAME=trixie" in on(node, "cat /etc/os-release").stdout
    sshd = on(node, "journalctl -u ssh.service --no-pager -o cat").stdout
    assert re.search(r"^Accepted publickey for deploy from ", sshd, flags=re.MULTILINE), sshd[-2000:]
    assert "for root" not in sshd
    sudo = on(node, "journalctl _COMM=sudo --no-pager -o cat").stdout
    assert re.search(r"^\s*deploy : .*USER=root ; COMMAND=", sudo, flags=re.MULTILINE), sudo[-2000:]
    # What the roles wrote belongs to root, not to the account that logged in.
    written = on(node, "find /etc/consul.d /etc/systemd/system /usr/local/bin -user deploy -print -o -true")
    assert written.returncode == 0 and written.stdout == ""


@pytest.mark.parametrize("node", [*SERVERS, *CLIENTS])
def test_consul_names_resolve_through_systemd_resolved_on_trixie(drill, node):
    servers = {container_address(name) for name in SERVERS}
    found = on(node, "getent ahostsv4 consul.service.consul").stdout
    assert {line.split()[0] for line in found.splitlines()} == servers
    # The resolved path was chosen from the host's facts: a routing domain
    # for resolved, no dnsmasq, and docker's resolv.conf left as it was.
    assert on(node, "test -f /etc/systemd/resolved.conf.d/consul.conf").returncode == 0
    assert on(node, "dpkg-query -W -f '${Status}' dnsmasq-base").stdout != "install ok installed"
    assert "nameserver 127.0.0.1" not in on(node, "cat /etc/resolv.conf").stdout
    routing = on(node, "resolvectl query --legend=no consul.service.consul").stdout
    assert servers <= set(re.findall(r"\d+\.\d+\.\d+\.\d+", routing)), routing
    # Other names still resolve through the link's servers (docker's DNS, as
    # a network manager would have handed them to resolved):
    # the Debian mirror's name, from the host's own apt sources.
    sources = on(node, "cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null").stdout
    mirror_host = re.search(r"^URIs:\s*https?://([^/\s]+)|^deb\s+https?://([^/\s]+)", sources,
                            flags=re.MULTILINE)
    assert mirror_host, "no Debian mirror in the host's apt sources"
    name = mirror_host[1] or mirror_host[2]
    assert on(node, f"getent ahostsv4 {name}").stdout.strip(), f"{name} no longer resolves"


def test_resolved_with_a_global_upstream_stops_the_resolver_role_before_it_writes(drill):
    """A host whose resolved has a DNS= of its own (global scope) would lose
    either the Consul names or every other one: the role refuses it by name
    and leaves the host's resolver as it was."""
    node = APPS[1]
    ours = "/etc/systemd/resolved.conf.d/consul.conf"
    before = on(node, f"sha256sum {ours}").stdout
    assert on(node, "printf '[Resolve]\\nDNS=192.0.2.53\\n' > /etc/systemd/resolved.conf.d/corp.conf"
                    " && systemctl restart systemd-resolved").returncode == 0
    try:
        refused = run_playbook("site.yml", "--tags", "consul_resolver", "--limit", node,
                               inventory=drill["inventory"])
    finally:
        on(node, "rm -f /etc/systemd/resolved.conf.d/corp.conf && systemctl restart systemd-resolved")
    # The failure goes to stderr; a long message may be wrapped.
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode != 0
    assert "has global upstream servers (192.0.2.53:" in said, said[-3000:]
    assert "consul_resolver_method: dnsmasq" in said
    assert changed_per_host(refused.stdout) == {node: 0}
    assert on(node, f"sha256sum {ours}").stdout == before
