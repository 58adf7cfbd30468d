#!/usr/bin/env python3
"""`make bench-converge` / `make bench-scale`: how long the main job takes.

converge: on the benchmark cluster (inventories/bench: 3 servers, 2 clients,
ACL and TLS on, new secrets) and on the whole lab, a fresh run on new
containers and the idempotent re-run (which must report changed=0), once with
Ansible's stock linear strategy ("before") and once with the repository's
ansible.cfg, Mitogen ("after"). The lab keeps its secrets folder (a person's
browser trusts its CA); the benchmark cluster starts without one.

scale: the benchmark cluster with 5, 10 and 20 clients (after only): fresh
converge, re-run, and the time from the end of the converge until every member
is alive and every check passes.

Writes docs/bench/converge.json or docs/bench/scale.json; logs of every run go
to .cache/bench/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import LAB_INVENTORY, OUT, REPO, consul_api, playbook, wait_for, write_report

BENCH_INVENTORY = REPO / "inventories" / "bench" / "hosts.py"
BENCH_SECRETS = REPO / "inventories" / "bench" / ".secrets"
LOGS = REPO / ".cache" / "bench"
MAX_CLIENTS = 20
VARIANTS = {
    "before": {"ANSIBLE_STRATEGY": "linear"},
    "after": {},
}
# Issue 17's targets; bench_report.py judges the figures against them.
TARGETS = {
    "cluster_fresh_s": {"after": 35, "before": 100},
    "cluster_rerun_s": {"after": 16, "before": 50},
    "lab_rerun_s": 25,
    "lab_rerun_task_rounds": 150,
    "scale_20_fresh_s": 90,
    "scale_per_client_s": 3,
}
VARIANT_LABELS = {
    "before": "stock linear strategy, one Python per task (docker exec)",
    "after": "ansible.cfg: Mitogen linear strategy, one interpreter per host",
}


def bench_cluster(clients: int, variant: str, settle: bool = False) -> dict:
    env = {**VARIANTS[variant], "BENCH_CLIENTS": str(clients)}
    playbook(BENCH_INVENTORY, "playbooks/lab/down.yml", env={"BENCH_CLIENTS": str(MAX_CLIENTS)})
    shutil.rmtree(BENCH_SECRETS, ignore_errors=True)
    tag = f"cluster-{clients}-{variant}"
    up = playbook(BENCH_INVENTORY, "playbooks/lab/up.yml", env=env, log=LOGS / f"{tag}-up.log")
    fresh = playbook(BENCH_INVENTORY, "playbooks/preflight.yml", "playbooks/consul.yml", env=env,
                     log=LOGS / f"{tag}-fresh.log")
    result = {"clients": clients, "servers": 3, "variant": variant,
              "containers_s": up["wall_s"], "fresh": fresh}
    if settle:
        result["settle_after_converge_s"] = settle_time(clients)
    result["rerun"] = playbook(BENCH_INVENTORY, "playbooks/preflight.yml", "playbooks/consul.yml",
                               env=env, log=LOGS / f"{tag}-rerun.log")
    print(f"  {clients} clients, {variant}: fresh {fresh['wall_s']} s, re-run "
          f"{result['rerun']['wall_s']} s (changed={result['rerun']['changed']})", flush=True)
    return result


def settle_time(clients: int) -> float | None:
    """Seconds until all 3 + clients members are alive and every check passes."""
    token = BENCH_SECRETS / "consul_acl_bootstrap_token"

    def settled() -> bool:
        code, body = consul_api("bench-server-1", "/v1/agent/members", token)
        if code != 200 or sum(m["Status"] == 1 for m in json.loads(body)) != 3 + clients:
            return False
        code, body = consul_api("bench-server-1", "/v1/health/state/any", token)
        checks = json.loads(body) if code == 200 else []
        return bool(checks) and all(c["Status"] == "passing" for c in checks)

    return wait_for(settled, timeout=300)


def bench_lab(variant: str) -> dict:
    env = VARIANTS[variant]
    playbook(LAB_INVENTORY, "playbooks/lab/down.yml")
    up = playbook(LAB_INVENTORY, "playbooks/lab/up.yml", log=LOGS / f"lab-{variant}-up.log")
    fresh = playbook(LAB_INVENTORY, "site.yml", env=env, log=LOGS / f"lab-{variant}-fresh.log")
    rerun = playbook(LAB_INVENTORY, "site.yml", env=env, log=LOGS / f"lab-{variant}-rerun.log")
    print(f"  lab, {variant}: fresh {fresh['wall_s']} s, re-run {rerun['wall_s']} s "
          f"(changed={rerun['changed']})", flush=True)
    return {"variant": variant, "containers_s": up["wall_s"], "fresh": fresh, "rerun": rerun}


def plot_converge(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, scope, title in ((axes[0], "cluster", "3 servers + 2 clients (consul.yml)"),
                             (axes[1], "lab", "the whole lab (site.yml)")):
        runs = data[scope]
        labels = [r["variant"] for r in runs]
        x = range(len(runs))
        fresh = ax.bar([i - 0.2 for i in x], [r["fresh"]["wall_s"] for r in runs], 0.4,
                       label="fresh")
        rerun = ax.bar([i + 0.2 for i in x], [r["rerun"]["wall_s"] for r in runs], 0.4,
                       label="re-run (changed=0)")
        ax.bar_label(fresh, fmt="%.0f s", fontsize=8)
        ax.bar_label(rerun, fmt="%.0f s", fontsize=8)
        ax.set_xticks(list(x), labels)
        ax.set_title(f"{title}, {runs[0]['fresh']['hosts']} hosts", fontsize=10)
        ax.set_ylabel("wall time (s)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].axhline(TARGETS["cluster_fresh_s"]["after"], color="tab:blue", linestyle="--", linewidth=1)
    axes[0].axhline(TARGETS["cluster_rerun_s"]["after"], color="tab:orange", linestyle="--", linewidth=1)
    axes[1].axhline(TARGETS["lab_rerun_s"], color="tab:orange", linestyle="--", linewidth=1)
    axes[0].legend(fontsize=8)
    fig.suptitle("Converge time, before (stock strategy) and after (Mitogen); dashed: targets")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_scale(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    clients = [r["clients"] for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(clients, [r["fresh"]["wall_s"] for r in runs], marker="o", label="fresh converge")
    ax.plot(clients, [r["rerun"]["wall_s"] for r in runs], marker="o", label="re-run")
    ax.set_xlabel("client agents (plus 3 servers)")
    ax.set_ylabel("wall time (s)")
    ax.set_xticks(clients)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("consul.yml converge time by cluster size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["converge", "scale"])
    parser.add_argument("--clients", type=int, nargs="+", default=[5, 10, 20],
                        help="scale: client counts")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="converge: which strategies to measure")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        if args.part == "converge":
            print("converge: 3 servers + 2 clients, then the whole lab", flush=True)
            data = {"variants": {v: VARIANT_LABELS[v] for v in args.variants},
                    "cluster": [bench_cluster(2, v) for v in args.variants],
                    "lab": [bench_lab(v) for v in args.variants],
                    "targets": TARGETS}
        else:
            print(f"scale: 3 servers + {args.clients} clients", flush=True)
            data = {"variant": VARIANT_LABELS["after"], "targets": TARGETS,
                    "runs": [bench_cluster(n, "after", settle=True) for n in args.clients]}
    finally:
        playbook(BENCH_INVENTORY, "playbooks/lab/down.yml", env={"BENCH_CLIENTS": str(MAX_CLIENTS)})
    data["benchmark_wall_s"] = round(time.monotonic() - start)
    path = write_report(args.part, data)
    (plot_converge if args.part == "converge" else plot_scale)(data, OUT / f"{args.part}.png")
    print(f"wrote {path} and {OUT / f'{args.part}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
