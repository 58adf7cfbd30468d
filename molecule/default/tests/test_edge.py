"""The edge, end to end: nginx + oauth2-proxy in front of the Consul UI and
API, signed in through the real OpenID Connect provider (Ory Hydra on the IdP
host) by a real browser (Debian's chromium driven by Playwright), and the
public web service balanced over the healthy instances.

Everything goes through the edge's published port on this machine's
loopback, as a person's browser would.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from base64 import b64decode
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from conftest import (
    CA,
    EdgeLoad,
    api_call,
    consul_api,
    edge_request,
    get_host,
    group,
    record_figures,
    restarts_in,
    run_playbook,
    secret,
    token_secret,
)
from playwright.sync_api import Error as PlaywrightError

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools" / "lab"))
import lab_browser
from lab_browser import session_cookie

# A key of the test's own, so nothing depends on what other tests wrote.
KV_KEY = "edge-test/secret-value"
ARTIFACTS = Path(os.environ.get("TEST_RESULTS_DIR", "/tmp"))


@pytest.fixture(scope="module")
def idp():
    return get_host(group("lab_idp")[0])


@pytest.fixture(scope="module")
def apps():
    return [get_host(name) for name in group("app")]


def password(user: str) -> str:
    return secret(f"lab_idp/users/{user}")


def anonymous() -> requests.Session:
    session = requests.Session()
    session.verify = str(CA)
    # Else REQUESTS_CA_BUNDLE (and proxy settings) of the environment win.
    session.trust_env = False
    return session


def sign_in(browser, base_url: str, user: str, start: str = "/ui/"):
    return lab_browser.sign_in(browser, base_url, user, password(user), start)


def session_of(context) -> requests.Session:
    """A requests session carrying the browser's edge session."""
    session = anonymous()
    # As a header: the cookie jar will not send host-only cookies of "localhost".
    session.headers["Cookie"] = session_cookie(context)
    return session


@pytest.fixture(scope="module")
def reader(browser, ui_url):
    context, _ = sign_in(browser, ui_url, "reader")
    yield session_of(context)
    context.close()


@pytest.fixture(scope="module")
def admin(browser, ui_url):
    context, _ = sign_in(browser, ui_url, "admin")
    yield session_of(context)
    context.close()


def test_without_a_session_ui_redirects_to_sign_in_and_api_answers_401(ui_url, kv_value):
    client = anonymous()
    ui = client.get(f"{ui_url}/ui/", allow_redirects=False)
    assert ui.status_code == 302
    assert ui.headers["Location"].startswith("/oauth2/start?rd=/ui/")
    start = client.get(ui_url + ui.headers["Location"], allow_redirects=False)
    assert start.status_code == 302
    config = get_host(group("edge")[0]).file("/etc/oauth2-proxy/oauth2-proxy.cfg").content_string
    issuer = next(line.split('"')[1] for line in config.splitlines()
                  if line.startswith("oidc_issuer_url"))
    assert start.headers["Location"].startswith(f"{issuer}/oauth2/auth?")

    for path in (f"/v1/kv/{KV_KEY}?raw", "/v1/agent/self", "/v1/catalog/services"):
        answer = client.get(ui_url + path, allow_redirects=False)
        assert answer.status_code == 401, path
        assert answer.json()["error"] == "not signed in", path
        assert kv_value not in answer.text
    kv_page = client.get(f"{ui_url}/ui/dc1/kv", allow_redirects=False)
    assert kv_page.status_code == 302 and kv_value not in kv_page.text


@pytest.fixture(scope="module", autouse=True)
def kv_value() -> str:
    """Written on a server with the management token, removed afterwards."""
    server = get_host(group("consul_servers")[0])
    value = f"value-{uuid.uuid4().hex}"
    assert consul_api(server, f"kv/{KV_KEY}", "PUT", value) is True
    yield value
    consul_api(server, f"kv/{KV_KEY}", "DELETE")


def test_admin_signs_in_with_a_real_browser_and_sees_the_services(browser, ui_url):
    context, page = sign_in(browser, ui_url, "admin", start="/ui/dc1/services")
    try:
        # The UI under its Content-Security-Policy: every violation is both
        # logged to the console and fired as an event; collect both.
        refused = []
        page.on("console", lambda message: refused.append(message.text)
                if "Content Security Policy" in message.text else None)
        context.add_init_script("window.__cspViolations = []; document.addEventListener("
                                "'securitypolicyviolation', e => window.__cspViolations.push("
                                "e.violatedDirective + ' ' + e.blockedURI));")
        page.reload()
        page.get_by_text("python-web-service").first.wait_for(timeout=20000)
        for view in ("/ui/dc1/kv", "/ui/dc1/nodes", "/ui/dc1/services/python-web-service/instances"):
            page.goto(ui_url + view)
            page.wait_for_load_state("networkidle")
            refused.extend(page.evaluate("window.__cspViolations"))
        assert refused == [], refused
        # Control: an inline script is refused, and seen as refused.
        with pytest.raises(PlaywrightError, match="Content Security Policy"):
            page.add_script_tag(content="window.__inlineRan = true;")
        assert page.evaluate("window.__inlineRan === undefined")
        assert page.evaluate("window.__cspViolations.length") >= 1
        page.goto(ui_url + "/ui/dc1/services")
        page.get_by_text("python-web-service").first.wait_for(timeout=20000)
        shot = ARTIFACTS / "edge-admin-services.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert page.url.startswith(f"{ui_url}/ui/dc1/services")
        cookie = next(c for c in context.cookies() if c["name"].startswith(lab_browser.SESSION_COOKIE))
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        # Host-only: the UI's origin and nothing else (no Domain attribute).
        assert cookie["domain"] == urlsplit(ui_url).hostname and cookie["path"] == "/", cookie["domain"]
    finally:
        context.close()


def test_reader_reads_kv_but_cannot_write(reader, admin, ui_url, kv_value):
    read = reader.get(f"{ui_url}/v1/kv/{KV_KEY}?raw")
    assert read.status_code == 200 and read.text == kv_value
    write = reader.put(f"{ui_url}/v1/kv/edge-test/reader", data="no")
    assert write.status_code == 403, write.text
    assert admin.put(f"{ui_url}/v1/kv/edge-test/admin", data="yes").json() is True
    assert reader.get(f"{ui_url}/v1/kv/edge-test/admin?raw").text == "yes"
    assert admin.delete(f"{ui_url}/v1/kv/edge-test/admin").json() is True


def test_blocking_queries_pass_through_the_edge(reader, admin, ui_url, kv_value):
    """The UI watches with blocking queries (?index=&wait=): nginx must hold
    them open, and hand back the answer when the value changes."""
    first = reader.get(f"{ui_url}/v1/kv/{KV_KEY}")
    index = first.headers["X-Consul-Index"]
    started = time.monotonic()
    unchanged = reader.get(f"{ui_url}/v1/kv/{KV_KEY}?index={index}&wait=3s", timeout=30)
    waited = time.monotonic() - started
    assert unchanged.status_code == 200 and waited >= 2.5, (unchanged.status_code, waited)

    def change_soon() -> None:
        time.sleep(1)
        admin.put(f"{ui_url}/v1/kv/{KV_KEY}", data=kv_value + "-changed")

    writer = threading.Thread(target=change_soon)
    writer.start()
    changed = reader.get(f"{ui_url}/v1/kv/{KV_KEY}?index={index}&wait=60s", timeout=90)
    writer.join()
    admin.put(f"{ui_url}/v1/kv/{KV_KEY}", data=kv_value)
    assert changed.status_code == 200
    assert int(changed.headers["X-Consul-Index"]) > int(index)
    assert b64decode(changed.json()[0]["Value"]).decode() == kv_value + "-changed"


def test_user_in_no_group_gets_403(browser, ui_url, kv_value):
    context, page = sign_in(browser, ui_url, "outsider")
    try:
        assert "No access to Consul" in page.content()
        api = session_of(context).get(f"{ui_url}/v1/kv/{KV_KEY}?raw", allow_redirects=False)
        assert api.status_code in (401, 403)
        assert kv_value not in api.text
    finally:
        context.close()


# --- client-supplied tokens, tried as an attacker would -----------------------

def token_name_spellings() -> dict[str, str]:
    """Every way to spell the query parameter name "token" that Go's
    url.ParseQuery decodes to it, and near misses an attacker would try."""
    word = "token"
    spellings = {"plain": word, "upper": word.upper(), "title": word.title()}
    for index, letter in enumerate(word):
        for case, code in (("lower", f"%{ord(letter):02x}"), ("upper", f"%{ord(letter):02X}")):
            spellings[f"letter {index} {case} hex"] = word[:index] + code + word[index + 1:]
    spellings["every letter"] = "".join(f"%{ord(c):02x}" for c in word)
    spellings["every letter, upper T"] = "%54%4F%4B%45%4E"
    spellings["double encoded"] = "%2574oken"
    spellings["plus"] = "tok+en"
    spellings["trailing encoded space"] = "token%20"
    spellings["encoded nul"] = "token%00"
    return spellings


def token_queries(token: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    for label, name in token_name_spellings().items():
        queries[f"{label}: alone"] = f"{name}={token}"
        queries[f"{label}: after others"] = f"dc=dc1&recurse&{name}={token}"
        queries[f"{label}: before others"] = f"{name}={token}&index=1&wait=1s"
        queries[f"{label}: repeated"] = f"{name}={token}&{name}={token}&{name}={token}"
        queries[f"{label}: after an empty plain one"] = f"token=&{name}={token}"
    queries["semicolon separator"] = f"dc=dc1;token={token}"
    queries["fragment before"] = f"dc=dc1#&token={token}"
    queries["fragment after"] = f"token={token}#x"
    queries["no value then encoded"] = f"token&%74oken={token}"
    queries["oversize name"] = f"{'a' * 6000}&token={token}"
    return queries


def token_headers(token: str) -> dict[str, list[tuple[str, str]]]:
    headers = {f"X-Consul-Token as {name}": [(name, token)]
               for name in ("X-Consul-Token", "x-consul-token", "X-CONSUL-TOKEN", "x-cOnSuL-tOkEn")}
    headers["X-Consul-Token twice"] = [("X-Consul-Token", token), ("X-Consul-Token", token)]
    headers["X_Consul_Token (underscores)"] = [("X_Consul_Token", token)]
    headers["X-Consul-Token with spaces"] = [("X-Consul-Token", f"  {token}  ")]
    for scheme in ("Bearer", "bearer", "BEARER", "Bearer  "):
        headers[f"Authorization {scheme!r}"] = [("Authorization", f"{scheme} {token}")]
    headers["Authorization twice"] = [("Authorization", f"Bearer {token}")] * 2
    headers["authorization lower case"] = [("authorization", f"Bearer {token}")]
    return headers


def consul_query_token_warnings(edge) -> int:
    """Consul logs a warning for every request that used ?token=."""
    return int(edge.check_output(
        "journalctl -u consul.service -o cat --no-pager | grep -c 'token query parameter' || true"))


@pytest.fixture
def stolen_token():
    """A management token the reader got hold of: made for the test (so no
    platform secret is ever sent to the edge), expiring on its own, deleted
    after."""
    server = get_host(group("consul_servers")[0])
    token = consul_api(server, "acl/token", "PUT", json.dumps({
        "Description": "edge smuggling test", "ExpirationTTL": "15m",
        "Policies": [{"Name": "global-management"}]}))
    yield token["SecretID"]
    consul_api(server, f"acl/token/{token['AccessorID']}", "DELETE")


def test_no_client_token_reaches_consul_in_any_spelling(reader, edge, ui_url, stolen_token):
    """The reader's session plus a management token, smuggled every way we
    know: nothing may write what the reader cannot, nothing may read ACLs."""
    bootstrap = stolen_token
    cookie = [("Cookie", reader.headers["Cookie"])]
    key = f"edge-test/stolen-{uuid.uuid4().hex}"
    warnings_before = consul_query_token_warnings(edge)
    statuses: dict[str, tuple[int, int]] = {}
    for label, query in token_queries(bootstrap).items():
        write = edge_request(ui_url, "PUT", f"/v1/kv/{key}?{query}", cookie, b"x")[0]
        acl = edge_request(ui_url, "GET", f"/v1/acl/tokens?{query}", cookie)[0]
        statuses[f"query {label}"] = (write, acl)
    for label, extra in token_headers(bootstrap).items():
        write = edge_request(ui_url, "PUT", f"/v1/kv/{key}", cookie + extra, b"x")[0]
        acl = edge_request(ui_url, "GET", "/v1/acl/tokens", cookie + extra)[0]
        statuses[f"header {label}"] = (write, acl)
    for label, extra in {"token cookie": f"token={bootstrap}",
                         "X-Consul-Token cookie": f"X-Consul-Token={bootstrap}",
                         "consul token cookie": f"consul:token={bootstrap}"}.items():
        jar = [("Cookie", f"{reader.headers['Cookie']}; {extra}")]
        statuses[f"cookie {label}"] = (edge_request(ui_url, "PUT", f"/v1/kv/{key}", jar, b"x")[0],
                                       edge_request(ui_url, "GET", "/v1/acl/tokens", jar)[0])
    granted = {how: codes for how, codes in statuses.items()
               if codes[0] not in (400, 403) or codes[1] not in (400, 403)}
    refused = sum(1 for codes in statuses.values() if codes[0] == 400)
    print(f"{len(statuses)} smuggling attempts: {refused} refused by nginx (400), "
          f"{len(statuses) - refused} denied by Consul with the reader's token (403)")
    record_figures("token smuggling", attempts=len(statuses), refused_by_nginx_400=refused,
                   denied_by_consul_403=len(statuses) - refused)
    # Statuses only: an assertion must never print a URL with the token.
    assert granted == {}
    server = get_host(group("consul_servers")[0])
    assert api_call(server, f"kv/{key}")[0] == 404
    # Every query spelling was refused before Consul: none reached it.
    assert all(codes == (400, 400) for how, codes in statuses.items() if how.startswith("query"))
    assert consul_query_token_warnings(edge) == warnings_before
    # The reader's own rights still work through the same path.
    assert edge_request(ui_url, "GET", f"/v1/kv/{KV_KEY}?raw", cookie)[0] == 200
    anonymous_try = anonymous().put(f"{ui_url}/v1/kv/{key}", data="x",
                                    headers={"X-Consul-Token": bootstrap}).status_code
    assert anonymous_try == 401


def test_token_self_hands_each_session_only_its_own_token(reader, admin, ui_url):
    """With a token per session, /v1/acl/token/self may answer: it is the
    caller's own. No spelling of the path shows another session's token or
    a platform token."""
    own = {}
    for name, session in (("reader", reader), ("admin", admin)):
        answer = session.get(f"{ui_url}/v1/acl/token/self")
        assert answer.status_code == 200, answer.text[:200]
        own[name] = answer.json()
    assert own["reader"]["AccessorID"] != own["admin"]["AccessorID"]
    platform = [token_secret("management")]
    for name, session in (("reader", reader), ("admin", admin)):
        other = own["admin" if name == "reader" else "reader"]["SecretID"]
        for path in ("/v1/acl/token/self", "/v1/acl/token/%73elf", "//v1/acl/token/self",
                     "/v1/acl/token/self/", "/v1/acl/token/./self", "/v1/agent/self", "/v1/acl/tokens",
                     "/v1/acl/policies", "/v1/kv/?recurse"):
            status, body, _ = edge_request(ui_url, "GET", path, [("Cookie", session.headers["Cookie"])])
            text = body.decode("utf-8", "replace")
            assert other not in text and not any(t in text for t in platform), path
            if "SecretID" in text:
                assert status == 200 and own[name]["SecretID"] in text, path


def reload_nginx(edge) -> None:
    """Reload nginx and wait until no worker of the old config accepts
    connections any more. systemctl returns once the master has the signal;
    the master starts the new workers before it tells the old ones to stop,
    and until then an old worker still takes new connections with the old
    config (CI saw one answer that way). A told worker is titled "is
    shutting down" and has closed its listening sockets; it may live on for
    minutes while a long-polling request it serves finishes, so waiting for
    it to exit would be waiting for the wrong thing."""
    def accepting_workers() -> set[str]:
        lines = edge.check_output("ps -eo pid=,args=").splitlines()
        return {line.split(None, 1)[0] for line in lines
                if line.split(None, 1)[1:] == ["nginx: worker process"]}

    old = accepting_workers()
    edge.check_output("systemctl reload nginx.service")
    wait_for(lambda: not (accepting_workers() & old), 60, "no old nginx worker accepting after the reload")


def test_an_answer_without_a_token_gets_403_from_nginx(reader, edge, ui_url):
    """Fail closed: should the exchange's answer ever carry no token (here
    nginx is made to read a header the exchange does not send), nginx answers
    403 itself; the request is never proxied with an empty token, which
    Consul would serve as anonymous."""
    conf = "/etc/nginx/nginx.conf"
    cookie = [("Cookie", reader.headers["Cookie"])]
    edge.check_output(f"cp -p {conf} /root/nginx.conf.saved")
    try:
        edge.check_output("sed -i 's/\\$upstream_http_x_consul_token/$upstream_http_x_no_such_header/' "
                          + conf)
        reload_nginx(edge)
        wait_for(lambda: edge_request(ui_url, "GET", f"/v1/kv/{KV_KEY}?raw", cookie)[0] == 403,
                 15, "nginx refuses the answer without a token")
        for path in (f"/v1/kv/{KV_KEY}?raw", "/v1/agent/self", "/ui/"):
            status, body, _ = edge_request(ui_url, "GET", path, cookie)
            assert status == 403 and b"no Consul token for this session" in body, path
        # The journal takes the log lines a moment after the answers.
        wait_for(lambda: access_log(edge, 3).count("upstream=unix:/run/nginx/no-token.sock") == 3,
                 10, "the last three requests went to nginx's own 403")
    finally:
        edge.check_output(f"cp -p /root/nginx.conf.saved {conf}")
        reload_nginx(edge)
    wait_for(lambda: edge_request(ui_url, "GET", f"/v1/kv/{KV_KEY}?raw", cookie)[0] == 200,
             15, "the session's token is used again")


UI_HEADERS = {"content-security-policy", "referrer-policy", "cross-origin-opener-policy",
              "x-frame-options"}


def test_edge_answers_carry_hsts_and_nosniff_and_the_ui_its_policies(reader, base_url, ui_url, idp):
    cookie = [("Cookie", reader.headers["Cookie"])]
    targets = {
        "public /": (base_url, "/", []),
        "401 JSON": (ui_url, "/v1/agent/self", []),
        "sign-in redirect": (ui_url, "/ui/", []),
        "Consul UI": (ui_url, "/ui/", cookie),
        "400 token": (ui_url, "/v1/kv/x?%74oken=1", cookie),
        "own token": (ui_url, "/v1/acl/token/self", cookie),
        "sign-out form": (ui_url, "/oauth2/sign_out", cookie),
    }
    for label, (origin, target, sent) in targets.items():
        answer = edge_request(origin, "GET", target, sent)[2]
        assert answer.get("strict-transport-security") == "max-age=31536000", label
        assert answer.get("x-content-type-options") == "nosniff", label
        if origin == ui_url:
            assert set(answer) >= UI_HEADERS, (label, sorted(answer))
            assert "frame-ancestors 'none'" in answer["content-security-policy"], label
    idp.run("systemctl stop hydra.service")
    try:
        page = anonymous().get(f"{ui_url}/ui/")
        assert page.status_code == 503
        assert page.headers.get("Strict-Transport-Security") == "max-age=31536000"
        assert page.headers.get("X-Content-Type-Options") == "nosniff"
        assert "frame-ancestors 'none'" in page.headers.get("Content-Security-Policy", "")
    finally:
        idp.run("systemctl start hydra.service")
    wait_for(lambda: anonymous().get(f"{ui_url}/oauth2/start?rd=/ui/", allow_redirects=False)
             .status_code == 302, 60, "sign-in works again")


def test_public_health_shows_no_internal_detail(apps, base_url):
    server = get_host(group("consul_servers")[0])
    key = "kv/python-web-service/greeting"
    status, before = api_call(server, f"{key}?raw")
    client = anonymous()
    try:
        # A control character: every instance refuses it and reports stale.
        assert consul_api(server, key, "PUT", "bad\u0001greeting") is True
        wait_for(lambda: all(json.loads(app.check_output("curl -s localhost:8080/health"))
                             .get("error") for app in apps), 30, "every instance is stale")
        local = json.loads(apps[0].check_output("curl -s localhost:8080/health"))
        assert local["status"] == "stale" and local["error"]
        for _ in range(6):
            answer = client.get(f"{base_url}/health")
            assert answer.status_code == 200
            assert set(answer.json()) == {"status", "config_version"}
            assert answer.json()["status"] == "stale"
            assert "/etc/" not in answer.text and "rror" not in answer.text
    finally:
        if status == 200:
            consul_api(server, key, "PUT", before)
        else:
            consul_api(server, key, "DELETE")
    wait_for(lambda: client.get(f"{base_url}/health").json()["status"] == "ok", 30, "ok again")


def upstream_lines(edge) -> str:
    return edge.file("/etc/nginx/consul-edge/upstreams/python-web-service.conf").content_string


def access_log(edge, lines: int) -> str:
    """The last lines of nginx's access log (in the journal)."""
    return edge.check_output(f"journalctl -t nginx_access -n {int(lines)} -o cat --no-pager")


def answered_by(edge, count: int) -> list[str]:
    log = access_log(edge, count)
    return [line.split("upstream=")[1].split()[0] for line in log.splitlines() if "upstream=" in line]


def test_root_balances_across_the_app_instances(edge, apps, base_url):
    client = anonymous()
    for _ in range(20):
        assert client.get(f"{base_url}/").status_code == 200
    expected = {app.ansible.get_variables().get("ansible_host") or
                app.interface("eth0").addresses[0] for app in apps}

    def used() -> set[str]:
        return {addr.rsplit(":", 1)[0] for addr in answered_by(edge, 20)}

    # The journal takes the log lines a moment after the answers.
    wait_for(lambda: used() == expected, 10, f"answered by every instance of {expected}")


def wait_for(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


HOSTILE_INSTANCES = {
    "space": ("10.0.0.7 backup", 8080),
    "semicolon": ("10.0.0.7; server 203.0.113.66:80", 8080),
    "braces": ("10.0.0.7:8080; } server { listen 9999; } upstream x {", 8080),
    "quotes": ('"10.0.0.7"', 8080),
    "newline": ("10.0.0.7:8080;\nserver 203.0.113.66:80", 8080),
    "hash": ("10.0.0.7:8080; # ", 8080),
    "very long": ("1" * 4096, 8080),
    "host name": ("evil.example.com", 8080),
    "loopback": ("127.0.0.1", 8500),
    "port 0": ("10.0.0.7", 0),
    "port 70000": ("10.0.0.7", 70000),
}


def test_hostile_registrations_never_reach_nginx(edge, apps, base_url):
    """Anyone who may register the web service could write its Address: such
    instances are left out of the upstream (and logged with their ID), and
    / keeps answering from the real instances."""
    server = get_host(group("consul_servers")[0])
    before = upstream_lines(edge)
    since = edge.check_output("date +%s.%N")
    registered = {}
    try:
        for number, (label, (address, port)) in enumerate(HOSTILE_INSTANCES.items()):
            node, service_id = f"hostile-node-{number}", f"hostile-{number}"
            body = json.dumps({"Node": node, "Address": "192.0.2.10", "Service": {
                "ID": service_id, "Service": "python-web-service", "Address": address, "Port": port}})
            status, _ = api_call(server, "catalog/register", "PUT", body)
            if status == 200:
                registered[label] = (node, service_id)
        print(f"Consul took {len(registered)} of {len(HOSTILE_INSTANCES)} hostile registrations")
        assert len(registered) >= len(HOSTILE_INSTANCES) - 2

        def logged() -> set[str]:
            journal = edge.check_output(
                f"journalctl -u consul-template.service --since @{since} -o cat --no-pager")
            return {label for label, (_, sid) in registered.items()
                    if f'instance left out: id="{sid}"' in journal}

        wait_for(lambda: logged() == set(registered), 30, "every hostile instance is logged")
        record_figures("hostile registrations", taken_by_consul=len(registered),
                       left_out_and_logged=len(logged()))
        assert upstream_lines(edge) == before
        client = anonymous()
        assert all(client.get(f"{base_url}/").status_code == 200 for _ in range(10))
        config = edge.check_output("cat /etc/nginx/consul-edge/upstreams/*.conf")
        assert "203.0.113.66" not in config and "9999" not in config and "evil" not in config
        assert edge.run("nginx -t -q").rc == 0
    finally:
        for node, _ in registered.values():
            api_call(server, "catalog/deregister", "PUT", json.dumps({"Node": node}))


def test_stopped_instance_leaves_the_upstream_with_no_failed_request(edge, apps, base_url):
    app = apps[0]
    address = app.interface("eth0").addresses[0]
    assert address in upstream_lines(edge)
    nginx_pid = edge.check_output("systemctl show --value -p MainPID nginx.service")
    with EdgeLoad(f"{base_url}/") as load:
        # Load runs on each side of each change: a number of requests served,
        # not a time slept.
        def served_more(count: int = 20):
            mark = load.ok + len(load.failed)
            wait_for(lambda: load.ok + len(load.failed) >= mark + count, 15, f"{count} more requests")

        served_more()
        app.run("systemctl stop python-web-service.service")
        try:
            left = wait_for(lambda: address not in upstream_lines(edge), 15,
                            f"{address} leaves the nginx upstream")
            served_more()
        finally:
            app.run("systemctl start python-web-service.service")
        wait_for(lambda: address in upstream_lines(edge), 30, f"{address} comes back")
        served_more()
    print(f"instance left the upstream {left:.1f} s after it stopped; "
          f"{load.ok} requests served, {len(load.failed)} failed, "
          f"{load.retries} retried once after a reload closed their idle connection")
    record_figures("stopped instance under load", left_upstream_after_s=round(left, 1),
                   served=load.ok, failed=len(load.failed), retried_once_after_reload=load.retries)
    assert load.ok > 50
    assert load.failed == []
    # Both upstream changes were reloads: the same nginx master serves.
    assert edge.check_output("systemctl show --value -p MainPID nginx.service") == nginx_pid


def test_with_the_idp_stopped_sign_in_shows_a_clear_error_and_root_serves(idp, base_url, ui_url):
    client = anonymous()
    idp.run("systemctl stop hydra.service")
    try:
        page = client.get(f"{ui_url}/ui/")
        assert page.status_code == 503
        assert "Sign-in is unavailable" in page.text
        assert client.get(f"{base_url}/").status_code == 200
    finally:
        idp.run("systemctl start hydra.service")
    wait_for(lambda: client.get(f"{ui_url}/ui/", allow_redirects=False).status_code == 302
             and client.get(f"{ui_url}/oauth2/start?rd=/ui/", allow_redirects=False)
             .status_code == 302, 60, "sign-in works again")


def raft_leader_name(server) -> str:
    address = consul_api(server, "status/leader").rsplit(":", 1)[0]
    return next(m["Name"] for m in consul_api(server, "agent/members") if m["Addr"] == address)



def test_a_setting_that_needs_a_restart_rolls_through_the_servers_leader_last(base_url):
    """site.yml with a changed server setting on the running cluster: one
    server at a time, the raft leader last after handing leadership over,
    and `/` through the edge fails no request. The setting is put back the
    same way."""
    servers = [get_host(name) for name in group("consul_servers")]
    leader = raft_leader_name(servers[0])
    runs = []
    with EdgeLoad(f"{base_url}/") as load:
        try:
            runs.append(run_playbook("site.yml", "--tags", "consul",
                                     "-e", "consul_raft_multiplier=2"))
        finally:
            runs.append(run_playbook("site.yml", "--tags", "consul"))
    for result in runs:
        assert result.returncode == 0, result.stdout[-3000:]
    changed = restarts_in(runs[0].stdout)
    restarted = [host for task, host in changed if task == "Restart Consul on"]
    # Every server of both datacenters, dc1's leader last; dc2's only server
    # leads its own raft and has no one to hand over to.
    assert sorted(restarted) == sorted(group("consul_servers", None)), changed
    assert restarted[-1] == leader, f"the leader {leader} was not last: {restarted}"
    assert [host for task, host in changed if task.startswith("Hand")] == [leader], changed
    assert load.ok > 0 and load.failed == [], load.failed[:5]
    record_figures("restart-needing setting rolled through the servers", requests=load.ok,
                   failed=len(load.failed), retried=load.retries)
