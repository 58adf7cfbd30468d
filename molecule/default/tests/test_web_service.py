"""The greeting from Consul KV, end to end: consul-template renders it on
every app host, the service reloads it in place, Consul checks it and DNS
lists only the healthy instances.

Requests go from this controller straight to the app containers, so what is
measured is what a client of the service sees.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
from conftest import api_call, consul_api, get_host, group

KEY = "python-web-service/greeting"
PROPAGATION_DEADLINE = 2.0


@pytest.fixture(scope="module")
def apps():
    return [get_host(name) for name in group("app")]


@pytest.fixture(scope="module")
def urls(apps):
    return [f"http://{app.interface('eth0').addresses[0]}:8080/" for app in apps]


@pytest.fixture(scope="module")
def server():
    return get_host(group("consul_servers")[0])


def fetch(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def put_greeting(server, greeting: str) -> None:
    assert consul_api(server, f"kv/{KEY}", method="PUT", data=greeting) is True


def wait_until_served(urls: list[str], greeting: str, deadline: float) -> float:
    """Seconds until every URL serves `greeting`; fails after `deadline`."""
    start = time.monotonic()
    pending = set(urls)
    while pending:
        elapsed = time.monotonic() - start
        assert elapsed < deadline, (
            f"{sorted(pending)} still not serving {greeting!r} after {deadline} s: "
            f"{[fetch(url) for url in sorted(pending)]}")
        pending = {url for url in pending if fetch(url) != (200, greeting + "\n")}
        if pending:
            time.sleep(0.01)
    return time.monotonic() - start


def main_pid(host) -> str:
    return host.run("systemctl show --property MainPID --value python-web-service").stdout.strip()


def health(url: str) -> dict:
    return json.loads(fetch(url + "health")[1])


def test_template_renders_json_against_the_real_agent(apps, server):
    """`consul-template -dry` renders the deployed template with the deployed
    token against the real agent: the KV value, quotes and template syntax
    included, comes out as a JSON string and nothing else. (No stale reads:
    a follower may not have applied the write yet.)"""
    greeting = f'dry "run" {{{{ key "x" }}}} {uuid.uuid4().hex[:6]}'
    put_greeting(server, greeting)
    result = apps[0].run(
        "consul-template -dry -once -max-stale 0s -consul-addr 127.0.0.1:8500"
        " -consul-token-file /run/consul-template/consul-token"
        " -template /etc/consul-template.d/templates/python-web-service.ctmpl:/tmp/dry.json")
    assert result.rc == 0, result.stderr
    header, _, rendered = result.stdout.partition("\n")
    assert header == "> /tmp/dry.json"
    assert json.loads(rendered) == {"greeting": greeting}
    assert not apps[0].file("/tmp/dry.json").exists


def test_new_greeting_is_served_by_every_instance_within_2s(urls, server):
    greeting = f"Hello Consul {uuid.uuid4().hex[:8]}"
    put_greeting(server, greeting)
    wait_until_served(urls, greeting, PROPAGATION_DEADLINE)


def test_template_syntax_and_quotes_in_kv_are_served_as_text(urls, server):
    greeting = 'Hello {{ env "HOME" }} "quoted" \\ {% raw %}'
    put_greeting(server, greeting)
    wait_until_served(urls, greeting, PROPAGATION_DEADLINE)


def test_twenty_changes_under_load_fail_no_request(apps, urls, server):
    pids = [main_pid(app) for app in apps]
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def load(url: str) -> None:
        nonlocal served
        while not stop.is_set():
            try:
                status, body = fetch(url)
                if status != 200 or not body.startswith("Hello"):
                    failures.append(f"{url}: {status} {body!r}")
            except Exception as exc:  # every exception is a failed request, never a silent end
                failures.append(f"{url}: {type(exc).__name__}: {exc}")
            served += 1

    workers = [threading.Thread(target=load, args=(url,)) for url in urls for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        for change in range(20):
            greeting = f"Hello {change} {uuid.uuid4().hex[:6]}"
            put_greeting(server, greeting)
            wait_until_served(urls, greeting, PROPAGATION_DEADLINE)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == [], f"{len(failures)} of {served} requests failed: {failures[:5]}"
    assert served > 100
    # Reloaded in place: the same processes served all along.
    assert [main_pid(app) for app in apps] == pids


def test_bad_value_keeps_the_last_good_greeting(apps, urls, server):
    good = f"Hello good {uuid.uuid4().hex[:6]}"
    put_greeting(server, good)
    wait_until_served(urls, good, PROPAGATION_DEADLINE)
    previous_error = None
    for bad in ["", "x" * 2000, "bell \a and escape \x1b"]:
        put_greeting(server, bad)

        def refused(previous=previous_error):
            # Each instance names this value's fault, not the previous one's.
            states = [json.loads(app.check_output("curl -s http://127.0.0.1:8080/health")) for app in apps]
            fresh = all(st["status"] == "stale" and st.get("error") and st["error"] != previous
                        for st in states)
            return states if fresh else None

        states = wait_for(refused, timeout=15)
        assert states, f"the instances did not refuse {bad[:20]!r}"
        previous_error = states[0]["error"]
        for url in urls:
            assert fetch(url) == (200, good + "\n")
            # From another host: the status, never the reason.
            assert health(url) == {"status": "stale", "config_version": health(url)["config_version"]}
    journal = apps[0].run("journalctl -u python-web-service --since -2min --no-pager").stdout
    assert "rejected, still serving version" in journal
    put_greeting(server, good + " again")
    wait_until_served(urls, good + " again", PROPAGATION_DEADLINE)
    assert all(health(url)["status"] == "ok" for url in urls)


def instance_addresses(host) -> list[str]:
    result = host.run("getent ahostsv4 python-web-service.service.consul")
    return sorted({line.split()[0] for line in result.stdout.splitlines()})


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.5):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(interval)


def test_stopped_instance_turns_critical_and_leaves_dns(apps, server):
    first, second = apps
    addresses = {app: app.interface("eth0").addresses[0] for app in apps}
    assert wait_for(lambda: instance_addresses(second) == sorted(addresses.values()))
    first.run_test("systemctl stop python-web-service")
    try:
        def check_status():
            checks = consul_api(server, "health/checks/python-web-service")
            return {c["Node"]: c["Status"] for c in checks}
        statuses = wait_for(lambda: (s := check_status()).get(first.backend.host) == "critical"
                            and s)
        assert statuses == {first.backend.host: "critical", second.backend.host: "passing"}
        for resolver in apps:
            assert wait_for(lambda r=resolver: instance_addresses(r) == [addresses[second]])
    finally:
        first.run_test("systemctl start python-web-service")
    assert wait_for(lambda: instance_addresses(first) == sorted(addresses.values()))
    status, _ = api_call(first, "agent/health/service/id/python-web-service",
                         token=f"python-web-service-{first.backend.host}")
    assert status == 200
