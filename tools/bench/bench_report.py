#!/usr/bin/env python3
"""Write docs/bench/REPORT.md from the JSON reports in docs/bench/.

Run by `make bench` and `make chaos` after their measurements; it only reads
what they wrote, so it can be re-run at any time. A report that is missing
says which make target measures it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import OUT


def load(name: str) -> dict | None:
    path = OUT / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def verdict(ok: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "-"}[ok]


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def missing(name: str, target: str) -> list[str]:
    return [f"Not measured yet: `make {target}` writes `{name}.json`.", ""]


def per_client_cost(runs: list[dict]) -> float | None:
    """Least-squares slope of the fresh converge time over the client count."""
    if len(runs) < 2:
        return None
    xs = [r["clients"] for r in runs]
    ys = [r["fresh"]["wall_s"] for r in runs]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs)


def per_variant(target: dict | float | None, variant: str) -> float | None:
    """A target per strategy; older reports held one number, for "after"."""
    if isinstance(target, dict):
        return target.get(variant)
    return target if variant == "after" else None


def converge_section(data: dict | None, summary: list) -> list[str]:
    out = ["## 1. Converge time", ""]
    if not data:
        return out + missing("converge", "bench-converge")
    out += ["Wall time of `ansible-playbook` from the start to the recap. *Fresh*: new "
            "containers (the benchmark cluster also starts without secrets, so the CA, "
            "certificates and tokens are made too); *re-run*: the same again, which must "
            "report changed=0. *Task rounds*: task and handler banners, each one a step "
            "every host of its play waits on. ACL (deny by default) and TLS are on. Variants: "
            + "; ".join(f"*{k}*: {v}" for k, v in data["variants"].items()) + ".", ""]
    rows = []
    for scope, label in (("cluster", "3 servers + 2 clients, consul.yml"),
                         ("lab", "whole lab, site.yml")):
        for run in data[scope]:
            rows.append([f"{label} ({run['fresh']['hosts']} hosts)", run["variant"],
                         f"{run['fresh']['wall_s']} s",
                         f"{run['rerun']['wall_s']} s", run["rerun"]["changed"],
                         run["rerun"].get("task_rounds", "-"), run["rerun"]["tasks_ok"]])
    out += table(["scope", "variant", "fresh", "re-run", "re-run changed", "re-run task rounds",
                  "re-run host-tasks ok"], rows)
    targets = data.get("targets", {})
    for run in data["cluster"]:
        variant = run["variant"]
        fresh_t = per_variant(targets.get("cluster_fresh_s"), variant)
        rerun_t = per_variant(targets.get("cluster_rerun_s"), variant)
        if fresh_t:
            summary.append([f"Converge 3+2, fresh ({variant})", f"{run['fresh']['wall_s']} s",
                            f"< {fresh_t} s", verdict(run["fresh"]["wall_s"] < fresh_t)])
        if rerun_t:
            summary.append([f"Converge 3+2, re-run ({variant})", f"{run['rerun']['wall_s']} s "
                            f"(changed={run['rerun']['changed']})", f"< {rerun_t} s, changed=0",
                            verdict(run["rerun"]["wall_s"] < rerun_t and run["rerun"]["changed"] == 0)])
    after = next((r for r in data["cluster"] if r["variant"] == "after"), None)
    if after:
        out += ["", "Slowest tasks of the fresh 3+2 run (after):", ""]
        out += table(["task", "s"], [[t["task"], t["s"]] for t in after["fresh"]["slowest_tasks"]])
    for run in data["lab"]:
        if run["variant"] == "after":
            rounds = run["rerun"].get("task_rounds")
            limit_s, limit_rounds = targets.get("lab_rerun_s"), targets.get("lab_rerun_task_rounds")
            summary.append(["Converge whole lab, fresh / re-run",
                            f"{run['fresh']['wall_s']} s / {run['rerun']['wall_s']} s "
                            f"(changed={run['rerun']['changed']}, {rounds} task rounds)",
                            f"re-run < {limit_s} s, <= {limit_rounds} rounds" if limit_s else "-",
                            verdict(run["rerun"]["wall_s"] < limit_s and rounds is not None
                                    and rounds <= limit_rounds and run["rerun"]["changed"] == 0)
                            if limit_s else "-"])
    return [*out, "", "![converge](converge.png)", ""]


def scale_section(data: dict | None, summary: list) -> list[str]:
    out = ["## 5. Scale: 3 servers and up to 20 clients", ""]
    if not data:
        return out + missing("scale", "bench-scale")
    out += [f"consul.yml on new containers ({data['variant']}). *Settle*: from the end of the "
            "converge until every member is alive and every check passes.", ""]
    out += table(["clients", "fresh converge", "re-run", "settle after converge"],
                 [[r["clients"], f"{r['fresh']['wall_s']} s", f"{r['rerun']['wall_s']} s",
                   f"{r['settle_after_converge_s']} s"] for r in data["runs"]])
    runs, targets = data["runs"], data.get("targets", {})
    slope = per_client_cost(runs)
    if slope is not None:
        out += ["", f"Cost per added client (least-squares slope of the fresh converge over "
                f"{', '.join(str(r['clients']) for r in runs)} clients): {slope:.2f} s."]
        limit = targets.get("scale_per_client_s")
        summary.append(["Scale: cost per added client, fresh", f"{slope:.2f} s",
                        f"< {limit} s" if limit else "-", verdict(slope < limit) if limit else "-"])
    last = runs[-1]
    limit = targets.get("scale_20_fresh_s") if last["clients"] == 20 else None
    summary.append([f"Scale: 3 servers + {last['clients']} clients, fresh / all alive+healthy after",
                    f"{last['fresh']['wall_s']} s / {last['settle_after_converge_s']} s",
                    f"fresh < {limit} s" if limit else "-",
                    verdict(last["fresh"]["wall_s"] < limit) if limit else "-"])
    return [*out, "", "![scale](scale.png)", ""]


def propagation_section(data: dict | None, summary: list) -> list[str]:
    out = ["## 2. Config propagation (KV write -> served by every instance)", ""]
    if not data:
        return out + missing("propagation", "bench-propagation")
    out += [data.get("setup", ""), ""]
    rows = [[name, r["changes"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["requests"],
             r["failed_requests"]] for name, r in data["results"].items()]
    out += table(["approach", "changes", "p50 ms", "p95 ms", "p99 ms", "requests", "failed"], rows)
    ours = data["results"]["ours"]
    summary.append(["Propagation p99 (ours) / failed requests",
                    f"{ours['p99_ms']} ms / {ours['failed_requests']}", "-", "-"])
    return [*out, "", "![propagation](propagation.png)", ""]


def edge_section(data: dict | None, summary: list) -> list[str]:
    out = ["## 3. The edge: nginx and auth_request", ""]
    if not data:
        return out + missing("edge", "bench-edge")
    s = data["summary"]
    d = s["_derived"]
    rows = [[r["label"], r["p50_ms"], r["p99_ms"], r.get("loaded_p50_ms", "-"),
             r.get("loaded_p99_ms", "-"), r["requests_per_s"], r.get("failed", "-"),
             r.get("retried", "-")]
            for name, r in s.items() if not name.startswith("_")]
    out += [f"Measured on edge-1 (client, nginx and oauth2-proxy share its 2 cores with the "
            f"lab). Idle: {data['settings']['count']} sequential keep-alive requests; loaded: "
            f"{data['settings']['connections']} connections for {data['settings']['seconds']} s.",
            ""]
    out += table(["scenario", "idle p50 ms", "idle p99 ms", "loaded p50 ms", "loaded p99 ms",
                  "req/s (loaded)", "failed", "retried once"], rows)
    if "edge_root_reloading" in s:
        r = s["edge_root_reloading"]
        out += ["", f"With {r['reloads']} nginx reloads during the loaded run, {r['retried']} "
                f"requests met a keep-alive connection that the reload closed before any "
                f"response byte and were retried once, as browsers do (RFC 9112 9.3.1); "
                f"{r['failed']} failed."]
        summary.append(["Edge: requests failed while nginx reloads every 0.5 s",
                        f"{r['failed']} failed, {r['retried']} retried once", "0 failed",
                        verdict(r["failed"] == 0)])
    out += ["", f"nginx adds {d['nginx_added_at_median_ms']} ms ({d['nginx_added_at_median_pct']} %)"
            f" at the idle median of `/`"]
    if "nginx_added_at_loaded_median_pct" in d:
        out[-1] += (f", {d['nginx_added_at_loaded_median_ms']} ms "
                    f"({d['nginx_added_at_loaded_median_pct']} %) under load")
        summary.append(["Edge: nginx added at the median of `/` (loaded)",
                        f"{d['nginx_added_at_loaded_median_ms']} ms "
                        f"({d['nginx_added_at_loaded_median_pct']} %)", "< 10 %",
                        verdict(d["nginx_added_at_loaded_median_pct"] < 10)])
    out[-1] += (f"; a `/v1/` call through the edge costs {d['edge_api_added_at_median_ms']} ms "
                f"more at the median, of which auth_request is about {d['auth_request_p50_ms']} ms.")
    if "exchange_added_at_median_ms" in d:
        f = s["_first_request"]
        out += ["", f"Per-session tokens: nginx's auth_request asks the token exchange, which with a "
                f"warm session answers from its cache, where it asked oauth2-proxy before. The "
                f"exchange's /token instead of oauth2-proxy's /oauth2/auth: "
                f"{d['exchange_added_at_median_ms']:+} ms at the idle median, "
                f"{d['exchange_added_at_loaded_median_ms']:+} ms under load. The first request of a "
                f"session (the login at Consul) over {f['sessions']} new sessions: p50 "
                f"{f['first_p50_ms']} ms, p99 {f['first_p99_ms']} ms (its second request: p50 "
                f"{f['second_p50_ms']} ms)."]
        idle, loaded = d["exchange_added_at_median_ms"], d["exchange_added_at_loaded_median_ms"]
        worst = max(idle, loaded)
        summary.append(["Edge: warm token exchange vs oauth2-proxy's call (idle / loaded median)",
                        f"{idle:+} / {loaded:+} ms",
                        "<= +0.5 ms", verdict(worst <= 0.5) + " (the auth step alone)"])
        summary.append(["Edge: first request of a session (login at Consul), p50 / p99",
                        f"{f['first_p50_ms']} / {f['first_p99_ms']} ms", "reported", "-"])
    if "_concurrent_sign_in" in s:
        c = s["_concurrent_sign_in"]
        out += ["", f"{c['attempts']} people signing in at the same moment (the edge's start, the "
                f"IdP's login and consent, the callback, the first API request; "
                f"`tools/lab/concurrent_sign_in.py`): {c['failed']} failed, a sign-in took p50 "
                f"{c['p50_s']} s, p99 {c['p99_s']} s."]
        summary.append([f"Edge: {c['attempts']} sign-ins at once, failed / p50 / p99",
                        f"{c['failed']} / {c['p50_s']} s / {c['p99_s']} s", "0 failed",
                        verdict(c["failed"] == 0)])
    before = load("edge_one_origin")
    if before:
        was = before["summary"]["edge_api"]["p50_ms"]
        now = s["edge_api"]["p50_ms"]
        change = round(100 * (now - was) / was, 1)
        out += ["", f"Before the UI moved to an origin of its own (one origin, sessions keyed on "
                f"cookie bytes; `edge_one_origin.json`, measured {before['measured_at']} on the same "
                f"machine): a warm `/v1/` KV read through the edge took p50 {was} ms idle, "
                f"{before['summary']['edge_api']['loaded_p50_ms']} ms loaded; now {now} ms and "
                f"{s['edge_api']['loaded_p50_ms']} ms ({change:+} % at the idle median)."]
        summary.append(["Edge: warm `/v1/` median, two origins vs one", f"{was} -> {now} ms "
                        f"({change:+} %)", "<= +10 %", verdict(change <= 10)])
    return [*out, "", "![edge](edge.png)", ""]


def failover_section(data: dict | None, summary: list) -> list[str]:
    out = ["## 4. Leader failover under KV writes", ""]
    if not data:
        return out + missing("failover", "bench-failover")
    s = data["summary"]
    out += [data["setup"] + ".", ""]
    out += table(["kills", "p50", "p99", "max", "writes", "failed (not acknowledged)",
                  "acknowledged lost"],
                 [[s["kills"], f"{s['p50_s']} s", f"{s['p99_s']} s", f"{s['max_s']} s",
                   f"{s['writes']} ({s['write_rate_per_s']}/s)", s["writes_failed"],
                   s["acked_writes_lost"]]])
    out += ["", "Errors of the failed writes (they were never acknowledged): "
            + "; ".join(f"`{k}`: {v}" for k, v in s.get("failed_write_errors", {}).items()), ""]
    seen = [r["new_leader_seen_s"] for r in data["rounds"] if r["new_leader_seen_s"] is not None]
    if seen:
        out += [f"A surviving server named the new leader {min(seen)}-{max(seen)} s after the "
                "kill: raft's followers wait a random 1-2 x HeartbeatTimeout (1 s at "
                "raft_multiplier = 1) before they stand for election.", ""]
    summary.append(["Failover: kill -> first acknowledged write, p50 / p99",
                    f"{s['p50_s']} s / {s['p99_s']} s", "p99 < 2 s", verdict(s["p99_s"] < 2.0)])
    return [*out, "![failover](failover.png)", ""]


def handover_section(data: dict | None, summary: list) -> list[str]:
    out = ["## 4b. Planned restarts of the leader under KV writes", ""]
    if not data:
        return out + missing("handover", "bench-handover")
    s = data["summary"]
    out += [data["setup"] + ". Unavailability: the longest time without an acknowledged "
            "write, from the restart until autopilot is healthy again.", ""]
    out += table(["way", "rounds", "p50", "p99", "max", "failed writes", "leader moved"],
                 [[way, s[way]["rounds"], f"{s[way]['p50_s']} s", f"{s[way]['p99_s']} s",
                   f"{s[way]['max_s']} s", s[way]["failed_writes"],
                   f"{s[way]['leader_moved']} of {s[way]['rounds']}"]
                  for way in ("handover", "plain")])
    out += ["", f"{s['writes']} writes; {s['acked_writes_lost']} acknowledged writes lost.", ""]
    summary.append(["Planned leader restart (hand-over): writes unavailable, p50 / p99",
                    f"{s['handover']['p50_s']} s / {s['handover']['p99_s']} s "
                    f"(without: {s['plain']['p99_s']} s p99)",
                    f"p99 < {s['target_p99_s']} s",
                    verdict(s["handover"]["p99_s"] < s["target_p99_s"]
                            and s["acked_writes_lost"] == 0)])
    return [*out, "![handover](handover.png)", ""]


def hardening_section(data: dict | None, summary: list) -> list[str]:
    out = ["## 6. Hardening (`systemd-analyze security`)", ""]
    if not data:
        return out + missing("hardening", "bench-hardening")
    out += table(["unit", "owner", "exposure (worst host)", f"target {data['target']}"],
                 [[r["unit"], r["owner"], r["worst_exposure"], verdict(r["meets_target"])]
                  for r in data["summary"]])
    ours = [r for r in data["summary"] if r["owner"] == "ours"]
    summary.append(["Hardening: worst exposure of a unit we ship",
                    max(r["worst_exposure"] for r in ours), "<= 3.0",
                    verdict(all(r["meets_target"] for r in ours))])
    public = data["public_role_consul_unit"]
    return [*out, "", f"The most-used public Consul role's unit scores {public}.", "",
            "![hardening](hardening.png)", ""]


def chaos_section(data: dict | None, summary: list) -> list[str]:
    out = ["## Chaos drills (`make chaos`)", ""]
    if not data:
        return out + missing("chaos", "chaos")
    out += table(["drill", "result", "s", "what was checked"],
                 [[d["drill"], "pass" if d["passed"] else "**FAIL**", d["duration_s"],
                   "<br>".join(f"{'✔' if c['ok'] else '✘'} {c['check']}"
                               + (f" ({c['seen']})" if c["seen"] else "") for c in d["checks"])]
                  for d in data["drills"]])
    passed = sum(d["passed"] for d in data["drills"])
    summary.append(["Chaos drills passed", f"{passed} of {len(data['drills'])}", "all",
                    verdict(passed == len(data["drills"]))])
    return [*out, "", f"Run at {data['measured_at']}.", ""]


def idp_login_section(data: dict | None, summary: list) -> list[str]:
    out = ["## The lab IdP's login: unknown vs known names", ""]
    if not data:
        return out + missing("idp_login", "bench-idp-login")
    s = data["summary"]
    out += table(["name", "attempts", "p50 ms", "p95 ms", "stdev ms"],
                 [[name.replace("_", " "), s[name]["attempts"], s[name]["p50_ms"],
                   s[name]["p95_ms"], s[name]["stdev_ms"]]
                  for name in ("known_user_wrong_password", "unknown_user")])
    summary.append(["IdP login: unknown minus known name, median", f"{s['gap_p50_ms']} ms",
                    "within the spread", verdict(s["gap_within_spread"])])
    return [*out, ""]


def wan_section(data: dict | None, summary: list) -> list[str]:
    out = ["## WAN: ACL replication lag, dc1 to dc2", ""]
    if not data:
        return out + missing("wan", "bench-wan")
    results = data["results"]
    out += [data["setup"] + ". Consul replicates at most about one round a second (a token "
            "bucket with a small burst): tokens made back to back wait for it.", ""]
    out += table(["series", "tokens", "usable in dc2", "timeouts", "p50 ms", "p99 ms", "max ms",
                  "create p50 ms"],
                 [[name.replace("_", " "), r["rounds"], r["usable"], r["timeouts"], r["p50_ms"],
                   r["p99_ms"], r["max_ms"], r["create_p50_ms"]] for name, r in results.items()])
    for name, r in results.items():
        summary.append([f"token made in dc1 until usable in dc2 ({name.replace('_', ' ')}), p50 / p99",
                        f"{r['p50_ms']} / {r['p99_ms']} ms", "reported", verdict(r["timeouts"] == 0)])
    return [*out, ""]


def main() -> int:
    reports = {n: load(n) for n in ("converge", "propagation", "edge", "failover", "handover",
                                    "scale",
                                    "hardening", "chaos", "idp_login", "wan")}
    summary: list[list[object]] = []
    sections = (converge_section(reports["converge"], summary)
                + propagation_section(reports["propagation"], summary)
                + edge_section(reports["edge"], summary)
                + failover_section(reports["failover"], summary)
                + handover_section(reports["handover"], summary)
                + scale_section(reports["scale"], summary)
                + hardening_section(reports["hardening"], summary)
                + idp_login_section(reports["idp_login"], summary)
                + wan_section(reports["wan"], summary)
                + chaos_section(reports["chaos"], summary))
    dated = [r for r in reports.values() if r and "machine" in r and "cpu" in r["machine"]]
    latest = max(dated, key=lambda r: r["measured_at"]) if dated else None
    lines = ["# Benchmarks and chaos drills", "",
             "Written by `tools/bench/bench_report.py` from the JSON files next to it "
             "(`make bench`, `make chaos`). Numbers are from one run each; nothing here is a "
             "test assertion.", ""]
    if latest:
        m = latest["machine"]
        lines += [f"**Machine**: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
                  f"kernel {m['kernel']}, docker {m['docker']}, Python {m['python']}. "
                  "The lab is systemd containers on this one machine (dc1: 3 servers, app-1, "
                  "app-2, edge-1, idp-1; dc2: 1 server, an app host), so every figure shares the "
                  "same 2 cores.", ""]
        lines += ["Measured at: " + ", ".join(
            f"{name} {r.get('measured_at', r.get('date', '?'))}"
            for name, r in reports.items() if r), ""]
    lines += ["## Summary", "", *table(["figure", "measured", "target", "verdict"], summary)]
    lines += ["", *sections]
    (OUT / "REPORT.md").write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {OUT / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
