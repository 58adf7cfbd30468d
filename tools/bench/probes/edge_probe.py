#!/usr/bin/env python3
"""Time requests at the edge host itself (standard library only), so that
nginx, oauth2-proxy, the token exchange, Consul and an app instance are
compared on one clock
with no docker NAT in the path. Reads its settings as JSON on stdin (the
session cookie among them, so it shows in no process list) and prints one
JSON document: per scenario, sequential latencies over one keep-alive
connection, and requests per second and latency with several connections.
Connections are reused the way browsers reuse them (keepalive.py, copied
next to this file): a request that meets a connection nginx closed at a
reload is retried once and counted as `retried`, apart from `failed`. The
last scenario reloads nginx every half second while it runs.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import threading
import time

from keepalive import KeepAliveClient

NGINX_CA = "/etc/nginx/tls/ca.pem"


def connect(scenario: dict) -> http.client.HTTPConnection:
    if scenario["tls"]:
        context = ssl.create_default_context(cafile=NGINX_CA)
        context.check_hostname = False  # the certificate names localhost; we dial 127.0.0.1
        return http.client.HTTPSConnection(scenario["host"], scenario["port"], context=context,
                                           timeout=10)
    return http.client.HTTPConnection(scenario["host"], scenario["port"], timeout=10)


def one(client: KeepAliveClient, scenario: dict) -> float:
    started = time.perf_counter()
    status = client.request("GET", scenario["path"], headers=scenario.get("headers", {}))[0]
    elapsed = time.perf_counter() - started
    if status != scenario.get("status", 200):
        raise RuntimeError(f"{scenario['name']}: HTTP {status}")
    return elapsed


def sequential(scenario: dict, count: int, warmup: int) -> list[float]:
    client = KeepAliveClient(lambda: connect(scenario))
    for _ in range(warmup):
        one(client, scenario)
    samples = [one(client, scenario) for _ in range(count)]
    client.close()
    return samples


def throughput(scenario: dict, connections: int, seconds: float,
               reload_every: float | None = None) -> dict:
    done, failed, retried = [0] * connections, [0] * connections, [0] * connections
    latencies: list[list[float]] = [[] for _ in range(connections)]
    stop = time.perf_counter() + seconds
    reloads = 0

    def worker(index: int) -> None:
        client = KeepAliveClient(lambda: connect(scenario))
        while time.perf_counter() < stop:
            try:
                latencies[index].append(one(client, scenario))
                done[index] += 1
            except Exception:  # every exception is a failed request, never a silent end
                failed[index] += 1
        retried[index] = client.retries
        client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    while reload_every and time.perf_counter() < stop:
        time.sleep(reload_every)
        subprocess.run(["systemctl", "reload", "nginx.service"], check=True)
        reloads += 1
    for thread in threads:
        thread.join()
    loaded = sorted(v for per_connection in latencies for v in per_connection)
    result = {"connections": connections, "seconds": seconds,
              "requests_per_s": round(sum(done) / seconds, 1), "failed": sum(failed),
              "retried": sum(retried),
              "loaded_p50_ms": round(1000 * loaded[len(loaded) // 2], 2),
              "loaded_p99_ms": round(1000 * loaded[int(len(loaded) * 0.99)], 2)}
    if reload_every:
        result["reloads"] = reloads
    return result


def first_requests(scenario: dict, cookies: list[str]) -> dict:
    """The first request of each fresh session (the exchange's login at
    Consul) and its second one, on one warm keep-alive connection."""
    client = KeepAliveClient(lambda: connect(scenario))
    one(client, {**scenario, "path": "/", "status": 200, "headers": {}})
    first, second = [], []
    for cookie in cookies:
        headers = {**scenario["headers"], "Cookie": cookie}
        first.append(one(client, {**scenario, "headers": headers}))
        second.append(one(client, {**scenario, "headers": headers}))
    client.close()
    return {"first_s": first, "second_s": second}


def main() -> int:
    settings = json.load(sys.stdin)
    with open(settings["consul_token_file"], encoding="utf-8") as handle:
        token = handle.read().strip()
    cookie = {"Cookie": settings["cookie"]}
    kv = f"/v1/kv/{settings['kv_key']}?raw"
    app_host, app_port = settings["app"].rsplit(":", 1)
    scenarios = [
        {"name": "app_direct", "tls": False, "host": app_host, "port": int(app_port), "path": "/"},
        {"name": "edge_root", "tls": True, "host": "127.0.0.1", "port": 443, "path": "/"},
        {"name": "consul_direct", "tls": False, "host": "127.0.0.1", "port": 8500, "path": kv,
         "headers": {"X-Consul-Token": token}},
        # The Consul UI's origin: its own host name on the same port.
        {"name": "edge_api", "tls": True, "host": "127.0.0.1", "port": 443, "path": kv,
         "headers": {**cookie, "Host": settings["ui_host"]}},
        {"name": "auth_request_alone", "tls": False, "host": "127.0.0.1", "port": 4180,
         "path": "/oauth2/auth", "headers": cookie, "status": 202},
        # What nginx's auth_request asks now: the token exchange, session warm.
        {"name": "exchange_alone", "tls": False, "host": "127.0.0.1", "port": 4181,
         "path": "/token", "headers": cookie, "status": 200},
    ]
    results = {}
    for scenario in scenarios:
        results[scenario["name"]] = {
            "samples_s": sequential(scenario, settings["count"], settings["warmup"]),
            "throughput": throughput(scenario, settings["connections"], settings["seconds"]),
        }
    reloading = dict(scenarios[1], name="edge_root_reloading")
    results["edge_root_reloading"] = {
        "samples_s": sequential(reloading, settings["count"], settings["warmup"]),
        "throughput": throughput(reloading, settings["connections"], settings["seconds"],
                                 reload_every=0.5),
    }
    results["first_request"] = first_requests(scenarios[3], settings["fresh_cookies"])
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
