#!/usr/bin/env python3
"""`make chaos`: fault drills against the lab, as a pass/fail table.

Each drill breaks one thing for real (SIGKILL, a stopped cluster, a container
taken off the docker network), says what it expects, waits for it with a
time limit, and puts the lab back. Writes docs/bench/chaos.json; the report
(tools/bench/bench_report.py) turns it into a table. Exit status 1 if a drill fails.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "probes"))
import lab_inventory
from bench_failover import kill_rounds
from benchlib import (
    LAB_INVENTORY,
    LAB_SECRETS,
    MANAGEMENT_TOKEN,
    SERVERS,
    LedgerProbe,
    cluster_healthy,
    consul_api,
    container_ip,
    leader,
    playbook,
    run,
    wait_for,
    write_report,
)
from keepalive import SteadyGets

FIRST_SERVER = SERVERS[0]
FIRST_APP = lab_inventory.first("app")
EDGE = lab_inventory.first("edge")
NETWORK = "consul-lab"
SERVICE = "python-web-service"
GREETING_KEY = "python-web-service/greeting"
UPSTREAMS = "/etc/nginx/consul-edge/upstreams/python-web-service.conf"
# Where the lab publishes the edge on this machine, and the CA of its certificate.
EDGE_PORT = 8443
WEB_CA = LAB_SECRETS / "web-ca" / "web-ca.pem"


class Drill:
    """Collects a drill's checks: what was expected, what was seen."""

    def __init__(self, name: str, description: str) -> None:
        self.name, self.description, self.checks = name, description, []
        self.started = time.monotonic()

    def check(self, what: str, ok: bool, seen: object = "") -> bool:
        self.checks.append({"check": what, "ok": bool(ok), "seen": str(seen)})
        print(f"    [{'pass' if ok else 'FAIL'}] {what}{f' ({seen})' if seen != '' else ''}",
              flush=True)
        return bool(ok)

    def wait(self, what: str, condition: Callable[[], bool], timeout: float) -> float | None:
        waited = wait_for(condition, timeout=timeout, interval=0.25)
        self.check(what, waited is not None,
                   f"after {waited} s" if waited is not None else f"not within {timeout} s")
        return waited

    def result(self) -> dict:
        return {"drill": self.name, "description": self.description,
                "passed": bool(self.checks) and all(c["ok"] for c in self.checks),
                "duration_s": round(time.monotonic() - self.started, 1), "checks": self.checks}


def kv_put(key: str, value: str, via: str = FIRST_SERVER) -> bool:
    return consul_api(via, f"/v1/kv/{key}", MANAGEMENT_TOKEN, "PUT", value)[1] == "true"


def kv_get(key: str, via: str = FIRST_SERVER, mode: str = "consistent") -> str | None:
    code, body = consul_api(via, f"/v1/kv/{key}?raw&{mode}", MANAGEMENT_TOKEN)
    return body if code == 200 else None


def token_self(container: str, token: Path | str) -> dict | None:
    code, body = consul_api(container, "/v1/acl/token/self", token)
    return json.loads(body) if code == 200 else None


def in_parallel(action: Callable[[str], object], items: list[str]) -> None:
    threads = [threading.Thread(target=action, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def drill_leader_kills(kills: int) -> dict:
    drill = Drill("leader-kills", f"kill -9 the leader's consul {kills} times under KV writes; "
                  "every acknowledged write is read back")
    rounds, probe = kill_rounds(kills)
    drill.check("a new leader took writes after every kill",
                all(r["recovery_s"] is not None for r in rounds),
                ", ".join(f"{r['recovery_s']} s" for r in rounds))
    acked, lost = probe["verify"]["acked"], len(probe["verify"]["lost"])
    drill.check("zero acknowledged writes lost", lost == 0 and acked > 0,
                f"{acked} acknowledged, {lost} lost")
    return drill.result()


def drill_full_restart() -> dict:
    drill = Drill("full-server-restart", "stop consul on all three servers at once, start them "
                  "again: no re-bootstrap, data and tokens still there")
    marker = uuid.uuid4().hex
    before = token_self(FIRST_SERVER, MANAGEMENT_TOKEN)
    drill.check("marker written before the restart", kv_put("chaos/restart-marker", marker))
    in_parallel(lambda s: run("docker", "exec", s, "systemctl", "stop", "consul"), SERVERS)
    stopped = [s for s in SERVERS if run("docker", "exec", s, "systemctl", "is-active", "consul",
                                         capture=True, check=False).strip() != "active"]
    drill.check("all three servers stopped", len(stopped) == len(SERVERS), ", ".join(stopped))
    in_parallel(lambda s: run("docker", "exec", s, "systemctl", "start", "consul"), SERVERS)
    drill.wait("a leader and every server healthy again", cluster_healthy, timeout=120)
    after = token_self(FIRST_SERVER, MANAGEMENT_TOKEN)
    drill.check("the management token is the same one (no re-bootstrap)",
                before and after and before["AccessorID"] == after["AccessorID"]
                and before["CreateIndex"] == after["CreateIndex"],
                f"created at raft index {after and after['CreateIndex']}")
    drill.check("the marker written before is there", kv_get("chaos/restart-marker") == marker)
    drill.check("the app's consul-template token still works",
                token_self(FIRST_APP, "/etc/consul-tokens/consul-template.token") is not None)
    drill.wait("every instance of the service passes its checks again",
               lambda: len(passing_instances()) == 2, timeout=120)
    consul_api(FIRST_SERVER, "/v1/kv/chaos/restart-marker", MANAGEMENT_TOKEN, "DELETE")
    return drill.result()


def drill_server_partition(cut_s: float = 12.0, write_timeout: float = 5.0) -> dict:
    drill = Drill("server-partition", "take the leader off the docker network: the other two "
                  "keep quorum and take writes; reconnected, it catches up")
    victim = leader()
    survivors = [s for s in SERVERS if s != victim]
    marker = uuid.uuid4().hex
    with LedgerProbe(timeout=write_timeout) as probe:
        time.sleep(2)
        run("docker", "network", "disconnect", NETWORK, victim)
        cut_at = time.time()
        try:
            drill.wait(f"the other servers elect a leader without {victim}",
                       lambda: leader(survivors) not in (None, victim), timeout=30)
            drill.check("a write through the survivors is acknowledged",
                        kv_put("chaos/partition-marker", marker, via=survivors[0]))
            time.sleep(max(0.0, cut_at + cut_s - time.time()))
        finally:
            run("docker", "network", "connect", NETWORK, victim)
        reconnected_at = time.time()
        drill.wait("reconnected: every server healthy again", cluster_healthy, timeout=120)
        drill.wait(f"{victim} has the write made while it was cut off (its local, stale read)",
                   lambda: kv_get("chaos/partition-marker", via=victim, mode="stale") == marker,
                   timeout=60)
    # Writes in flight to the cut leader get no reset: they wait for the
    # client's timeout; the writes sent after that go to the new leader.
    writes = probe.result["writes"]
    resumed = next((w for w in writes if w["start"] > cut_at and w["acked"]), None)
    during = sum(w["acked"] for w in writes if cut_at < w["start"] < reconnected_at)
    drill.check("writes through edge-1's client agent went on while it was cut off",
                resumed is not None and resumed["end"] < reconnected_at,
                f"first acknowledged {resumed and round(resumed['end'] - cut_at, 2)} s after the "
                f"cut ({write_timeout} s client timeout), {during} acknowledged before reconnect")
    lost = len(probe.result["verify"]["lost"])
    drill.check("zero acknowledged writes lost", lost == 0,
                f"{probe.result['verify']['acked']} acknowledged, {lost} lost")
    consul_api(FIRST_SERVER, "/v1/kv/chaos/partition-marker", MANAGEMENT_TOKEN, "DELETE")
    return drill.result()


def passing_instances() -> set[str]:
    code, body = consul_api(FIRST_SERVER, f"/v1/health/service/{SERVICE}?passing",
                            MANAGEMENT_TOKEN)
    return {entry["Node"]["Node"] for entry in json.loads(body)} if code == 200 else set()


def dns_addresses() -> set[str]:
    out = run("docker", "exec", EDGE, "getent", "ahostsv4", f"{SERVICE}.service.consul",
              capture=True, check=False)
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def upstream_file() -> str:
    return run("docker", "exec", EDGE, "cat", UPSTREAMS, capture=True, check=False)


def edge_root_ok() -> bool:
    code = run("docker", "exec", EDGE, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
               "--cacert", "/etc/nginx/tls/ca.pem", "--resolve", "localhost:443:127.0.0.1",
               "https://localhost/", capture=True, check=False)
    return code.strip() == "200"


def drill_app_partition(node: str = FIRST_APP) -> dict:
    drill = Drill("app-partition", f"take {node} off the docker network: its service turns "
                  "critical and leaves DNS and the nginx upstream; it returns when reconnected")
    address = container_ip(node)
    drill.wait(f"before: {node} ({address}) passes, is in DNS and in the upstream",
               lambda: node in passing_instances() and address in dns_addresses()
               and f"{address}:" in upstream_file(), timeout=60)
    run("docker", "network", "disconnect", NETWORK, node)
    try:
        drill.wait(f"{node}'s instance is no longer passing",
                   lambda: node not in passing_instances(), timeout=60)
        drill.wait(f"DNS no longer answers {address}", lambda: address not in dns_addresses(),
                   timeout=30)
        drill.wait("nginx's upstream no longer lists it", lambda: f"{address}:" not in
                   upstream_file(), timeout=30)
        drill.check("/ through the edge still answers 200", edge_root_ok())
    finally:
        run("docker", "network", "connect", NETWORK, node)
    address = container_ip(node)
    drill.wait(f"{node}'s instance passes again", lambda: node in passing_instances(), timeout=120)
    drill.wait(f"DNS answers {node} again ({address})", lambda: address in dns_addresses(),
               timeout=60)
    drill.wait("nginx's upstream lists it again", lambda: f"{address}:" in upstream_file(),
               timeout=60)
    return drill.result()


class EdgeRootProbe(SteadyGets):
    """GET / through the edge's published port every 50 ms over one
    keep-alive connection, as a browser would (one retry of a reused
    connection that a reload closed before any byte, counted apart); every
    other exception and every non-200 is a failed request."""

    def __init__(self) -> None:
        context = ssl.create_default_context(cafile=str(WEB_CA))
        super().__init__(lambda: http.client.HTTPSConnection("localhost", EDGE_PORT, context=context,
                                                             timeout=5), path="/", pause=0.05)

    def check(self, drill: Drill) -> None:
        drill.check("/ through the edge failed no request", self.ok > 0 and not self.failed,
                    f"{self.ok} served, {len(self.failed)} failed {self.failed[:3]}, "
                    f"{self.retries} retried once after a reload")


def drill_planned_leader_restart() -> dict:
    drill = Drill("planned-leader-restart", "playbooks/restart_consul.yml on the raft leader "
                  "under KV writes and / through the edge: it hands leadership over first")
    before = leader()
    drill.check("a leader before", before is not None, before)
    with EdgeRootProbe() as edge, LedgerProbe() as probe:
        time.sleep(2)
        ran = playbook(LAB_INVENTORY, "playbooks/restart_consul.yml", extra=["--limit", before])
        time.sleep(2)
    drill.check("the playbook restarted it", ran["changed"] > 0, f"{ran['wall_s']} s")
    drill.wait("another server leads", lambda: leader() not in (None, before), timeout=30)
    acked, lost = probe.result["verify"]["acked"], len(probe.result["verify"]["lost"])
    drill.check("zero acknowledged writes lost", lost == 0 and acked > 0,
                f"{acked} acknowledged, {lost} lost")
    edge.check(drill)
    return drill.result()


def drill_snapshot_restore() -> dict:
    drill = Drill("snapshot-restore", "fetch a fresh snapshot, change KV, restore the snapshot "
                  "with / through the edge watched: KV is as it was, the cluster takes writes")
    key, kept, undone = "chaos/restore-marker", uuid.uuid4().hex, uuid.uuid4().hex
    folder = LAB_SECRETS / "snapshots"
    try:
        drill.check("a marker written before the snapshot", kv_put(key, kept))
        playbook(LAB_INVENTORY, "playbooks/fetch_consul_snapshot.yml",
                 extra=["-e", "consul_snapshot_fetch_fresh=true"])
        snapshot = max(folder.glob("consul-*.snap"), key=lambda p: p.stat().st_mtime)
        drill.check("the snapshot is on the controller, private", snapshot.stat().st_mode & 0o077 == 0,
                    snapshot.name)
        drill.check("the marker changed after the snapshot", kv_put(key, undone))
        with EdgeRootProbe() as edge:
            ran = playbook(LAB_INVENTORY, "playbooks/restore_consul_snapshot.yml",
                           extra=["-e", f"consul_snapshot_restore_file={snapshot}"])
            drill.check("the marker is back to its value at the snapshot", kv_get(key) == kept,
                        f"restore took {ran['wall_s']} s")
            drill.check("the restored cluster takes writes", kv_put(f"{key}-after", kept)
                        and kv_get(f"{key}-after") == kept)
            drill.wait("every instance of the service passes its checks",
                       lambda: len(passing_instances()) == 2, timeout=60)
        edge.check(drill)
    finally:
        for each in (key, f"{key}-after"):
            consul_api(FIRST_SERVER, f"/v1/kv/{each}", MANAGEMENT_TOKEN, "DELETE")
    return drill.result()


def unit_state(host: str, unit: str) -> tuple[str, int]:
    out = run("docker", "exec", host, "systemctl", "show", unit, "--property=ActiveState",
              "--property=NRestarts", capture=True)
    props = dict(line.split("=", 1) for line in out.split())
    return props["ActiveState"], int(props["NRestarts"])


def served_greeting(host: str) -> str:
    return run("docker", "exec", host, "curl", "-s", "-m", "2", "http://127.0.0.1:8080/",
               capture=True, check=False).strip()


def drill_process_kills(host: str = FIRST_APP) -> dict:
    drill = Drill("process-kills", f"kill -9 consul-template, then the web service, on {host}: "
                  "systemd starts them again and the greeting served is the one in KV")
    original = kv_get(GREETING_KEY)
    try:
        for unit in ("consul-template", "python-web-service"):
            _, restarts = unit_state(host, unit)
            run("docker", "exec", host, "systemctl", "kill", "--signal=KILL", f"{unit}.service")
            drill.wait(f"systemd restarted {unit}", lambda u=unit, r=restarts:
                       unit_state(host, u) == ("active", r + 1), timeout=30)
            greeting = f"Hello after a kill of {unit} {uuid.uuid4().hex[:6]}"
            drill.check("a new greeting is written to KV", kv_put(GREETING_KEY, greeting))
            drill.wait(f"{host} serves the new greeting", lambda g=greeting:
                       served_greeting(host) == g, timeout=30)
        drill.wait(f"{host}'s instance passes its checks again",
                   lambda: host in passing_instances(), timeout=60)
    finally:
        if original is not None:
            kv_put(GREETING_KEY, original)
    return drill.result()


DRILLS = {
    "leader-kills": lambda args: drill_leader_kills(args.kills),
    "full-server-restart": lambda args: drill_full_restart(),
    "server-partition": lambda args: drill_server_partition(),
    "app-partition": lambda args: drill_app_partition(),
    "process-kills": lambda args: drill_process_kills(),
    "planned-leader-restart": lambda args: drill_planned_leader_restart(),
    "snapshot-restore": lambda args: drill_snapshot_restore(),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5, help="leader kills in the first drill")
    parser.add_argument("--only", nargs="+", choices=list(DRILLS), default=list(DRILLS))
    args = parser.parse_args(argv)
    if wait_for(cluster_healthy, timeout=120) is None:
        raise SystemExit("chaos: the lab's cluster is not healthy; run `make lab` first")
    results = []
    for name in args.only:
        print(f"== {name}", flush=True)
        results.append(DRILLS[name](args))
        # The next drill starts from a healthy cluster.
        wait_for(cluster_healthy, timeout=120)
    print(f"\n{'drill':22} {'result':7} {'seconds':>8}")
    for result in results:
        print(f"{result['drill']:22} {'pass' if result['passed'] else 'FAIL':7} "
              f"{result['duration_s']:>8}")
    path = write_report("chaos", {"drills": results})
    print(f"wrote {path}")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
