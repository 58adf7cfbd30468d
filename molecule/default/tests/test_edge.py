"""The edge, end to end: nginx + oauth2-proxy in front of the Consul UI and
API, signed in through the real OpenID Connect provider (Ory Hydra on the IdP
host) by a real browser (Debian's chromium driven by Playwright), and the
public web service balanced over the healthy instances.

Everything goes through the edge's published port on this machine's
loopback, as a person's browser would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import SECRETS, get_host, group, secret, token_secret

CA = SECRETS / "web-ca" / "web-ca.pem"
KV_KEY = "python-web-service/greeting"
ARTIFACTS = Path(os.environ.get("TEST_RESULTS_DIR", "/tmp"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def edge():
    return get_host(group("edge")[0])


@pytest.fixture(scope="module")
def idp():
    return get_host(group("lab_idp")[0])


@pytest.fixture(scope="module")
def apps():
    return [get_host(name) for name in group("app")]


@pytest.fixture(scope="module")
def base_url(edge) -> str:
    return edge.ansible.get_variables()["edge_public_url"].rstrip("/")


def password(user: str) -> str:
    return secret(f"lab_idp/users/{user}")


def anonymous() -> requests.Session:
    session = requests.Session()
    session.verify = str(CA)
    # Else REQUESTS_CA_BUNDLE (and proxy settings) of the environment win.
    session.trust_env = False
    return session


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, trusting the lab's web CA through its own NSS
    database (as a person would import it), not by ignoring TLS errors."""
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="edge-browser-"))
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "lab-web-ca",
                    "-i", str(CA)], check=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"],
                                              env={**os.environ, "HOME": str(home)})
        yield chromium
        chromium.close()
    shutil.rmtree(home, ignore_errors=True)


def sign_in(browser, base_url: str, user: str, start: str = "/ui/"):
    """Open `start` in a new browser context and sign in through the IdP's
    form; returns (context, page) after the redirects settle."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(base_url + start)
    assert "/login" in page.url, f"expected the IdP's sign-in form, got {page.url}"
    page.fill("#username", user)
    page.fill("#password", password(user))
    page.click("#submit")
    page.wait_for_load_state("networkidle")
    return context, page


def session_of(context) -> requests.Session:
    """A requests session carrying the browser's edge cookies."""
    session = anonymous()
    # As a header: the cookie jar will not send host-only cookies of "localhost".
    session.headers["Cookie"] = "; ".join(f"{c['name']}={c['value']}" for c in context.cookies()
                                          if c["name"].startswith("_consul_edge_session"))
    return session


@pytest.fixture(scope="module")
def reader(browser, base_url):
    context, _ = sign_in(browser, base_url, "reader")
    yield session_of(context)
    context.close()


@pytest.fixture(scope="module")
def admin(browser, base_url):
    context, _ = sign_in(browser, base_url, "admin")
    yield session_of(context)
    context.close()


def test_without_a_session_ui_redirects_to_sign_in_and_api_answers_401(base_url):
    client = anonymous()
    ui = client.get(f"{base_url}/ui/", allow_redirects=False)
    assert ui.status_code == 302
    assert ui.headers["Location"].startswith("/oauth2/start?rd=/ui/")
    start = client.get(base_url + ui.headers["Location"], allow_redirects=False)
    assert start.status_code == 302
    config = get_host(group("edge")[0]).file("/etc/oauth2-proxy/oauth2-proxy.cfg").content_string
    issuer = next(line.split('"')[1] for line in config.splitlines()
                  if line.startswith("oidc_issuer_url"))
    assert start.headers["Location"].startswith(f"{issuer}/oauth2/auth?")

    greeting = token_free_greeting()
    for path in (f"/v1/kv/{KV_KEY}?raw", "/v1/agent/self", "/v1/catalog/services"):
        answer = client.get(base_url + path, allow_redirects=False)
        assert answer.status_code == 401, path
        assert answer.json()["error"] == "not signed in", path
        assert greeting not in answer.text
    kv_page = client.get(f"{base_url}/ui/dc1/kv", allow_redirects=False)
    assert kv_page.status_code == 302 and greeting not in kv_page.text


def token_free_greeting() -> str:
    """The greeting in KV, read on a server with the management token."""
    from conftest import consul_api

    server = get_host(group("consul_servers")[0])
    return consul_api(server, f"kv/{KV_KEY}?raw")


def test_admin_signs_in_with_a_real_browser_and_sees_the_services(browser, base_url):
    context, page = sign_in(browser, base_url, "admin", start="/ui/dc1/services")
    try:
        page.get_by_text("python-web-service").first.wait_for(timeout=20000)
        shot = ARTIFACTS / "edge-admin-services.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert page.url.startswith(f"{base_url}/ui/dc1/services")
        cookie = next(c for c in context.cookies() if c["name"].startswith("_consul_edge_session"))
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    finally:
        context.close()


def test_reader_reads_kv_but_cannot_write(reader, admin, base_url):
    read = reader.get(f"{base_url}/v1/kv/{KV_KEY}?raw")
    assert read.status_code == 200 and read.text == token_free_greeting()
    write = reader.put(f"{base_url}/v1/kv/edge-test/reader", data="no")
    assert write.status_code == 403, write.text
    assert admin.put(f"{base_url}/v1/kv/edge-test/admin", data="yes").json() is True
    assert reader.get(f"{base_url}/v1/kv/edge-test/admin?raw").text == "yes"
    assert admin.delete(f"{base_url}/v1/kv/edge-test/admin").json() is True


def test_user_in_no_group_gets_403(browser, base_url):
    context, page = sign_in(browser, base_url, "outsider")
    try:
        assert "No access to Consul" in page.content()
        api = session_of(context).get(f"{base_url}/v1/kv/{KV_KEY}?raw", allow_redirects=False)
        assert api.status_code in (401, 403)
        assert token_free_greeting() not in api.text
    finally:
        context.close()


def test_client_supplied_tokens_grant_nothing(reader, base_url):
    bootstrap = token_secret("management")
    url = f"{base_url}/v1/kv/edge-test/stolen"
    attempts = {
        "header": reader.put(url, data="x", headers={"X-Consul-Token": bootstrap}),
        "bearer": reader.put(url, data="x", headers={"Authorization": f"Bearer {bootstrap}"}),
        "query": reader.put(f"{url}?token={bootstrap}", data="x"),
        "query twice": reader.put(f"{url}?token={bootstrap}&token={bootstrap}", data="x"),
        "cookie": reader.put(url, data="x", headers={
            "Cookie": f"{reader.headers['Cookie']}; token={bootstrap}; X-Consul-Token={bootstrap}"}),
    }
    for how, answer in attempts.items():
        print(f"client token by {how}: {answer.status_code}")
        assert answer.status_code in (400, 403), f"{how}: {answer.status_code} {answer.text}"
    # ACL reads need more than the reader's token and less than the
    # bootstrap token: denied, so the ?token= never reached Consul.
    assert reader.get(f"{base_url}/v1/acl/tokens?token={bootstrap}").status_code == 403
    assert reader.get(f"{base_url}/v1/kv/{KV_KEY}?raw&token={bootstrap}").status_code == 200
    anonymous_try = anonymous().put(url, data="x", headers={"X-Consul-Token": bootstrap})
    assert anonymous_try.status_code == 401
    server = get_host(group("consul_servers")[0])
    from conftest import api_call

    assert api_call(server, "kv/edge-test/stolen")[0] == 404


def upstream_lines(edge) -> str:
    return edge.file("/etc/nginx/consul-edge/upstreams/python-web-service.conf").content_string


def answered_by(edge, count: int) -> list[str]:
    log = edge.check_output(f"tail -n {int(count)} /var/log/nginx/access.log")
    return [line.split("upstream=")[1].split()[0] for line in log.splitlines() if "upstream=" in line]


def test_root_balances_across_the_app_instances(edge, apps, base_url):
    client = anonymous()
    for _ in range(20):
        assert client.get(f"{base_url}/").status_code == 200
    used = {addr.rsplit(":", 1)[0] for addr in answered_by(edge, 20)}
    expected = {app.ansible.get_variables().get("ansible_host") or
                app.interface("eth0").addresses[0] for app in apps}
    assert used == expected, f"answered by {used}, instances {expected}"


class Load:
    """Steady GETs of / through the edge, counting failures."""

    def __init__(self, url: str) -> None:
        self.url, self.ok, self.failed = url, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        client = anonymous()
        while not self.stop.is_set():
            try:
                answer = client.get(self.url, timeout=5)
                if answer.status_code == 200:
                    self.ok += 1
                else:
                    self.failed.append(answer.status_code)
            except requests.RequestException as exc:
                self.failed.append(repr(exc))
            time.sleep(0.02)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def wait_for(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_stopped_instance_leaves_the_upstream_with_no_failed_request(edge, apps, base_url):
    app = apps[0]
    address = app.interface("eth0").addresses[0]
    assert address in upstream_lines(edge)
    with Load(f"{base_url}/") as load:
        time.sleep(1)
        app.run("systemctl stop python-web-service.service")
        try:
            left = wait_for(lambda: address not in upstream_lines(edge), 15,
                            f"{address} leaves the nginx upstream")
            time.sleep(1)
        finally:
            app.run("systemctl start python-web-service.service")
        wait_for(lambda: address in upstream_lines(edge), 30, f"{address} comes back")
        time.sleep(1)
    print(f"instance left the upstream {left:.1f} s after it stopped; "
          f"{load.ok} requests served, {len(load.failed)} failed")
    assert load.ok > 50
    assert load.failed == []


def test_with_the_idp_stopped_sign_in_shows_a_clear_error_and_root_serves(idp, base_url):
    client = anonymous()
    idp.run("systemctl stop hydra.service")
    try:
        page = client.get(f"{base_url}/ui/")
        assert page.status_code == 503
        assert "Sign-in is unavailable" in page.text
        assert client.get(f"{base_url}/").status_code == 200
    finally:
        idp.run("systemctl start hydra.service")
    wait_for(lambda: client.get(f"{base_url}/ui/", allow_redirects=False).status_code == 302
             and client.get(f"{base_url}/oauth2/start?rd=/ui/", allow_redirects=False)
             .status_code == 302, 60, "sign-in works again")
