"""Helpers shared by the benchmark and chaos tools (`make bench`, `make chaos`).

Everything here talks to the lab through the docker CLI and the inventories'
secrets folders; nothing needs a network route into the lab.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
import lab_inventory

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "docs" / "bench"
BIN = Path(sys.executable).parent
LAB_INVENTORY = REPO / "inventories" / "lab"
LAB_SECRETS = LAB_INVENTORY / ".secrets"
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


def run(*argv: str, capture: bool = False, check: bool = True,
        stdin: str | None = None) -> str:
    result = subprocess.run(argv, check=check, text=True, input=stdin,
                            stdout=subprocess.PIPE if capture else None)
    return result.stdout if capture else ""


def container_ip(name: str) -> str:
    return run("docker", "inspect", "--format",
               "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name,
               capture=True).strip()


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def consul_api(container: str, path: str, token_file: Path | str, method: str = "GET",
               body: str | None = None, timeout: float = 5.0) -> tuple[int, str]:
    """One HTTP call to the agent on `container`.

    token_file is a file on this machine (a Path; its token goes in on stdin,
    never on a command line) or a path inside the container (a str).
    """
    if isinstance(token_file, Path):
        read_token, stdin = "IFS= read -r t", token_file.read_text(encoding="utf-8").strip() + "\n"
    else:
        read_token, stdin = 't=$(cat "$4")', ""
    data = '--data-binary @-' if body is not None else ""
    # The header goes through a root-only file that printf (a shell builtin)
    # writes: no command line in the container carries the token.
    script = (f'{read_token}; h=$(umask 077 && mktemp) && printf "X-Consul-Token: %s\\n" "$t" > "$h"; '
              f'curl -s -m "$1" -w "\\n%{{http_code}}" -X "$2" {data} '
              '-H @"$h" "http://127.0.0.1:8500$3"; rc=$?; rm -f "$h"; exit $rc')
    result = subprocess.run(
        ["docker", "exec", "-i", container, "sh", "-c", script, "sh", str(timeout), method, path,
         str(token_file)],
        input=stdin + (body or ""), capture_output=True, text=True, check=False)
    response, _, code = result.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), response


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> float | None:
    """Seconds until check() is true, or None after timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return round(time.monotonic() - start, 2)
        time.sleep(interval)
    return None


def playbook(inventory: Path, *playbooks: str, env: dict[str, str] | None = None,
             log: Path | None = None, extra: list[str] | None = None) -> dict:
    """Run ansible-playbook; wall time, the recap per host and the slowest tasks."""
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory),
            *[str(REPO / p) for p in playbooks], *(extra or [])]
    start = time.monotonic()
    result = subprocess.run(argv, cwd=REPO, env={**os.environ, **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    wall = time.monotonic() - start
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(result.stdout, encoding="utf-8")
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-40:])
        raise SystemExit(f"{' '.join(playbooks)} failed (rc {result.returncode}):\n{tail}")
    recap = {}
    for line in result.stdout.split("PLAY RECAP")[-1].splitlines():
        if match := RECAP.match(line):
            recap[match[1]] = {"ok": int(match[2]), "changed": int(match[3])}
    return {"wall_s": round(wall, 1), "changed": sum(h["changed"] for h in recap.values()),
            "tasks_ok": sum(h["ok"] for h in recap.values()), "hosts": len(recap),
            "task_rounds": task_rounds(result.stdout),
            "slowest_tasks": slowest_tasks(result.stdout)}


def task_rounds(output: str) -> int:
    """Task and handler banners: each is one round that every host of its play waits on."""
    return len(re.findall(r"^(?:TASK|RUNNING HANDLER) \[", output, flags=re.MULTILINE))


def slowest_tasks(output: str, count: int = 5) -> list[dict]:
    """The top of every profile_tasks recap in the output, merged."""
    rows = []
    for block in output.split("TASKS RECAP")[1:]:
        for line in block.splitlines():
            if match := re.match(r"^(.+?) -+ (\d+\.\d+)s$", line.strip()):
                rows.append({"task": match[1].strip(), "s": float(match[2])})
    return sorted(rows, key=lambda r: -r["s"])[:count]


def machine() -> dict:
    """What the figures were measured on."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        mem_kib = int(meminfo.read_text().split()[1])
    docker = run("docker", "version", "--format", "{{.Server.Version}}", capture=True,
                 check=False).strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "os": platform.platform(), "docker": docker,
            "python": platform.python_version(), "cpu_reference_s": cpu_reference()}


def cpu_reference() -> float:
    """Seconds one core takes for a fixed piece of work (SHA-256 over
    256 MiB and a million-step Python loop), best of three. This VM's
    speed differs from day to day by a third: figures from two days compare
    only through this."""
    block = bytes(2**20)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        digest = hashlib.sha256()
        for _ in range(256):
            digest.update(block)
        total = 0
        for i in range(1_000_000):
            total += i * i
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def write_report(name: str, data: dict) -> Path:
    """docs/bench/<name>.json with the date and the machine."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    document = {"benchmark": name,
                "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": machine(), **data}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


# The lab's Consul servers, seen from outside: leader, health, kills.
# The primary datacenter's servers: the raft the failover and hand-over
# benchmarks measure.
SERVERS = lab_inventory.group("consul_servers", lab_inventory.primary_datacenter())
MANAGEMENT_TOKEN = LAB_SECRETS / "consul_acl_bootstrap_token"


def leader(servers: list[str] = SERVERS) -> str | None:
    """The container that leads raft, as the first server that answers sees it."""
    for server in servers:
        code, body = consul_api(server, "/v1/status/leader", MANAGEMENT_TOKEN, timeout=2)
        address = json.loads(body) if code == 200 and body else ""
        if address:
            ip = address.rsplit(":", 1)[0]
            return next((s for s in SERVERS if container_ip(s) == ip), None)
    return None


def cluster_healthy(servers: list[str] = SERVERS) -> bool:
    """A leader, and autopilot reports every server healthy, seen from each server."""
    for server in servers:
        code, body = consul_api(server, "/v1/operator/autopilot/health", MANAGEMENT_TOKEN,
                                timeout=2)
        if code != 200:
            return False
        health = json.loads(body)
        if not health.get("Healthy") or len(health.get("Servers", [])) != len(SERVERS):
            return False
    return True


def settled_leader(what: str, settle_s: float = 2.0) -> str:
    """The leader, once autopilot calls every server healthy and settle_s
    more has passed (the start of a failover or hand-over round)."""
    if wait_for(cluster_healthy, timeout=120, interval=0.5) is None:
        raise SystemExit(f"{what}: the cluster did not become healthy in 120 s")
    time.sleep(settle_s)
    victim = leader()
    if victim is None:
        raise SystemExit(f"{what}: no leader")
    return victim


def kill_consul(container: str) -> float:
    """SIGKILL the agent (systemd restarts it); the wall time just after the kill."""
    out = run("docker", "exec", container, "sh", "-c",
              "systemctl kill --signal=KILL consul.service; date +%s.%N", capture=True)
    return float(out.split()[-1])


class ScratchToken:
    """A short-lived Consul token holding one of the platform's roles, in a
    root-only file on a lab host, for a probe there (people get their own
    tokens at sign-in; no shared UI token exists). Made with the management
    token on stdin, deleted at the end, and it expires on its own if the
    tool dies."""

    def __init__(self, host: str, role: str, path: str = "/run/consul-probe.token", ttl: str = "2h"):
        self.host, self.role, self.path, self.ttl = host, role, path, ttl
        self.accessor_id = ""

    def __enter__(self) -> str:
        code, body = consul_api(SERVERS[0], "/v1/acl/token", MANAGEMENT_TOKEN, "PUT", json.dumps({
            "Description": f"probe on {self.host} (tools/bench)", "Roles": [{"Name": self.role}],
            "ExpirationTTL": self.ttl}))
        if code != 200:
            raise SystemExit(f"could not make a {self.role} token for the probe: {code} {body[:200]}")
        token = json.loads(body)
        self.accessor_id = token["AccessorID"]
        run("docker", "exec", "-i", self.host, "sh", "-c", 'umask 077 && cat > "$1"', "sh", self.path,
            stdin=token["SecretID"] + "\n")
        return self.path

    def __exit__(self, *exc: object) -> None:
        run("docker", "exec", self.host, "rm", "-f", self.path, check=False)
        consul_api(SERVERS[0], f"/v1/acl/token/{self.accessor_id}", MANAGEMENT_TOKEN, "DELETE")


class LedgerProbe:
    """tools/bench/probes/write_ledger_probe.py on a lab host, for a `with`
    block, writing with a scratch token of the ui-operator role."""

    def __init__(self, host: str = lab_inventory.first("edge"), writers: int = 4,
                 timeout: float = 10.0):
        self.host = host
        self.token = ScratchToken(host, "ui-operator")
        self.argv = ["--token-file", self.token.path, "--writers", str(writers),
                     "--timeout", str(timeout)]
        self.result: dict = {}

    def __enter__(self) -> LedgerProbe:
        self.token.__enter__()
        probe = Path(__file__).resolve().parent / "probes" / "write_ledger_probe.py"
        run("docker", "cp", str(probe), f"{self.host}:/root/write_ledger_probe.py")
        self.process = subprocess.Popen(
            ["docker", "exec", "-i", self.host, "python3", "/root/write_ledger_probe.py",
             *self.argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            out, _ = self.process.communicate(timeout=600)
        finally:
            self.token.__exit__()
        if self.process.returncode != 0:
            raise SystemExit(f"the write probe on {self.host} failed (rc {self.process.returncode})")
        self.result = json.loads(out)


def recovery_after(writes: list[dict], kill_at: float) -> dict:
    """Kill -> the end of the first acknowledged write sent after it."""
    after = [w for w in writes if w["start"] >= kill_at]
    first = next((w for w in after if w["acked"]), None)
    window = [w for w in writes if w["end"] >= kill_at and (first is None or w["start"] <= first["end"])]
    return {"recovery_s": round(first["end"] - kill_at, 3) if first else None,
            "failed_writes": sum(not w["acked"] for w in window),
            "slowest_write_s": round(max((w["end"] - w["start"] for w in window), default=0), 3)}


def round_bars(path: Path, series: list[tuple[str, list[float], str]], target: float,
               target_label: str, xlabel: str, ylabel: str, title: str) -> None:
    """One bar per round for each (label, values, colour) side by side, and
    the target as a dashed line (the failover and hand-over benchmarks)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(series)
    for offset, (label, values, colour) in enumerate(series):
        ax.bar([i + width * offset for i in range(1, len(values) + 1)], values, width=width,
               color=colour, label=label)
    ax.axhline(target, color="tab:red", linestyle="--", linewidth=1, label=target_label)
    ax.set_xticks(range(1, max(len(values) for _, values, _ in series) + 1))
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
