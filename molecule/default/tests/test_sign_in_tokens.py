"""Per-person Consul tokens (issue 13). First the JWT auth method that
trusts the scenario's OpenID Connect provider (Ory Hydra), its roles and
binding rules (roles/consul_acl, entry point login), tested against Consul
directly with real ID tokens; then the edge's token exchange
(roles/edge_token_exchange) through the edge's published port, as a person's
browser uses it.

An ID token is obtained as the edge obtains it: a real browser signs in at
Hydra for the edge's client, the redirect back to the edge is caught before
it leaves the browser, and the code is exchanged at Hydra's token endpoint
with the edge's client secret. Every token and JWT goes to Consul on stdin,
never on a command line.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
import yaml
from conftest import (
    CA,
    REPO,
    RUNNER,
    SECRETS,
    _PinnedHTTPSConnection,
    changed_in,
    edge_connection,
    get_host,
    group,
    record_figures,
    run_playbook,
    secret,
    write_private_file,
)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools" / "lab"))
import concurrent_sign_in
from lab_browser import SESSION_COOKIE, session_cookie, sign_in

SETTINGS = RUNNER.get_variables(group("consul_servers")[0])
SERVER = SETTINGS.get("ansible_host", group("consul_servers")[0])
# The inventory's method by name; its settings as Consul holds them (the
# inventory's are templates).
METHOD_NAME = SETTINGS["consul_acl_auth_methods"][0]["name"]
# The Consul UI's own origin at the edge: sign-in, callback and API live there.
BASE_URL = SETTINGS["edge_ui_url"].rstrip("/")
CALLBACK = f"{BASE_URL}/oauth2/callback"
# A method of the test's own with a key of its own: tokens it signs carry a
# valid signature, so Consul's checks of expiry, issuer and audience are
# what refuses them.
TEST_METHOD = "sign-in-test-keys"


def consul(path: str, method: str = "GET", body: str | None = None, token: str = "") -> tuple[int, str]:
    """Consul's HTTP API on a server; the token and the body go in on stdin."""
    script = ('read -r t; exec curl -sS -w "\\n%{http_code}" -X "$1" -H "X-Consul-Token: $t" '
              + ('--data-binary @- ' if body is not None else '') + '"http://127.0.0.1:8500/v1/$2"')
    done = subprocess.run(["docker", "exec", "-i", SERVER, "sh", "-c", script, "sh", method, path],
                          input=f"{token}\n{body or ''}", capture_output=True, text=True, timeout=60,
                          check=True)
    text, _, status = done.stdout.rpartition("\n")
    return int(status), text


def management() -> str:
    return secret("consul_acl_bootstrap_token")


def login(jwt: str, method: str = METHOD_NAME, person: str = "test") -> tuple[int, dict | str]:
    status, text = consul("acl/login", "POST", json.dumps(
        {"AuthMethod": method, "BearerToken": jwt, "Meta": {"person": person}}))
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def logout(secret_id: str) -> int:
    return consul("acl/logout", "POST", "", token=secret_id)[0]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(claims: dict, key: rsa.RSAPrivateKey, kid: str = "test") -> str:
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64url(json.dumps(claims).encode())
    signature = key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{b64url(signature)}"


def exchange_code(config: dict, code: str) -> dict:
    """The code at Hydra's token endpoint, with the edge's client secret."""
    parts = urlsplit(config["OIDCDiscoveryURL"])
    connection = _PinnedHTTPSConnection(parts.hostname, parts.port, "127.0.0.1",
                                        context=ssl.create_default_context(cafile=str(CA)), timeout=15)
    form = urlencode({"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
                      "client_id": config["BoundAudiences"][0],
                      "client_secret": secret("oidc/consul-edge.client-secret")})
    connection.request("POST", "/oauth2/token", body=form,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200, answer
    return answer


@pytest.fixture(scope="module")
def config() -> dict:
    """The sign-in auth method's config as Consul holds it."""
    status, text = consul(f"acl/auth-method/{METHOD_NAME}", token=management())
    assert status == 200, text
    method = json.loads(text)
    assert method["Type"] == "jwt" and method["MaxTokenTTL"] == "8h0m0s", method
    return method["Config"]


@pytest.fixture(scope="module")
def id_token(browser, config):
    """id_token(user): a fresh ID token of that user for the edge's client."""
    def fetch(user: str) -> str:
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{config['OIDCDiscoveryURL']}/oauth2/auth?" + urlencode({
            "client_id": config["BoundAudiences"][0], "response_type": "code",
            "scope": "openid email profile", "redirect_uri": CALLBACK,
            "state": uuid.uuid4().hex, "nonce": uuid.uuid4().hex}))
        page.fill("#username", user)
        page.fill("#password", secret(f"lab_idp/users/{user}"))
        page.click("#submit")
        # Playwright routes no redirected request, so the redirect back to the
        # edge is read from the page's URL. The edge refuses it (no sign-in of
        # its own was started: its CSRF check fails before it redeems a code).
        caught = []
        for _ in range(40):
            if page.url.startswith(CALLBACK):
                caught.append(page.url)
                break
            page.wait_for_timeout(500)
        where = page.url
        context.close()
        assert caught, f"no redirect back to the edge for {user} within 20 s; the page is at {where}"
        code = parse_qs(urlsplit(caught[0]).query)["code"][0]
        return exchange_code(config, code)["id_token"]

    return fetch


@pytest.fixture(scope="module")
def test_key(config):
    """A key of the test's own and an auth method that trusts it, bound like the real one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    own = {k: v for k, v in config.items() if not k.startswith("OIDCDiscovery")}
    own["JWTValidationPubKeys"] = [public]
    status, text = consul(f"acl/auth-method/{TEST_METHOD}", "PUT", json.dumps(
        {"Name": TEST_METHOD, "Type": "jwt", "MaxTokenTTL": "5m", "Config": own}), token=management())
    assert status == 200, text
    status, text = consul("acl/binding-rule", "PUT", json.dumps(
        {"AuthMethod": TEST_METHOD, "BindType": "role", "BindName": "ui-read-only",
         "Selector": '"consul-readers" in list.groups'}), token=management())
    assert status == 200, text
    yield key
    # Deleting the method deletes its binding rules and every token it made.
    consul(f"acl/auth-method/{TEST_METHOD}", "DELETE", token=management())


def claims(config: dict, **changes) -> dict:
    now = int(time.time())
    base = {"iss": config["BoundIssuer"], "aud": list(config["BoundAudiences"]), "sub": "reader",
            "preferred_username": "reader", "groups": ["consul-readers"],
            "iat": now, "nbf": now - 5, "exp": now + 300}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def moment(text: str) -> datetime:
    """Consul's RFC 3339 time (nanoseconds, Z) as a datetime."""
    match = re.fullmatch(r"(.+?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    fraction = (match[2] or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{match[1]}.{fraction}{'+00:00' if match[3] == 'Z' else match[3]}")


def token_of(secret_id: str) -> dict:
    status, text = consul("acl/token/self", token=secret_id)
    assert status == 200, text
    return json.loads(text)


def test_each_person_gets_an_own_short_lived_token_with_the_roles_of_their_groups(id_token):
    made = []
    try:
        first, second, reader = (login(id_token(user), person=user) for user in ("admin", "admin", "reader"))
        for status, answer in (first, second, reader):
            assert status == 200, answer
            made.append(answer["SecretID"])
        # Two sign-ins of one person: two tokens.
        assert first[1]["AccessorID"] != second[1]["AccessorID"]
        for (_, answer), role, person in ((first, "ui-operator", "admin"),
                                          (reader, "ui-read-only", "reader")):
            held = token_of(answer["SecretID"])
            assert [r["Name"] for r in held["Roles"]] == [role]
            assert held["AuthMethod"] == METHOD_NAME and held["Local"] is True
            assert person in held["Description"]
            # It expires after the auth method's max_token_ttl (8 h), not later.
            lifetime = moment(held["ExpirationTime"]) - moment(held["CreateTime"])
            assert lifetime.total_seconds() == 8 * 3600, held
        # The reader's token reads KV but cannot write it.
        assert consul("kv/sign-in-test", "PUT", "x", token=reader[1]["SecretID"])[0] == 403
    finally:
        for secret_id in made:
            logout(secret_id)


def test_logout_makes_the_token_invalid_at_once(id_token):
    status, answer = login(id_token("admin"), person="admin")
    assert status == 200, answer
    assert consul("acl/token/self", token=answer["SecretID"])[0] == 200
    assert logout(answer["SecretID"]) == 200
    status, text = consul("acl/token/self", token=answer["SecretID"])
    assert status == 403 and "ACL not found" in text


def test_a_person_in_no_bound_group_gets_no_token(id_token):
    status, answer = login(id_token("outsider"), person="outsider")
    assert status == 403, answer


def forgeries(real: str) -> dict[str, str]:
    """The real ID token of `reader`, tampered with in the ways an attacker would."""
    header, payload, signature = real.split(".")
    raised = json.loads(unb64url(payload))
    raised["groups"] = ["consul-admins"]
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = json.loads(unb64url(header)).get("kid", "")
    none_header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    hs_header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    return {
        "groups raised, signature kept": f"{header}.{b64url(json.dumps(raised).encode())}.{signature}",
        "re-signed with another key under Hydra's key ID": sign(raised, other_key, kid),
        "alg none": f"{none_header}.{b64url(json.dumps(raised).encode())}.",
        "HS256 header on Hydra's signature": f"{hs_header}.{payload}.{signature}",
        "signature cut": f"{header}.{payload}.",
        "signature of another token": f"{header}.{b64url(json.dumps(raised).encode())}.{signature[::-1]}",
        "two dots only": "..",
        "empty": "",
        "NUL inside": real[:20] + "\x00" + real[20:],
        "percent-encoded": real.replace(".", "%2E"),
        "oversize (1 MiB payload)": f"{header}.{b64url(b'{' + b' ' * (1 << 20) + b'}')}.{signature}",
    }


def test_forged_or_mangled_id_tokens_are_refused(id_token):
    real = id_token("reader")
    status, answer = login(real, person="reader")
    assert status == 200, answer  # the control: the untouched token is accepted
    logout(answer["SecretID"])
    accepted = {}
    for case, jwt in forgeries(real).items():
        status, answer = login(jwt)
        if status == 200:
            accepted[case] = answer
            logout(answer["SecretID"])
        else:
            assert isinstance(answer, str) and status in (400, 403, 500), (case, status, answer)
    assert accepted == {}


@pytest.mark.parametrize("case", ["expired", "not valid yet", "another issuer",
                                  "the issuer with a trailing slash", "another audience", "no audience"])
def test_validly_signed_but_expired_foreign_or_misaddressed_tokens_are_refused(config, test_key, case):
    now = int(time.time())
    changes = {
        "expired": {"exp": now - 120, "nbf": now - 600, "iat": now - 600},
        "not valid yet": {"nbf": now + 600},
        "another issuer": {"iss": "https://idp.example.invalid"},
        "the issuer with a trailing slash": {"iss": config["BoundIssuer"] + "/"},
        "another audience": {"aud": ["some-other-client"]},
        "no audience": {"aud": None},
    }[case]
    # The control: the same claims unchanged are accepted by the test's method.
    status, answer = login(sign(claims(config), test_key), TEST_METHOD)
    assert status == 200, answer
    logout(answer["SecretID"])
    status, answer = login(sign(claims(config, **changes), test_key), TEST_METHOD)
    assert status != 200, (case, answer)


def rules_of(method: str) -> list[dict]:
    status, text = consul(f"acl/binding-rules?authmethod={method}", token=management())
    assert status == 200, text
    return json.loads(text)


def test_a_binding_rule_nobody_declared_is_shown_by_check_mode_and_removed_by_a_run(config):
    """Rights a sign-in gives are only the declared ones: a rule added behind
    the inventory's back (here: any signed-in person becomes an operator) is
    reported by --check --diff without being touched, and the next run removes
    it; then the data is as declared and a run changes nothing."""
    declared = {r["ID"] for r in rules_of(METHOD_NAME)}
    status, text = consul("acl/binding-rule", "PUT", json.dumps(
        {"AuthMethod": METHOD_NAME, "BindType": "role", "BindName": "ui-operator",
         "Selector": "", "Description": "added by hand"}), token=management())
    assert status == 200, text
    sneaky = json.loads(text)["ID"]
    try:
        checked = run_playbook("site.yml", "--tags", "consul_acl_login", "--check", "--diff")
        assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
        assert "Description: added by hand" in checked.stdout
        assert sneaky in {r["ID"] for r in rules_of(METHOD_NAME)}
        fixed = run_playbook("site.yml", "--tags", "consul_acl_login")
        assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-2000:]
        assert {r["ID"] for r in rules_of(METHOD_NAME)} == declared
        again = run_playbook("site.yml", "--tags", "consul_acl_login")
        task = again.stdout.split("Keep the roles, auth methods")[1].split("TASK [")[0]
        assert "ok: [" in task and "changed: [" not in task, task[-2000:]
    finally:
        consul(f"acl/binding-rule/{sneaky}", "DELETE", token=management())


# --- the edge's token exchange ----------------------------------------------


# Where a sign-in lands when a test wants the session's first request to be
# its own: a page of the UI's origin that asks nothing of the exchange (404).
NEUTRAL_LANDING = "/oauth2/start?rd=%2Fsigned-in"


def edge_session(browser, user: str, start: str = NEUTRAL_LANDING) -> requests.Session:
    """A requests session carrying the edge session `user` got by signing in
    with the browser (the browser context is closed: the cookie lives on);
    the exchange has not seen it yet."""
    context, _ = sign_in(browser, BASE_URL, user, secret(f"lab_idp/users/{user}"), start)
    try:
        session = requests.Session()
        session.verify = str(CA)
        session.trust_env = False
        # As a header: the cookie jar will not send host-only cookies of "localhost".
        session.headers["Cookie"] = session_cookie(context)
        assert session.headers["Cookie"], f"{user} has no edge session after signing in"
        return session
    finally:
        context.close()


def own_token(session: requests.Session) -> dict:
    answer = session.get(f"{BASE_URL}/v1/acl/token/self")
    assert answer.status_code == 200, (answer.status_code, answer.text[:300])
    return answer.json()


def sign_out(session: requests.Session) -> int:
    """The sign-out form's POST, as the browser sends it from the UI's origin."""
    return session.post(f"{BASE_URL}/oauth2/sign_out", headers={"Origin": BASE_URL},
                        allow_redirects=False).status_code


def sign_in_tokens() -> list[dict]:
    """The tokens the scenario's auth method made, as Consul lists them."""
    status, text = consul(f"acl/tokens?authmethod={METHOD_NAME}", token=management())
    assert status == 200, text
    return json.loads(text)


def test_two_operators_signed_in_at_once_each_get_an_own_short_lived_token(browser):
    sessions = {user: edge_session(browser, user) for user in ("admin", "operator", "reader")}
    try:
        tokens = {user: own_token(session) for user, session in sessions.items()}
        assert len({t["AccessorID"] for t in tokens.values()}) == 3
        for user, token in tokens.items():
            # The caller's own token: made at the sign-in, naming the person.
            assert token["AuthMethod"] == METHOD_NAME and token["Local"] is True, token
            assert f'"user":"{user}"' in token["Description"] and "signed_in_at" in token["Description"]
            assert [r["Name"] for r in token["Roles"]] == (
                ["ui-read-only"] if user == "reader" else ["ui-operator"])
            lifetime = moment(token["ExpirationTime"]) - moment(token["CreateTime"])
            assert 0 < lifetime.total_seconds() <= 8 * 3600, token
        # Repeated requests of one session use its one token.
        assert own_token(sessions["admin"])["AccessorID"] == tokens["admin"]["AccessorID"]
        # consul acl token list shows who holds what.
        listed = {t["AccessorID"]: t["Description"] for t in sign_in_tokens()}
        for user, token in tokens.items():
            assert f'"user":"{user}"' in listed[token["AccessorID"]]
        # What a session may do is its roles' only.
        assert sessions["reader"].put(f"{BASE_URL}/v1/kv/sign-in-test/reader", data="x").status_code == 403
        assert sessions["operator"].put(f"{BASE_URL}/v1/kv/sign-in-test/op", data="x").json() is True
        assert sessions["operator"].delete(f"{BASE_URL}/v1/kv/sign-in-test/op").json() is True
        assert sessions["admin"].get(f"{BASE_URL}/v1/acl/tokens").status_code == 403
    finally:
        for session in sessions.values():
            sign_out(session)


def test_sign_out_deletes_the_token_before_it_answers_and_the_cookie_is_refused_after(browser):
    session = edge_session(browser, "admin")
    token = own_token(session)
    assert consul("acl/token/self", token=token["SecretID"])[0] == 200
    assert sign_out(session) == 302
    # The exchange logs the token out before nginx passes the sign-out on.
    status, text = consul("acl/token/self", token=token["SecretID"])
    assert status == 403 and "ACL not found" in text
    # The cookie, replayed (oauth2-proxy alone would still accept it): not signed in.
    replay = session.get(f"{BASE_URL}/v1/agent/self")
    assert replay.status_code == 401, replay.text[:200]
    assert token["AccessorID"] not in {t["AccessorID"] for t in sign_in_tokens()}


def restart_login_app(idp) -> None:
    """Restart the IdP's login app (it reads the users at start) and wait
    until it answers."""
    idp.check_output("systemctl restart lab-idp-login.service")
    port = int(RUNNER.get_variables(group("lab_idp")[0]).get("lab_idp_login_port", 9444))
    deadline = time.monotonic() + 30
    while idp.run(f"curl -sk -o /dev/null https://127.0.0.1:{port}/login").rc != 0:
        assert time.monotonic() < deadline, "the login app does not answer after its restart"
        time.sleep(0.2)


def test_a_person_moved_out_of_a_group_has_none_of_its_rights_at_the_next_sign_in(browser):
    idp = get_host(group("lab_idp")[0])
    users = "/etc/lab-idp-login/users.json"
    first = edge_session(browser, "operator")
    assert [r["Name"] for r in own_token(first)["Roles"]] == ["ui-operator"]
    sign_out(first)
    idp.check_output(f"cp -p {users} /root/users.json.saved")
    try:
        data = json.loads(idp.file(users).content_string)
        for user in data["users"]:
            if user["username"] == "operator":
                user["groups"] = ["consul-readers"]
        # Over stdin: the users file holds password hashes ($6$...).
        write_private_file(idp, users, json.dumps(data))
        restart_login_app(idp)
        again = edge_session(browser, "operator")
        try:
            token = own_token(again)
            assert [r["Name"] for r in token["Roles"]] == ["ui-read-only"], token
            assert again.put(f"{BASE_URL}/v1/kv/sign-in-test/moved", data="x").status_code == 403
        finally:
            sign_out(again)
    finally:
        idp.check_output(f"cp -p /root/users.json.saved {users}")
        restart_login_app(idp)


def access_log(edge, lines: int) -> list[str]:
    return edge.check_output(f"journalctl -t nginx_access -n {int(lines)} -o cat --no-pager").splitlines()


def test_with_the_exchange_down_the_edge_shows_an_error_and_nothing_reaches_consul(browser):
    edge = get_host(group("edge")[0])
    session = edge_session(browser, "reader")
    before = own_token(session)
    edge.check_output("systemctl stop consul-edge-exchange.service")
    try:
        # At its stop it logged out every token it held.
        status, text = consul("acl/token/self", token=before["SecretID"])
        assert status == 403 and "ACL not found" in text
        marker = uuid.uuid4().hex
        api = session.get(f"{BASE_URL}/v1/kv/{marker}")
        assert api.status_code == 503 and "nothing was sent to Consul" in api.json()["error"]
        page = session.get(f"{BASE_URL}/ui/{marker}", allow_redirects=False)
        assert page.status_code == 503 and "Consul access is unavailable" in page.text
        assert page.headers.get("Strict-Transport-Security")
        # A sign-out the exchange cannot record says so and keeps the cookie:
        # clearing it would only look like a sign-out.
        refused = session.post(f"{BASE_URL}/oauth2/sign_out", headers={"Origin": BASE_URL},
                               allow_redirects=False)
        assert refused.status_code == 503 and "Sign-out is unavailable" in refused.text
        assert "set-cookie" not in {name.lower() for name in refused.headers}
        # The journal takes the lines a moment after the answers.
        deadline = time.monotonic() + 10
        while len(lines := [line for line in access_log(edge, 50) if marker in line]) < 2:
            assert time.monotonic() < deadline, lines
            time.sleep(0.2)
        # Neither request was proxied anywhere: no upstream answered it.
        assert all(" 503 " in line and "upstream=-" in line for line in lines), lines
    finally:
        edge.check_output("systemctl start consul-edge-exchange.service")
    # The same session exchanges again: a new token.
    after = own_token(session)
    assert after["AccessorID"] != before["AccessorID"]
    sign_out(session)


def test_a_session_past_its_lifetime_gets_no_new_token(browser):
    """oauth2-proxy still accepts the cookie (its cookie_expire is 8 h), but
    the exchange runs with a 12 s session lifetime: once the session is older
    than that, the edge answers 401 and Consul gets no login for it."""
    edge = get_host(group("edge")[0])
    unit = "consul-edge-exchange.service"
    exec_start = next(line for line in edge.check_output(f"systemctl cat {unit}").splitlines()
                      if line.startswith("ExecStart="))
    short = re.sub(r"--session-lifetime \S+", "--session-lifetime 12s", exec_start)
    assert short != exec_start, exec_start
    drop_in = f"/etc/systemd/system/{unit}.d/test-short-session.conf"
    edge.check_output(f"mkdir -p /etc/systemd/system/{unit}.d")
    write_private_file(edge, drop_in, f"[Service]\nExecStart=\n{short}\n")
    edge.check_output(f"systemctl daemon-reload && systemctl restart {unit}")
    try:
        session = edge_session(browser, "reader")
        first = own_token(session)
        signed_in = moment(json.loads(first["Description"].split(": ", 1)[1])["signed_in_at"])
        # Past the lifetime and the 10 s recheck: the exchange asks again.
        time.sleep(max(0.0, 13 - (datetime.now(signed_in.tzinfo) - signed_in).total_seconds()))
        before = {t["AccessorID"] for t in sign_in_tokens()}
        answer = session.get(f"{BASE_URL}/v1/acl/token/self")
        assert answer.status_code == 401, (answer.status_code, answer.text[:200])
        assert {t["AccessorID"] for t in sign_in_tokens()} <= before
        status, text = consul("acl/token/self", token=first["SecretID"])
        assert status == 403 and "ACL not found" in text, "the ended session's token is still valid"
    finally:
        edge.check_output(f"rm -f {drop_in} && systemctl daemon-reload && systemctl restart {unit}")


def test_consul_down_at_the_exchange_fails_closed(browser):
    """A new session while the edge's agent is stopped: 503, no token."""
    edge = get_host(group("edge")[0])
    session = edge_session(browser, "reader")
    edge.check_output("systemctl stop consul.service")
    try:
        answer = session.get(f"{BASE_URL}/v1/kv/?keys")
        assert answer.status_code == 503, answer.text[:200]
    finally:
        edge.check_output("systemctl start consul.service")
    wait = time.monotonic() + 60
    while session.get(f"{BASE_URL}/v1/agent/self").status_code != 200 and time.monotonic() < wait:
        time.sleep(0.5)
    assert own_token(session)["AuthMethod"] == METHOD_NAME
    sign_out(session)


CYCLES = 50


def set_cookies(answer: requests.Response) -> str:
    """The name=value pairs an answer sets, as a Cookie header value."""
    return "; ".join(c.split(";", 1)[0] for c in answer.raw.headers.getlist("Set-Cookie")
                     if "=" in c.split(";", 1)[0] and c.split(";", 1)[0].split("=", 1)[1])


def sign_in_without_a_browser(user: str) -> requests.Session:
    """The same sign-in the browser makes (the edge's /oauth2/start, Hydra,
    the login form, consent, the edge's callback), with requests: the
    cycles below need 200 sessions. Cookies for the edge ("localhost", which
    the cookie jar will not send) travel as headers."""
    idp = requests.Session()
    idp.verify, idp.trust_env = str(CA), False
    start = idp.get(BASE_URL + NEUTRAL_LANDING, allow_redirects=False)
    assert start.status_code == 302, start.status_code
    csrf, location = set_cookies(start), start.headers["Location"]
    form_page = None
    for _ in range(10):
        answer = idp.get(location, allow_redirects=False)
        if answer.status_code != 302:
            form_page = answer
            break
        location = answer.headers["Location"]
    assert form_page is not None and form_page.status_code == 200, location
    fields = dict(re.findall(r'name="(_xsrf|login_challenge)" value="([^"]*)"', form_page.text))
    answer = idp.post(form_page.url, allow_redirects=False, data={
        **fields, "username": user, "password": secret(f"lab_idp/users/{user}")})
    for _ in range(10):
        assert answer.status_code in (302, 303), (answer.status_code, answer.text[:200])
        location = answer.headers["Location"]
        if location.startswith(CALLBACK):
            break
        answer = idp.get(location, allow_redirects=False)
    callback = idp.get(location, headers={"Cookie": csrf}, allow_redirects=False)
    assert callback.status_code == 302, (callback.status_code, callback.text[:200])
    session = requests.Session()
    session.verify, session.trust_env = str(CA), False
    session.headers["Cookie"] = "; ".join(
        pair for pair in set_cookies(callback).split("; ") if pair.startswith(SESSION_COOKIE))
    assert session.headers["Cookie"], f"{user} has no edge session after signing in"
    return session


def sign_in_and_out() -> str:
    """One cycle: the accessor ID of the token the session held."""
    session = sign_in_without_a_browser("reader")
    accessor_id = own_token(session)["AccessorID"]
    assert sign_out(session) == 302
    return accessor_id


def test_sign_in_and_sign_out_cycles_leave_no_pile_of_tokens():
    """One after the other: every cycle's token is gone after its sign-out
    (test_fifty_sign_ins_at_once signs many in at once)."""
    before = {t["AccessorID"] for t in sign_in_tokens()}
    started = time.monotonic()
    made = {sign_in_and_out() for _ in range(CYCLES)}
    took = time.monotonic() - started
    after = {t["AccessorID"] for t in sign_in_tokens()}
    print(f"{CYCLES} sign-in/sign-out cycles in {took:.1f} s: {len(made)} tokens made, "
          f"{len(after)} sign-in tokens in Consul before {len(before)} after")
    assert len(made) == CYCLES
    assert not (after & made)
    assert after <= before


def test_a_re_run_removes_the_group_tokens_an_earlier_version_left():
    """Migration: a cluster built before per-session tokens holds the shared
    UI tokens (accessor IDs as consul_acl derived them), their files on the
    edge and nginx's group-to-token map. A re-run of site.yml removes all of
    it; the run after changes nothing."""
    edge = get_host(group("edge")[0])
    status, text = consul("agent/self", token=management())
    datacenter = json.loads(text)["Config"]["Datacenter"]
    # Ansible's to_uuid is UUIDv5 in the role's namespace.
    role_vars = yaml.safe_load((REPO / "roles/consul_acl/vars/main.yml").read_text(encoding="utf-8"))
    namespace = uuid.UUID(role_vars["__consul_acl_accessor_namespace"])
    old = {name: str(uuid.uuid5(namespace, f"{datacenter}/token/{name}"))
           for name in ("ui-operator", "ui-read-only")}
    files = ["/etc/nginx/consul-edge/tokens.conf", "/etc/consul-tokens/ui-operator.token",
             "/etc/consul-tokens/ui-read-only.token"]
    for name, accessor_id in old.items():
        status, text = consul("acl/token", "PUT", json.dumps(
            {"AccessorID": accessor_id, "Description": f"Consul UI ({name}), as an earlier version made it",
             "Policies": [{"Name": name}]}), token=management())
        assert status == 200, text
        write_private_file(edge, f"/etc/consul-tokens/{name}.token", json.loads(text)["SecretID"])
    edge.check_output("printf 'map $edge_groups $edge_consul_token { default \"\"; }\\n' "
                      "> /etc/nginx/consul-edge/tokens.conf")
    # The ACL play on the first server, the edge's own on the edge: the hosts
    # the migration touches.
    scope = ["--tags", "consul_acl,edge_nginx", "--limit", f"{group('consul_servers')[0]},{group('edge')[0]}"]
    migrated = run_playbook("site.yml", *scope)
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-2000:]
    for name, accessor_id in old.items():
        status, text = consul(f"acl/token/{accessor_id}", token=management())
        assert status in (403, 404) and "not found" in text.lower(), (name, status, text)
    assert not any(edge.file(path).exists for path in files)
    # Only the removals changed anything (and nginx reloaded for the map): the
    # cluster is back in the state whose re-run molecule's idempotence step
    # checks, so no second run is needed to show the migration settles.
    first_server, edge_name = group("consul_servers")[0], group("edge")[0]
    assert changed_in(migrated.stdout) == {
        ("consul_acl : Delete the tokens of earlier versions and of nodes no longer in the inventory",
         first_server),
        ("edge_nginx : Create the edge's folders, and remove Debian's default site and the files of "
         "earlier versions", edge_name),
        ("edge_nginx : Reload nginx", edge_name),
    }, sorted(changed_in(migrated.stdout))


JWT_LIKE = re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}")
# Paths under /oauth2/ as an attacker with a session would try them: any that
# reached oauth2-proxy's proxy handler would answer 202 with the session's
# ID token in an Authorization header.
OAUTH2_PATHS = ["/oauth2/auth", "/oauth2/auth/", "/oauth2/%61uth", "/oauth2//auth", "/oauth2/./auth",
                "/oauth2/start/../auth", "/oauth2/start%2F..%2Fauth", "/oauth2/AUTH", "/oauth2/auth%2F",
                "/oauth2/auth?x=1", "/oauth2/", "/oauth2", "/oauth2/x", "/oauth2/userinfo",
                "/oauth2/static/x", "/oauth2/sign_in", "/oauth2/callback/", "/oauth2/sign_out/x",
                "/oauth2/start/x", "/%6Fauth2/x", "/OAUTH2/x"]
ACL_SIGN_IN_PATHS = ["/v1/acl/login", "/v1/acl/%6Cogin", "//v1/acl/login", "/v1/acl/./login",
                     "/v1/acl/login/", "/v1/acl/logout", "/v1/acl/%6Cogout", "/v1/acl/logout?x"]


def raw_request(method: str, target: str, cookie: str, body: bytes = b"") -> tuple[int, bytes, dict]:
    """The target exactly as given (requests would normalise it)."""
    connection = edge_connection(BASE_URL)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (("Cookie", cookie), ("Content-Length", str(len(body))), ("Connection", "close")):
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def test_no_answer_of_the_edge_hands_a_browser_the_id_token_or_a_login_of_its_own():
    session = sign_in_without_a_browser("reader")
    cookie = session.headers["Cookie"]
    own = own_token(session)
    try:
        seen = {}
        for path in OAUTH2_PATHS:
            status, body, headers = raw_request("GET", path, cookie)
            seen[path] = status
            assert "authorization" not in headers, path
            assert not JWT_LIKE.search(body.decode("latin-1") + json.dumps(headers)), path
        # Nothing but the sign-in's own endpoints reaches oauth2-proxy.
        assert all(status != 202 for status in seen.values()), seen
        # Logging in or out at Consul is the exchange's alone: a token a
        # browser made would outlive its session.
        login_body = json.dumps({"AuthMethod": METHOD_NAME, "BearerToken": "x"}).encode()
        for path in ACL_SIGN_IN_PATHS:
            status, body, _ = raw_request("POST", path, cookie, login_body)
            assert status in (403, 404) and b"SecretID" not in body, (path, status, body[:200])
        # The session's token is still the one it had.
        assert own_token(session)["AccessorID"] == own["AccessorID"]
    finally:
        sign_out(session)


def test_fifty_people_sign_in_at_once_through_the_edge():
    """50 sign-ins at the same moment (tools/lab/concurrent_sign_in.py: the
    edge's start, the IdP's login and consent, the edge's callback, then a
    first API request): none fails. Three people take turns, 17 sessions each at
    most, within the exchange's per-person cap and login rate."""
    result = concurrent_sign_in.run(BASE_URL, CA, SECRETS, ["admin", "operator", "reader"], count=50)
    print(f"50 sign-ins at once: {result['succeeded']} succeeded, {result['failed']} failed, "
          f"p50 {result['p50_s']} s, p99 {result['p99_s']} s")
    record_figures("50 sign-ins at once", attempts=result["attempts"], failed=result["failed"],
                   p50_s=result["p50_s"], p99_s=result["p99_s"])
    assert result["attempts"] == 50 and result["failed"] == 0, result["errors"]
