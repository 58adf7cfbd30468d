#!/usr/bin/env python3
"""`make bench-hardening`: systemd's exposure score of every unit on the lab.

Runs `systemd-analyze security` for each unit on each lab host that runs it
(0 is best, 10 worst; "the most-used public Consul role's unit scores 9.3").
Units we ship (nginx: Debian's unit with our sandbox drop-in; dnsmasq: our own unit)
have a target of 3.0 or lower. Writes docs/bench/hardening.json and .png.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import BIN, LAB_INVENTORY, OUT, run, write_report

OURS = {
    "consul_servers": ["consul", "dnsmasq", "consul-snapshot"],
    "consul_clients": ["consul", "dnsmasq"],
    "app": ["consul-template", "python-web-service"],
    "edge": ["consul-template", "oauth2-proxy", "consul-edge-exchange", "nginx"],
    "lab_idp": ["hydra", "lab-idp-login"],
}
# Units as Debian ships them, listed for comparison (none left).
DEBIANS: dict[str, list[str]] = {}
TARGET = 3.0
SCORE = re.compile(r"Overall exposure level for \S+: (\d+\.\d+) (\S+)")


def groups() -> dict[str, list[str]]:
    inventory = json.loads(run(str(BIN / "ansible-inventory"), "-i", str(LAB_INVENTORY), "--list",
                               capture=True))

    def hosts(name: str) -> list[str]:
        entry = inventory.get(name, {})
        found = list(entry.get("hosts", []))
        for child in entry.get("children", []):
            found += hosts(child)
        return found

    return {name: sorted(set(hosts(name))) for name in set(OURS) | set(DEBIANS)}


def score(host: str, unit: str) -> tuple[float, str]:
    out = run("docker", "exec", host, "systemd-analyze", "security", "--no-pager",
              f"{unit}.service", capture=True)
    match = SCORE.search(out)
    if not match:
        raise SystemExit(f"no exposure score for {unit} on {host}:\n{out[-400:]}")
    return float(match[1]), match[2]


def main() -> int:
    rows = []
    members = groups()
    for owner, table in (("ours", OURS), ("Debian's", DEBIANS)):
        for group_name, units in table.items():
            for unit in units:
                for host in members[group_name]:
                    if any(r["unit"] == unit and r["host"] == host for r in rows):
                        continue
                    value, verdict = score(host, unit)
                    rows.append({"unit": unit, "host": host, "owner": owner,
                                 "exposure": value, "verdict": verdict})
    worst = {}
    for row in rows:
        key = (row["owner"], row["unit"])
        worst[key] = max(worst.get(key, 0.0), row["exposure"])
    summary = [{"unit": unit, "owner": owner, "worst_exposure": value,
                "meets_target": value <= TARGET if owner == "ours" else None}
               for (owner, unit), value in worst.items()]
    print(f"{'unit':22} {'owner':9} {'exposure (worst host)':>22}  target {TARGET}")
    for row in summary:
        verdict = {True: "met", False: "MISSED", None: "-"}[row["meets_target"]]
        print(f"{row['unit']:22} {row['owner']:9} {row['worst_exposure']:>22}  {verdict}")
    path = write_report("hardening", {"target": TARGET, "public_role_consul_unit": 9.3,
                                      "summary": summary, "hosts": rows})
    plot(summary, OUT / "hardening.png")
    print(f"wrote {path} and {OUT / 'hardening.png'}")
    return 0 if all(r["meets_target"] is not False for r in summary) else 1


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['unit']} ({r['owner']})" for r in summary] + ["public role's consul unit"]
    values = [r["worst_exposure"] for r in summary] + [9.3]
    colors = ["tab:green" if r["owner"] == "ours" else "tab:grey" for r in summary] + ["tab:red"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(labels, values, color=colors)
    ax.axvline(TARGET, color="black", linestyle="--", linewidth=1)
    ax.set_xlim(0, 10)
    ax.set_xlabel("systemd-analyze security exposure (0 best, 10 worst); target 3.0")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
