"""The edge as a security boundary (docs/security.md), tried as an attacker
would, each table with a control case that must succeed:

- a rogue web service instance, registered by an app host with its own
  token, tries to steer nginx and to reach the UI's session;
- one session spelled many ways stays one session and one Consul token, and
  ends for every spelling at sign-out, also across a restart of the exchange;
- floods of junk sign-outs and session checks leave the exchange's memory
  bounded;
- upstream addresses outside the declared networks, in every notation, never
  reach nginx;
- sign-out is a same-origin POST only.

Everything a browser would send goes through the edge's published port.
"""

from __future__ import annotations

import json
import re
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests
from conftest import (
    CA,
    api_call,
    consul_api,
    edge_request,
    get_host,
    group,
    record_figures,
    secret,
    wait_for,
)
from lab_browser import SESSION_COOKIE, session_cookie, sign_in

ROGUE_PORT = 18099
ROGUE_ID = "rogue-instance"
INTERNAL_LOCATIONS = ["/_edge/token", "/_edge/sign-out", "/_edge/issuer", "/_edge/401.json",
                      "/_edge/403.html", "/oauth2/auth", "/oauth2/callback", "@signin", "/v1/agent/self",
                      "/ui/"]


@pytest.fixture(scope="module")
def server():
    return get_host(group("consul_servers")[0])


def client() -> requests.Session:
    session = requests.Session()
    session.verify = str(CA)
    session.trust_env = False
    return session


def signed_in(browser, ui_url: str, user: str):
    """(context, Cookie header value) of a fresh browser sign-in."""
    context, _ = sign_in(browser, ui_url, user, secret(f"lab_idp/users/{user}"),
                         start="/oauth2/start?rd=%2Fui%2F")
    cookie = session_cookie(context, ui_url)
    assert cookie, f"{user} has no session cookie after signing in"
    return context, cookie


def tokens_of(server, user: str) -> set[str]:
    """Accessor IDs of the sign-in tokens Consul holds for `user`."""
    method = get_host(group("edge")[0]).ansible.get_variables()["edge_token_exchange_auth_method"]
    return {t["AccessorID"] for t in consul_api(server, f"acl/tokens?authmethod={method}")
            if f'"user":"{user}"' in t.get("Description", "")}


# --- a rogue instance of the web service ---------------------------------------

ROGUE_SERVER = """
import http.server, itertools, sys
locations = sys.argv[2].split(",")
ui = sys.argv[3]
turn = itertools.count()
class Rogue(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok"); return
        where = locations[next(turn) % len(locations)]
        self.send_response(200)
        self.send_header("X-Rogue", "1")
        self.send_header("X-Accel-Redirect", where)
        self.send_header("X-Accel-Buffering", "no")
        self.send_header("X-Accel-Expires", "3600")
        self.send_header("X-Accel-Limit-Rate", "1")
        self.send_header("X-Accel-Charset", "utf-16")
        self.send_header("Set-Cookie", "__Host-consul_edge_session=rogue; Path=/; Secure; HttpOnly")
        self.send_header("Set-Cookie", "__Host-consul_edge_session_0=rogue; Path=/; Secure")
        host = ui.split("//", 1)[1].split(":")[0]
        self.send_header("Set-Cookie", f"__Host-consul_edge_session_1=rogue; Domain={host}; Path=/; Secure")
        self.send_header("Set-Cookie", f"consul_edge_session=rogue; Domain={host}; Path=/")
        self.send_header("Location", ui + "/ui/")
        self.send_header("Strict-Transport-Security", "max-age=0")
        self.end_headers()
        self.wfile.write(b"rogue answer " + where.encode())
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Rogue).serve_forever()
"""


@pytest.fixture
def rogue(edge, ui_url):
    """A real HTTP server on an app host, registered as the web service with
    that host's own token (what a compromised app host can do)."""
    app = get_host(group("app")[0])
    app.check_output("mkdir -p /root/rogue && cat > /root/rogue/server.py << 'EOF'\n"
                     + textwrap.dedent(ROGUE_SERVER) + "EOF")
    app.check_output(f"systemd-run --unit {ROGUE_ID} /usr/bin/python3 /root/rogue/server.py "
                     f"{ROGUE_PORT} {','.join(INTERNAL_LOCATIONS)} {ui_url}")
    registration = json.dumps({"ID": ROGUE_ID, "Name": "python-web-service", "Port": ROGUE_PORT,
                               "Check": {"HTTP": f"http://127.0.0.1:{ROGUE_PORT}/health",
                                         "Interval": "1s"}})
    register = ("curl -sS -o /dev/null -w '%{http_code}' -X PUT --data-binary @- "
                "-H \"X-Consul-Token: $(cat /etc/consul-tokens/python-web-service.token)\" "
                "http://127.0.0.1:8500/v1/agent/service/register")
    status = app.run(f"printf %s '{registration}' | {register}").stdout
    upstreams = "/etc/nginx/consul-edge/upstreams/python-web-service.conf"
    try:
        assert status == "200", f"the app host's own token could not register the instance: {status}"
        wait_for(lambda: f":{ROGUE_PORT} " in edge.file(upstreams).content_string, 30,
                 "the rogue instance is an nginx upstream (its address is in the declared network)")
        yield app
    finally:
        app.run("curl -sS -X PUT -H \"X-Consul-Token: $(cat /etc/consul-tokens/python-web-service.token)\" "
                f"http://127.0.0.1:8500/v1/agent/service/deregister/{ROGUE_ID}")
        app.run(f"systemctl stop {ROGUE_ID}")
        wait_for(lambda: f":{ROGUE_PORT} " not in edge.file(upstreams).content_string, 30,
                 "the rogue instance left the upstream")


def test_a_rogue_instance_never_steers_nginx_nor_reaches_the_ui_session(rogue, browser, server,
                                                                        base_url, ui_url):
    context, cookie = signed_in(browser, ui_url, "admin")
    try:
        own = client().get(f"{ui_url}/v1/acl/token/self", headers={"Cookie": cookie}).json()
        secret_id = own["SecretID"].encode()
        rogue_answers, statuses = 0, {}
        # The public host, as the browser sends it (no UI cookie: host-only),
        # and as an attacker would (the UI's cookie sent along).
        for number in range(60):
            sent = [("Cookie", cookie)] if number % 2 else []
            status, body, headers = edge_request(base_url, "GET", f"/?n={number}", sent)
            statuses[status] = statuses.get(status, 0) + 1
            rogue_answers += headers.get("x-rogue") == "1"
            assert secret_id not in body and secret_id.decode() not in json.dumps(headers), number
            assert "x-consul-token" not in headers and "x-edge-user" not in headers
            assert not any(name.startswith("x-accel-") for name in headers), sorted(headers)
            # The edge's HSTS only: the instance's max-age=0 would come first.
            assert headers.get("strict-transport-security") == "max-age=31536000", number
            if headers.get("x-rogue"):
                # The rogue's own body: X-Accel-Redirect was ignored.
                assert status == 200 and body.startswith(b"rogue answer "), (status, body[:80])
        # The UI's origin never serves the web service at all.
        for target in ("/", "/ui/", "/v1/agent/self", "/index.html", "/health"):
            for _ in range(6):
                status, body, headers = edge_request(ui_url, "GET", target, [("Cookie", cookie)])
                assert "x-rogue" not in headers and b"rogue answer" not in body, target
                assert "set-cookie" not in headers or "rogue" not in headers["set-cookie"], target
        # A browser: the public site's answers set no cookie of the UI's origin.
        page = context.new_page()
        ui_cookies_before = sorted((c["name"], c["value"]) for c in context.cookies(ui_url))
        for number in range(20):
            page.goto(f"{base_url}/?browser={number}")
        ui_cookies_after = sorted((c["name"], c["value"]) for c in context.cookies(ui_url))
        assert ui_cookies_after == ui_cookies_before
        assert all(c["value"] != "rogue" for c in context.cookies(ui_url))
        # The UI's session still works afterwards, with the same token.
        page.goto(f"{ui_url}/ui/dc1/services")
        page.get_by_text("python-web-service").first.wait_for(timeout=20000)
        again = client().get(f"{ui_url}/v1/acl/token/self",
                             headers={"Cookie": session_cookie(context, ui_url)})
        assert again.status_code == 200 and again.json()["AccessorID"] == own["AccessorID"]
    finally:
        context.close()
    print(f"rogue instance answered {rogue_answers} of 60 public requests; statuses {statuses}")
    record_figures("rogue instance", public_requests=60, answered_by_rogue=rogue_answers,
                   tokens_leaked=0)
    # Control: the rogue really was in the rotation.
    assert rogue_answers >= 5


# --- one session, many spellings -----------------------------------------------

def spellings(cookie: str) -> dict[str, str]:
    """The same session's cookies as an attacker would respell them."""
    pairs = [pair.split("=", 1) for pair in cookie.split("; ")]
    joined = "; ".join(f"{n}={v}" for n, v in pairs)
    found = {
        "as sent": joined,
        "no space after ;": ";".join(f"{n}={v}" for n, v in pairs),
        "reordered": "; ".join(f"{n}={v}" for n, v in reversed(pairs)),
        "unrelated cookie first": f"other=1; {joined}",
    }
    for number in range(5):
        found[f"extra split name {number}"] = f"{joined}; {SESSION_COOKIE}_{50 + number}={uuid.uuid4().hex}"
    return found


def spelled(base: str, path: str, cookie: str) -> int:
    return edge_request(base, "GET", path, [("Cookie", cookie)])[0]


def test_one_session_in_every_spelling_is_one_token_and_sign_out_ends_them_all(
        browser, edge, server, ui_url, base_url):
    before = tokens_of(server, "reader")
    # The browser's sign-in ends on /ui/: the session's first request.
    context, cookie = signed_in(browser, ui_url, "reader")
    context.close()
    assert spelled(ui_url, "/v1/agent/self", cookie) == 200
    session_tokens = tokens_of(server, "reader") - before
    variants = spellings(cookie)
    for label, value in variants.items():
        assert spelled(ui_url, "/v1/agent/self", value) == 200, label
    # A name sent twice is refused outright (no guessing which one counts).
    duplicated = f"{cookie}; {cookie.split('; ')[0]}"
    assert spelled(ui_url, "/v1/agent/self", duplicated) in (401, 403)
    # On the public host the cookie reaches no Consul at all.
    status, body, _ = edge_request(base_url, "GET", "/v1/agent/self", [("Cookie", cookie)])
    assert b'"Config"' not in body and b"NodeName" not in body, status
    made = tokens_of(server, "reader") - before
    print(f"{len(variants)} spellings of one session: {len(made)} Consul token(s)")
    record_figures("cookie spellings of one session", spellings=len(variants), consul_tokens=len(made))
    assert len(session_tokens) == 1 and made == session_tokens

    # Sign-out, as the form posts it.
    answer = client().post(f"{ui_url}/oauth2/sign_out", headers={"Cookie": cookie, "Origin": ui_url},
                           allow_redirects=False)
    assert answer.status_code == 302, answer.status_code
    assert not (tokens_of(server, "reader") & made), "the session's token outlived the sign-out"
    after_sign_out = tokens_of(server, "reader")
    for label, value in {**variants, "plain": cookie}.items():
        assert spelled(ui_url, "/v1/agent/self", value) == 401, label
    # ... and after a restart of the exchange, which keeps no memory of it.
    edge.check_output("systemctl restart consul-edge-exchange.service")
    wait_for(lambda: edge.run("curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:4181/token").stdout
             == "401", 30, "the exchange answers again")
    for label, value in {**variants, "plain": cookie}.items():
        assert spelled(ui_url, "/v1/agent/self", value) == 401, f"after restart: {label}"
    assert tokens_of(server, "reader") <= after_sign_out, "a signed-out session got a new token"


# --- bounded state --------------------------------------------------------------

FLOOD = """
import http.client, json, os, sys, time
name, count = sys.argv[1], int(sys.argv[2])
def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
pid = int(os.popen("systemctl show --value -p MainPID consul-edge-exchange.service").read())
before = rss(pid)
conn = http.client.HTTPConnection("127.0.0.1", 4181, timeout=10)
codes = {}
started = time.monotonic()
for number in range(count):
    junk = os.urandom(24).hex()
    for method, path in (("POST", "/sign-out"), ("GET", "/token")):
        conn.request(method, path, headers={"Cookie": f"{name}={junk}; {name}_1={junk}"})
        response = conn.getresponse()
        response.read()
        codes[f"{method} {response.status}"] = codes.get(f"{method} {response.status}", 0) + 1
print(json.dumps({"rss_before_kib": before, "rss_after_kib": rss(pid), "codes": codes,
                  "seconds": round(time.monotonic() - started, 1)}))
"""


def exchange_state_files(edge) -> str:
    return edge.check_output("find /var/lib/private/consul-edge-exchange -type f -printf '%p %s\\n' "
                             "2>/dev/null | sort")


def test_floods_of_junk_sign_outs_and_checks_leave_the_exchange_bounded(browser, edge, ui_url):
    context, cookie = signed_in(browser, ui_url, "operator")
    context.close()
    own = client().get(f"{ui_url}/v1/acl/token/self", headers={"Cookie": cookie}).json()
    state_before = exchange_state_files(edge)
    edge.check_output("cat > /root/flood.py << 'EOF'\n" + textwrap.dedent(FLOOD) + "EOF")
    figures = json.loads(edge.check_output(f"python3 /root/flood.py {SESSION_COOKIE} 10000"))
    grew = figures["rss_after_kib"] - figures["rss_before_kib"]
    print(f"10 000 junk sign-outs and 10 000 junk checks in {figures['seconds']} s: the exchange's "
          f"resident memory {figures['rss_before_kib']} -> {figures['rss_after_kib']} KiB; "
          f"{figures['codes']}")
    record_figures("exchange under junk", sign_outs=10000, checks=10000, **figures)
    assert figures["codes"] == {"POST 204": 10000, "GET 401": 10000}, figures["codes"]
    # Nothing an anonymous client sends is kept.
    assert exchange_state_files(edge) == state_before
    assert grew < 16 * 1024, f"the exchange grew by {grew} KiB"
    memory_max = edge.check_output("systemctl show --value -p MemoryMax consul-edge-exchange.service")
    assert memory_max.isdigit(), memory_max
    # The signed-in user is unaffected: same session, same token.
    again = client().get(f"{ui_url}/v1/acl/token/self", headers={"Cookie": cookie})
    assert again.status_code == 200 and again.json()["AccessorID"] == own["AccessorID"]
    client().post(f"{ui_url}/oauth2/sign_out", headers={"Cookie": cookie, "Origin": ui_url},
                  allow_redirects=False)


def test_nginx_limits_a_flood_of_sign_in_starts_per_client(ui_url):
    session = client()
    codes: dict[int, int] = {}
    for _ in range(400):
        status = session.get(f"{ui_url}/oauth2/start?rd=%2Fui%2F", allow_redirects=False).status_code
        codes[status] = codes.get(status, 0) + 1
    print(f"400 sign-in starts at once: {codes}")
    record_figures("sign-in flood", requests=400, **{f"status_{k}": v for k, v in codes.items()})
    assert codes.get(429, 0) > 0 and codes.get(302, 0) > 0, codes
    assert set(codes) <= {302, 429}, codes
    # The limit lets go again: a person can sign in a moment later.
    wait_for(lambda: session.get(f"{ui_url}/oauth2/start?rd=%2Fui%2F", allow_redirects=False)
             .status_code == 302, 30, "sign-in starts are served again")


# --- addresses: only the declared networks -----------------------------------------

# Every notation of a range outside the scenario's declared app network.
OUTSIDE = {
    "loopback": "127.0.0.1", "loopback short": "127.1", "loopback octal": "0177.0.0.1",
    "loopback hex": "0x7f.0.0.1", "loopback integer": "2130706433", "metadata": "169.254.169.254",
    "private other": "10.0.0.7", "unspecified": "0.0.0.0", "ipv6 loopback": "::1",
    "ipv6 loopback long": "0:0:0:0:0:0:0:1", "ipv6 loopback padded": "0000:0000::0001",
    "mapped": "::ffff:127.0.0.1", "mapped hex": "::ffff:7f00:1", "mapped upper": "::FFFF:127.0.0.1",
    "compatible": "::127.0.0.1", "6to4": "2002:7f00:1::1", "nat64": "64:ff9b::7f00:1",
    "nat64 local": "64:ff9b:1::7f00:1", "teredo": "2001:0:4136:e378:8000:63bf:80ff:fffe",
    "link-local": "fe80::1", "zone id": "fe80::1%eth0", "multicast": "ff02::1", "multicast v4": "224.0.0.1",
}


def test_only_addresses_in_the_declared_networks_become_upstreams(edge, server):
    # The networks as deployed: the writer's command line in consul-template's config.
    networks = sorted(set(edge.check_output(
        "grep -rho 'allow-network=[0-9a-f.:/]*' /etc/consul-template.d/").split()))
    networks = [n.split("=", 1)[1] for n in networks]
    assert len(networks) == 1 and "." in networks[0], networks
    base = networks[0].split("/")[0].rsplit(".", 1)[0]
    inside = f"{base}.250"
    upstreams = "/etc/nginx/consul-edge/upstreams/python-web-service.conf"
    table = {**OUTSIDE, "mapped form of an inside address": f"::ffff:{inside}"}
    since = edge.check_output("date +%s.%N")
    registered = {}
    try:
        for number, (label, address) in enumerate({**table, "control: inside": inside}.items()):
            body = json.dumps({"Node": f"address-node-{number}", "Address": "192.0.2.10", "Service": {
                "ID": f"address-{number}", "Service": "python-web-service", "Address": address,
                "Port": 8080}})
            status, _ = api_call(server, "catalog/register", "PUT", body)
            if status == 200:
                registered[label] = f"address-{number}"
        assert "control: inside" in registered
        wait_for(lambda: f"{inside}:8080" in edge.file(upstreams).content_string, 30,
                 "the control address from the declared network is an upstream")

        def logged() -> set[str]:
            journal = edge.check_output(
                f"journalctl -u consul-template.service --since @{since} -o cat --no-pager")
            return {label for label, sid in registered.items() if f'instance left out: id="{sid}"' in journal}

        refused = set(registered) - {"control: inside"}
        wait_for(lambda: logged() == refused, 30, "every outside address is logged")
        config = edge.file(upstreams).content_string
        servers = re.findall(r"server (\S+) ", config)
        print(f"Consul took {len(registered)} of {len(table) + 1} registrations; upstream servers {servers}")
        record_figures("upstream addresses", tried=len(table), taken_by_consul=len(registered) - 1,
                       refused_and_logged=len(logged()))
        assert len(refused) >= len(table) - 4, sorted(set(table) - refused)
        assert all(s.startswith(base + ".") for s in servers), servers
    finally:
        for number in range(len(table) + 1):
            api_call(server, "catalog/deregister", "PUT", json.dumps({"Node": f"address-node-{number}"}))
    wait_for(lambda: f"{inside}:8080" not in edge.file(upstreams).content_string, 30,
             "the control instance left the upstream")


# --- sign-out: a same-origin POST only ---------------------------------------------

def test_sign_out_is_a_same_origin_post_only(browser, ui_url, base_url):
    context, cookie = signed_in(browser, ui_url, "reader")
    context.close()
    session = client()
    headers = {"Cookie": cookie}
    attempts = {
        "cross-site GET": ("GET", {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}),
        "plain GET (a link or an image)": ("GET", {}),
        "POST from another site": ("POST", {"Origin": "https://evil.example"}),
        "POST from the public site": ("POST", {"Origin": base_url}),
        "POST with Origin null": ("POST", {"Origin": "null"}),
        "POST without Origin": ("POST", {}),
        "POST from a look-alike": ("POST", {"Origin": ui_url + ".evil.example"}),
    }
    for label, (method, extra) in attempts.items():
        answer = session.request(method, f"{ui_url}/oauth2/sign_out", headers={**headers, **extra},
                                 allow_redirects=False)
        assert answer.status_code in (200, 403), (label, answer.status_code)
        assert "set-cookie" not in {k.lower() for k in answer.headers}, label
        assert session.get(f"{ui_url}/v1/agent/self", headers=headers).status_code == 200, label
    form = session.get(f"{ui_url}/oauth2/sign_out", headers=headers)
    assert 'method="post"' in form.text
    # Control: the form's own POST signs out.
    answer = session.post(f"{ui_url}/oauth2/sign_out", headers={**headers, "Origin": ui_url},
                          allow_redirects=False)
    assert answer.status_code == 302
    assert session.get(f"{ui_url}/v1/agent/self", headers=headers).status_code == 401


def test_old_bookmarks_of_the_ui_on_the_public_name_go_to_the_ui_origin(base_url, ui_url):
    for path in ("/ui/", "/ui/dc1/services", "/ui"):
        answer = client().get(base_url + path, allow_redirects=False)
        assert answer.status_code == 301, path
        assert answer.headers["Location"] == ui_url + path, answer.headers["Location"]
    # Nothing of the UI's is served on the public name.
    for path in ("/oauth2/start?rd=/ui/", "/oauth2/sign_out", "/_edge/401.json"):
        answer = client().get(base_url + path, allow_redirects=False)
        assert "oauth2" not in answer.headers.get("Location", "") and answer.status_code != 302, path
    assert urlsplit(base_url).hostname != urlsplit(ui_url).hostname


def test_the_ui_origin_serves_nothing_of_the_web_service(ui_url):
    for path in ("/health", "/index.html", "/anything"):
        answer = client().get(ui_url + path, allow_redirects=False)
        assert answer.status_code == 404, path
    assert client().get(ui_url + "/", allow_redirects=False).headers["Location"] == "/ui/"


# --- writes and long polls ------------------------------------------------------

def test_api_writes_from_another_origin_are_refused(browser, ui_url, base_url, server):
    """The UI's cookie is SameSite=Lax: a page of the same site (the public
    origin, in a deployment such as www.example.com and consul.example.com)
    could send it with a simple cross-origin POST. Writes must come from the
    UI's own origin, or from no browser at all (no Origin)."""
    context, cookie = signed_in(browser, ui_url, "operator")
    context.close()
    key = f"edge-test/origin-{uuid.uuid4().hex}"
    attempts = {
        "the public origin": base_url, "another site": "https://evil.example", "null": "null",
        "look-alike": ui_url + ".evil.example", "other port": ui_url.rsplit(":", 1)[0] + ":1",
    }
    try:
        for label, origin in attempts.items():
            for method, target in (("PUT", f"/v1/kv/{key}"), ("POST", "/v1/txn"),
                                   ("DELETE", f"/v1/kv/{key}")):
                status, body, _ = edge_request(ui_url, method, target,
                                               [("Cookie", cookie), ("Origin", origin),
                                                ("Content-Type", "text/plain")], b"x")
                assert status == 403 and b"another origin" in body, (label, method, status)
        assert api_call(server, f"kv/{key}")[0] == 404
        # Reads from anywhere are fine: no other origin can read the answer.
        assert edge_request(ui_url, "GET", "/v1/agent/self",
                            [("Cookie", cookie), ("Origin", base_url)])[0] == 200
        # Controls: the UI's own origin writes, and so does a client without Origin.
        for origin in ([("Origin", ui_url)], []):
            status, body, _ = edge_request(ui_url, "PUT", f"/v1/kv/{key}",
                                           [("Cookie", cookie), *origin], b"x")
            assert status == 200 and body.strip() == b"true", (origin, status, body[:100])
    finally:
        api_call(server, f"kv/{key}", "DELETE")
        client().post(f"{ui_url}/oauth2/sign_out", headers={"Cookie": cookie, "Origin": ui_url},
                      allow_redirects=False)


def test_blocking_queries_are_capped_per_session_whatever_the_cookie_spelling(browser, edge, ui_url):
    cap = int(edge.ansible.get_variables().get("edge_nginx_blocking_queries_per_session", 32))
    sessions = {}
    for user in ("reader", "operator"):
        context, sessions[user] = signed_in(browser, ui_url, user)
        context.close()
    index = client().get(f"{ui_url}/v1/kv/edge-test?index=0", headers={"Cookie": sessions["reader"]})
    index = index.headers["X-Consul-Index"]

    def hold(cookie: str) -> int:
        target = f"/v1/kv/edge-test/blocking-{uuid.uuid4().hex}?index={index}&wait=6s"
        return edge_request(ui_url, "GET", target, [("Cookie", cookie)])[0]

    # Each request of the reader's session spelled anew (a junk split cookie
    # beside the real one): nginx counts the session the exchange verified.
    spelled = [f"{sessions['reader']}; {SESSION_COOKIE}_0={uuid.uuid4().hex[:16]}"
               for _ in range(cap + 8)]
    with ThreadPoolExecutor(max_workers=cap + 12) as pool:
        reader = [pool.submit(hold, cookie) for cookie in spelled]
        # Control: another session's long polls are not counted with the reader's.
        other = [pool.submit(hold, sessions["operator"]) for _ in range(4)]
        codes = [f.result(timeout=60) for f in reader]
        others = [f.result(timeout=60) for f in other]
    # A held query on a key that does not exist ends with 404 after its wait.
    codes = ["held" if code in (200, 404) else code for code in codes]
    others = ["held" if code in (200, 404) else code for code in others]
    counted = {code: codes.count(code) for code in set(codes)}
    print(f"{cap + 8} blocking queries of one session in {cap + 8} spellings: {counted}; "
          f"another session's: {others}")
    record_figures("blocking queries per session", cap=cap, sent=cap + 8, **{f"status_{k}": v
                                                                             for k, v in counted.items()})
    assert counted == {"held": cap, 429: 8}, counted
    assert others == ["held"] * 4
    for cookie in sessions.values():
        client().post(f"{ui_url}/oauth2/sign_out", headers={"Cookie": cookie, "Origin": ui_url},
                      allow_redirects=False)
