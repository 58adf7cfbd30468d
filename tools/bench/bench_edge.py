#!/usr/bin/env python3
"""`make bench-edge`: what the edge costs.

Signs in at the lab's edge as the reader (Debian's chromium through the real
IdP), then runs tools/bench/probes/edge_probe.py on edge-1 and compares, on one
clock: `/` through nginx vs one app instance directly; a Consul KV read
through nginx (TLS, auth_request to the token exchange, the session's own
token) vs straight to the local agent; and the two auth steps alone:
oauth2-proxy's /oauth2/auth (what nginx asked before per-session tokens) and
the exchange's /token with a warm session (what it asks now). Then the first
request of --fresh new sessions (the exchange's login at Consul), p50/p99.
Prints a table and writes docs/bench/edge.json and docs/bench/edge.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import concurrent_sign_in
import lab_inventory
import localhost_names
from benchlib import (
    LAB_SECRETS,
    MANAGEMENT_TOKEN,
    OUT,
    REPO,
    SERVERS,
    ScratchToken,
    consul_api,
    container_ip,
    percentile,
    run,
    write_report,
)
from lab_browser import session_cookie, sign_in, trusted_browser

localhost_names.install()
PROBE = REPO / "tools" / "bench" / "probes" / "edge_probe.py"
KEEPALIVE = REPO / "tools" / "bench" / "probes" / "keepalive.py"
SECRETS = LAB_SECRETS
# The Consul UI's own origin at the edge (the lab's edge_ui_url).
BASE_URL = "https://consul.localhost:8443"
LABELS = {
    "app_direct": "/ straight to the first app host",
    "edge_root": "/ through nginx (TLS)",
    "consul_direct": "KV read straight to the agent",
    "edge_api": "KV read through nginx + auth_request",
    "auth_request_alone": "oauth2-proxy /oauth2/auth alone",
    "exchange_alone": "token exchange /token alone (warm)",
    "edge_root_reloading": "/ through nginx, reloaded every 0.5 s",
}


def summarise(raw: dict) -> dict:
    summary = {}
    fresh = raw.pop("first_request")
    for name, result in raw.items():
        ms = [v * 1000 for v in result["samples_s"]]
        summary[name] = {"label": LABELS[name], "requests": len(ms),
                         **{f"p{p}_ms": round(percentile(ms, p), 2) for p in (50, 95, 99)},
                         **result["throughput"]}
    root, app = summary["edge_root"]["p50_ms"], summary["app_direct"]["p50_ms"]
    summary["_derived"] = {
        "nginx_added_at_median_ms": round(root - app, 2),
        "nginx_added_at_median_pct": round(100 * (root - app) / app, 1),
        "edge_api_added_at_median_ms": round(summary["edge_api"]["p50_ms"]
                                             - summary["consul_direct"]["p50_ms"], 2),
        "auth_request_p50_ms": summary["auth_request_alone"]["p50_ms"],
    }
    # Under load (several connections at once), as the target asks.
    root, app = summary["edge_root"]["loaded_p50_ms"], summary["app_direct"]["loaded_p50_ms"]
    summary["_derived"].update({
        "loaded_connections": summary["edge_root"]["connections"],
        "nginx_added_at_loaded_median_ms": round(root - app, 2),
        "nginx_added_at_loaded_median_pct": round(100 * (root - app) / app, 1),
        "edge_api_added_at_loaded_median_ms": round(summary["edge_api"]["loaded_p50_ms"]
                                                    - summary["consul_direct"]["loaded_p50_ms"], 2),
    })
    # The warm exchange replaces oauth2-proxy's call in nginx's auth_request
    # (the exchange asks oauth2-proxy again only every recheck interval).
    summary["_derived"].update({
        "exchange_added_at_median_ms": round(summary["exchange_alone"]["p50_ms"]
                                             - summary["auth_request_alone"]["p50_ms"], 2),
        "exchange_added_at_loaded_median_ms": round(summary["exchange_alone"]["loaded_p50_ms"]
                                                    - summary["auth_request_alone"]["loaded_p50_ms"], 2),
    })
    first = [v * 1000 for v in fresh["first_s"]]
    second = [v * 1000 for v in fresh["second_s"]]
    summary["_first_request"] = {
        "sessions": len(first),
        "first_p50_ms": round(percentile(first, 50), 2), "first_p99_ms": round(percentile(first, 99), 2),
        "second_p50_ms": round(percentile(second, 50), 2), "second_p99_ms": round(percentile(second, 99), 2),
        "first_samples_ms": [round(v, 3) for v in first]}
    return summary


def fresh_sessions(count: int, user: str, password: str) -> list[str]:
    """Cookies of `count` new sessions, each signed in by the browser."""
    cookies = []
    with trusted_browser(SECRETS / "web-ca" / "web-ca.pem") as browser:
        for _ in range(count):
            # Back to a page that asks nothing of the exchange: the first
            # request of the session is the probe's.
            context, _ = sign_in(browser, BASE_URL, user, password, start="/oauth2/start?rd=%2Fsigned-in")
            cookies.append(session_cookie(context))
            context.close()
    return cookies


def sign_out_all(cookies: list[str]) -> None:
    import requests

    for cookie in cookies:
        requests.post(f"{BASE_URL}/oauth2/sign_out", headers={"Cookie": cookie, "Origin": BASE_URL},
                      allow_redirects=False, verify=str(SECRETS / "web-ca" / "web-ca.pem"), timeout=10)


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in summary if not n.startswith("_")]
    fig, (lat, rps) = plt.subplots(1, 2, figsize=(12, 4.2))
    y = range(len(names))
    lat.barh(y, [summary[n]["p50_ms"] for n in names], label="p50")
    lat.barh(y, [summary[n]["p99_ms"] - summary[n]["p50_ms"] for n in names],
             left=[summary[n]["p50_ms"] for n in names], alpha=0.4, label="p50 -> p99")
    lat.set_yticks(list(y), [summary[n]["label"] for n in names], fontsize=8)
    lat.set_xlabel("latency, one keep-alive connection (ms)")
    lat.legend(fontsize=8)
    lat.grid(axis="x", alpha=0.3)
    rps.barh(y, [summary[n]["requests_per_s"] for n in names], color="tab:green")
    rps.set_yticks(list(y), [""] * len(names))
    rps.set_xlabel(f"requests/s ({summary[names[0]]['connections']} connections)")
    rps.grid(axis="x", alpha=0.3)
    fig.suptitle("The edge: nginx, auth_request and Consul, measured on edge-1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="sequential requests per scenario")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--user", default="reader")
    parser.add_argument("--concurrent-sign-ins", type=int, default=20,
                        help="people signing in at the same moment, for the sign-in's p50/p99")
    parser.add_argument("--fresh", type=int, default=20, help="new sessions for the first-request figures")
    args = parser.parse_args(argv)

    password = (SECRETS / "lab_idp" / "users" / args.user).read_text(encoding="utf-8").strip()
    with trusted_browser(SECRETS / "web-ca" / "web-ca.pem") as browser:
        context, _ = sign_in(browser, BASE_URL, args.user, password)
        cookie = session_cookie(context)
        context.close()
    print(f"signing in {args.fresh} fresh sessions ...", flush=True)
    fresh = fresh_sessions(args.fresh, args.user, password)
    edge = lab_inventory.first("edge")
    run("docker", "cp", str(PROBE), f"{edge}:/root/edge_probe.py")
    run("docker", "cp", str(KEEPALIVE), f"{edge}:/root/keepalive.py")
    # A key of the benchmark's own: the reads never depend on what the lab holds.
    kv_key = "bench/edge-probe"
    consul_api(SERVERS[0], f"/v1/kv/{kv_key}", MANAGEMENT_TOKEN, "PUT", "a value of the edge benchmark")
    with ScratchToken(edge, "ui-read-only") as token_file:
        settings = {"cookie": cookie, "kv_key": kv_key, "ui_host": urlsplit(BASE_URL).hostname,
                    "consul_token_file": token_file,
                    "app": f"{container_ip(lab_inventory.first('app'))}:8080", "count": args.count,
                    "warmup": args.warmup, "connections": args.connections, "seconds": args.seconds,
                    "fresh_cookies": fresh}
        try:
            probe = subprocess.run(["docker", "exec", "-i", edge, "python3", "/root/edge_probe.py"],
                                   input=json.dumps(settings), check=False, capture_output=True, text=True)
        finally:
            sign_out_all([cookie, *fresh])
    consul_api(SERVERS[0], f"/v1/kv/{kv_key}", MANAGEMENT_TOKEN, "DELETE")
    if probe.returncode != 0:
        raise SystemExit(f"the probe on {edge} failed (rc {probe.returncode}):\n{probe.stderr[-3000:]}")
    summary = summarise(json.loads(probe.stdout))

    print(f"{'scenario':40} {'p50 ms':>8} {'p99 ms':>8} | {'loaded p50':>10} {'loaded p99':>10} "
          f"{'req/s':>8} {'failed':>6} {'retried':>7}")
    for name, row in summary.items():
        if not name.startswith("_"):
            print(f"{row['label']:40} {row['p50_ms']:8} {row['p99_ms']:8} | "
                  f"{row['loaded_p50_ms']:10} {row['loaded_p99_ms']:10} {row['requests_per_s']:8} "
                  f"{row['failed']:6} {row['retried']:7}")
    reloading = summary["edge_root_reloading"]
    print(f"\nwith {reloading['reloads']} nginx reloads during the loaded run: "
          f"{reloading['retried']} requests met a connection closed by a reload and were retried "
          f"once (RFC 9112 9.3.1), {reloading['failed']} failed")
    derived = summary["_derived"]
    print(f"\nnginx adds {derived['nginx_added_at_median_ms']} ms at the median of / "
          f"({derived['nginx_added_at_median_pct']} %) on one idle connection; with "
          f"{derived['loaded_connections']} connections {derived['nginx_added_at_loaded_median_ms']} "
          f"ms ({derived['nginx_added_at_loaded_median_pct']} %, target under 10 %)")
    print(f"through the edge a KV read takes {derived['edge_api_added_at_median_ms']} ms more at "
          f"the median; the auth_request call alone takes {derived['auth_request_p50_ms']} ms")
    added, loaded = derived["exchange_added_at_median_ms"], derived["exchange_added_at_loaded_median_ms"]
    print(f"the warm token exchange instead of oauth2-proxy's call: {added:+} ms at the median idle, "
          f"{loaded:+} ms with {derived['loaded_connections']} connections (target: at most +0.5 ms)")
    first = summary["_first_request"]
    print(f"first request of a session (login at Consul), {first['sessions']} sessions: "
          f"p50 {first['first_p50_ms']} ms, p99 {first['first_p99_ms']} ms; its second request "
          f"p50 {first['second_p50_ms']} ms")
    # People signing in at once: the edge's start, the IdP, the callback, the
    # first API request. Another person than the probe's, whose logins this
    # run has spent.
    signing_in = concurrent_sign_in.run(BASE_URL, SECRETS / "web-ca" / "web-ca.pem", SECRETS,
                                        ["admin", "operator"], count=args.concurrent_sign_ins)
    summary["_concurrent_sign_in"] = {key: signing_in[key] for key in
                                      ("attempts", "failed", "p50_s", "p99_s", "max_s")}
    print(f"{signing_in['attempts']} sign-ins at once: {signing_in['failed']} failed, "
          f"p50 {signing_in['p50_s']} s, p99 {signing_in['p99_s']} s")

    kept = {k: v for k, v in settings.items() if k not in ("cookie", "fresh_cookies")}
    write_report("edge", {"settings": kept,
                          "summary": summary})
    plot(summary, OUT / "edge.png")
    print(f"\nwrote {OUT / 'edge.json'} and {OUT / 'edge.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
