"""The edge, end to end: nginx + oauth2-proxy in front of the Consul UI and
API, signed in through the real OpenID Connect provider (Ory Hydra on the IdP
host) by a real browser (Debian's chromium driven by Playwright), and the
public web service balanced over the healthy instances.

Everything goes through the edge's published port on this machine's
loopback, as a person's browser would.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from base64 import b64decode
from pathlib import Path

import pytest
import requests
from conftest import SECRETS, api_call, consul_api, get_host, group, secret, token_secret

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))
import lab_browser
from lab_browser import session_cookie, trusted_browser

CA = SECRETS / "web-ca" / "web-ca.pem"
# A key of the test's own, so nothing depends on what other tests wrote.
KV_KEY = "edge-test/secret-value"
ARTIFACTS = Path(os.environ.get("TEST_RESULTS_DIR", "/tmp"))


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
    with trusted_browser(CA) as chromium:
        yield chromium


def sign_in(browser, base_url: str, user: str, start: str = "/ui/"):
    return lab_browser.sign_in(browser, base_url, user, password(user), start)


def session_of(context) -> requests.Session:
    """A requests session carrying the browser's edge session."""
    session = anonymous()
    # As a header: the cookie jar will not send host-only cookies of "localhost".
    session.headers["Cookie"] = session_cookie(context)
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


def test_without_a_session_ui_redirects_to_sign_in_and_api_answers_401(base_url, kv_value):
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

    for path in (f"/v1/kv/{KV_KEY}?raw", "/v1/agent/self", "/v1/catalog/services"):
        answer = client.get(base_url + path, allow_redirects=False)
        assert answer.status_code == 401, path
        assert answer.json()["error"] == "not signed in", path
        assert kv_value not in answer.text
    kv_page = client.get(f"{base_url}/ui/dc1/kv", allow_redirects=False)
    assert kv_page.status_code == 302 and kv_value not in kv_page.text


@pytest.fixture(scope="module", autouse=True)
def kv_value() -> str:
    """Written on a server with the management token, removed afterwards."""
    server = get_host(group("consul_servers")[0])
    value = f"value-{uuid.uuid4().hex}"
    assert consul_api(server, f"kv/{KV_KEY}", "PUT", value) is True
    yield value
    consul_api(server, f"kv/{KV_KEY}", "DELETE")


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


def test_reader_reads_kv_but_cannot_write(reader, admin, base_url, kv_value):
    read = reader.get(f"{base_url}/v1/kv/{KV_KEY}?raw")
    assert read.status_code == 200 and read.text == kv_value
    write = reader.put(f"{base_url}/v1/kv/edge-test/reader", data="no")
    assert write.status_code == 403, write.text
    assert admin.put(f"{base_url}/v1/kv/edge-test/admin", data="yes").json() is True
    assert reader.get(f"{base_url}/v1/kv/edge-test/admin?raw").text == "yes"
    assert admin.delete(f"{base_url}/v1/kv/edge-test/admin").json() is True


def test_blocking_queries_pass_through_the_edge(reader, admin, base_url, kv_value):
    """The UI watches with blocking queries (?index=&wait=): nginx must hold
    them open, and hand back the answer when the value changes."""
    first = reader.get(f"{base_url}/v1/kv/{KV_KEY}")
    index = first.headers["X-Consul-Index"]
    started = time.monotonic()
    unchanged = reader.get(f"{base_url}/v1/kv/{KV_KEY}?index={index}&wait=3s", timeout=30)
    waited = time.monotonic() - started
    assert unchanged.status_code == 200 and waited >= 2.5, (unchanged.status_code, waited)

    def change_soon() -> None:
        time.sleep(1)
        admin.put(f"{base_url}/v1/kv/{KV_KEY}", data=kv_value + "-changed")

    writer = threading.Thread(target=change_soon)
    writer.start()
    changed = reader.get(f"{base_url}/v1/kv/{KV_KEY}?index={index}&wait=60s", timeout=90)
    writer.join()
    admin.put(f"{base_url}/v1/kv/{KV_KEY}", data=kv_value)
    assert changed.status_code == 200
    assert int(changed.headers["X-Consul-Index"]) > int(index)
    assert b64decode(changed.json()[0]["Value"]).decode() == kv_value + "-changed"


def test_user_in_no_group_gets_403(browser, base_url, kv_value):
    context, page = sign_in(browser, base_url, "outsider")
    try:
        assert "No access to Consul" in page.content()
        api = session_of(context).get(f"{base_url}/v1/kv/{KV_KEY}?raw", allow_redirects=False)
        assert api.status_code in (401, 403)
        assert kv_value not in api.text
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
    statuses = {how: answer.status_code for how, answer in attempts.items()}
    print(f"client token statuses: {statuses}")
    assert all(code in (400, 403) for code in statuses.values()), statuses
    # ACL reads need more than the reader's token and less than the
    # bootstrap token: denied, so the ?token= never reached Consul.
    # (Statuses first: an assertion must never print a URL with the token.)
    acl_read = reader.get(f"{base_url}/v1/acl/tokens?token={bootstrap}").status_code
    kv_read = reader.get(f"{base_url}/v1/kv/{KV_KEY}?raw&token={bootstrap}").status_code
    assert (acl_read, kv_read) == (403, 200)
    anonymous_try = anonymous().put(url, data="x", headers={"X-Consul-Token": bootstrap}).status_code
    assert anonymous_try == 401
    server = get_host(group("consul_servers")[0])
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
    nginx_pid = edge.check_output("systemctl show --value -p MainPID nginx.service")
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
    # Both upstream changes were reloads: the same nginx master serves.
    assert edge.check_output("systemctl show --value -p MainPID nginx.service") == nginx_pid


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
