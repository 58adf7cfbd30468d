"""The edge's token exchange (roles/edge_token_exchange/files/consul_edge_exchange.py).

First what it takes from a request before anything is asked (the cookies are
outside data), then the exchange itself, served on loopback between stand-ins
for oauth2-proxy and Consul (here only; the whole chain with the real ones,
nginx and the lab IdP is tested in molecule, test_sign_in_tokens.py).

The threat model is the table in roles/edge_token_exchange/README.md; the
tests named there prove each "must never reach" impossible.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import functools
import importlib.util
import json
import logging
import secrets
import stat
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import tornado.httputil
import tornado.web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "roles/edge_token_exchange/files/consul_edge_exchange.py"
spec = importlib.util.spec_from_file_location("consul_edge_exchange", PROGRAM)
edge = importlib.util.module_from_spec(spec)
# dataclasses look the module up by name.
sys.modules["consul_edge_exchange"] = edge
spec.loader.exec_module(edge)

NAME = "_consul_edge_session"
VALUE = "QUJD|1700000000|c2lnbmF0dXJl-_="
ISSUER = "https://idp.test"


# --- what is taken from the request -------------------------------------------

@pytest.mark.parametrize(("headers", "expected"), [
    ([f"{NAME}={VALUE}"], [(NAME, VALUE)]),
    ([f"other=1; {NAME}={VALUE}; more=2"], [(NAME, VALUE)]),
    # oauth2-proxy splits a large session into name_0, name_1, ... in order.
    ([f"{NAME}_0=a; {NAME}_1=b"], [(f"{NAME}_0", "a"), (f"{NAME}_1", "b")]),
    # HTTP/2 sends one cookie per header line.
    ([f"{NAME}_0=a", f"{NAME}_1=b"], [(f"{NAME}_0", "a"), (f"{NAME}_1", "b")]),
    ([f"  {NAME}={VALUE}  ;x=1"], [(NAME, VALUE)]),
    # Look-alike names are not the session.
    ([f"{NAME}x={VALUE}", f"x{NAME}={VALUE}", f"{NAME}_csrf={VALUE}", f"{NAME.upper()}={VALUE}",
      f"{NAME}_123=a", f"{NAME}%5F0=a", f"{NAME} =a"], []),
    ([f"{NAME}"], []),
    ([], []),
    ([""], []),
])
def test_session_cookies_are_taken_by_exact_name_in_order(headers, expected):
    assert edge.session_cookies(headers, NAME) == expected


def test_a_host_prefixed_name_is_taken_with_its_split_parts():
    name = "__Host-consul_edge_session"
    headers = [f"__Host-consul_edge_sessionX=1; {name}_1=b; {name}_0=a; consul_edge_session=c"]
    assert edge.session_cookies(headers, name) == [(f"{name}_1", "b"), (f"{name}_0", "a")]


@pytest.mark.parametrize(("headers", "why"), [
    ([f"{NAME}=a; {NAME}=b"], "twice"),
    ([f"{NAME}=a", f"{NAME}=a"], "twice"),
    ([f"{NAME}_0=a; {NAME}_0=a"], "twice"),
    ([f"{NAME}=a\x00b"], "cookie-octet"),
    ([f"{NAME}=a\rb"], "cookie-octet"),
    ([f"{NAME}=a\nX-Consul-Token: x"], "cookie-octet"),
    ([f"{NAME}=a b"], "cookie-octet"),
    ([f'{NAME}="a"'], "cookie-octet"),
    ([f"{NAME}=a,b"], "cookie-octet"),
    ([f"{NAME}=a\\b"], "cookie-octet"),
    ([f"{NAME}=a\x7fb"], "cookie-octet"),
    ([f"{NAME}=caf\u00e9"], "cookie-octet"),
    ([f"{NAME}=" + "a" * 20000], "over"),
    ([f"{NAME}_{i}=" + "a" * 2000 for i in range(9)], "over"),
])
def test_hostile_session_cookies_are_refused(headers, why):
    with pytest.raises(edge.BadSession, match=why):
        edge.session_cookies(headers, NAME)


def test_the_cookie_key_is_a_hash_that_tells_every_cookie_set_apart():
    sets = [
        [(NAME, "ab")],
        [(NAME, "a"), (NAME + "_0", "b")],
        [(NAME + "_0", "a"), (NAME + "_1", "b")],
        [(NAME + "_1", "b"), (NAME + "_0", "a")],
        [(NAME + "_0", "ab")],
        [(NAME, "")],
        [],
    ]
    keys = [edge.cookie_key(pairs) for pairs in sets]
    assert len(set(keys)) == len(keys)
    assert all(len(k) == 64 and VALUE not in k for k in keys)
    assert edge.cookie_key([(NAME, VALUE)]) == edge.cookie_key([(NAME, VALUE)])


def jwt(payload: object) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    return ".".join([part(b'{"alg":"RS256"}'), part(json.dumps(payload).encode()), "c2ln"])


@pytest.mark.parametrize(("token", "claims"), [
    (jwt({"iat": 1, "exp": 2, "auth_time": 1}), {"iat": 1, "exp": 2, "auth_time": 1}),
    (jwt([1, 2]), {}),
    (jwt("text"), {}),
    ("a.b", {}),
    ("a.b.c.d", {}),
    ("a.!!!.c", {}),
    ("a." + base64.urlsafe_b64encode(b"\xff\xfe").decode() + ".c", {}),
    ("", {}),
])
def test_jwt_claims_are_read_without_trusting_the_shape(token, claims):
    assert edge.jwt_claims(token) == claims


@pytest.mark.parametrize(("value", "expected"), [
    (1700000000, 1700000000.0), (1.5, 1.5), (True, None), ("1700000000", None), (None, None), ([1], None),
])
def test_numeric_claims(value, expected):
    assert edge.numeric(value) == expected


BASE = {"iss": ISSUER, "sub": "u-1", "sid": "s-1", "auth_time": 1000, "iat": 1000}


@pytest.mark.parametrize(("first", "second", "same"), [
    # With a sid, the session is the sid: a refresh (new iat, exp) is the same session.
    (BASE, {**BASE, "iat": 2000, "exp": 3000}, True),
    (BASE, {**BASE, "auth_time": 1500}, True),
    (BASE, {**BASE, "sid": "s-2"}, False),
    (BASE, {**BASE, "sub": "u-2"}, False),
    (BASE, {**BASE, "iss": "https://other.test"}, False),
    # Without a sid: auth_time, then iat.
    ({**BASE, "sid": None}, {**BASE, "sid": None, "iat": 2000}, True),
    ({**BASE, "sid": None}, {**BASE, "sid": None, "auth_time": 1001}, False),
    ({**BASE, "sid": None, "auth_time": None}, {**BASE, "sid": None, "auth_time": None, "iat": 1001}, False),
    ({**BASE, "sid": ""}, {**BASE, "sid": None}, True),
    # Kinds never collide: a sid that spells an auth_time is another session.
    ({**BASE, "sid": "1000.0"}, {**BASE, "sid": None}, False),
    # Length prefixes: iss/sub boundaries cannot shift.
    ({**BASE, "iss": "a", "sub": "bc"}, {**BASE, "iss": "ab", "sub": "c"}, False),
])
def test_the_session_identity_is_what_oauth2_proxy_verified(first, second, same):
    one = edge.identity_of({k: v for k, v in first.items() if v is not None})
    two = edge.identity_of({k: v for k, v in second.items() if v is not None})
    assert (one.session == two.session) is same
    assert len(one.session) == 64 and "s-1" not in one.session


def test_the_person_is_the_issuer_and_subject():
    sessions = [edge.identity_of({**BASE, "sid": f"s-{i}"}) for i in range(3)]
    assert len({s.person for s in sessions}) == 1
    assert edge.identity_of({**BASE, "sub": "u-2"}).person != sessions[0].person
    assert edge.identity_of(BASE).signed_in_at == 1000
    assert edge.identity_of({**BASE, "auth_time": None}).signed_in_at == 1000


@pytest.mark.parametrize("claims", [
    {k: v for k, v in BASE.items() if k != "iss"},
    {k: v for k, v in BASE.items() if k != "sub"},
    {**BASE, "iss": ""}, {**BASE, "sub": 7}, {**BASE, "iss": ["x"]},
    {"iss": ISSUER, "sub": "u-1"},
    {},
])
def test_a_token_that_names_no_session_has_no_identity(claims):
    with pytest.raises(edge.NoIdentity):
        edge.identity_of(claims)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-27T08:00:00Z", 1795766400.0),
    ("2026-11-27T08:00:00.5Z", 1795766400.5),
    ("2026-11-27T09:00:00.123456789+01:00", 1795766400.123456789),
    ("", None), ("2026-11-27", None), ("2026-11-27T08:00:00", None), ("soon", None),
])
def test_consul_expiration_times(text, expected):
    got = edge.consul_time(text)
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.mark.parametrize(("text", "seconds"), [("8h", 28800), ("30m", 1800), ("10s", 10), ("1h30m", 5400)])
def test_durations(text, seconds):
    assert edge.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "8", "8d", "h", "-1s", "1s1h", " 8h"])
def test_bad_durations_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        edge.parse_duration(text)


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "5 ", "", "x"])
def test_limits_are_whole_numbers_of_one_or_more(text):
    with pytest.raises(argparse.ArgumentTypeError):
        edge.positive(text)


def test_the_state_dir_is_required_and_the_limits_default():
    with pytest.raises(SystemExit):
        edge.arguments(["--auth-method", "sso", "--cookie-name", NAME])
    args = edge.arguments(["--auth-method", "sso", "--cookie-name", NAME, "--state-dir", "/x"])
    assert (args.max_sessions, args.max_sessions_per_person, args.logins_per_minute,
            args.max_signed_out) == (10000, 20, 60, 20000)


# --- stand-ins for oauth2-proxy and Consul --------------------------------------

class Clock:
    """The exchange's time, moved on by the tests."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class FakeOAuth2Proxy:
    """oauth2-proxy's /oauth2/auth as the exchange sees it. The session is
    read as oauth2-proxy reads it: the cookie of the exact name, else the
    split parts name_0, name_1, ... joined in index order (a gap ends it).
    A known session: 202 with its ID token; anything else 401."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sessions: dict[str, dict] = {}
        self.calls = 0
        self.delay = 0.0

    def sign_in(self, user: str, **claims: object) -> str:
        """A new session (value of the cookie); claims=None drops one."""
        now = int(self.clock())
        value = secrets.token_urlsafe(24)
        token = {"iss": ISSUER, "sub": f"sub-{user}", "sid": secrets.token_hex(8), "auth_time": now,
                 "iat": now, "exp": now + 300, "preferred_username": user, **claims}
        self.sessions[value] = {k: v for k, v in token.items() if v is not None}
        return value

    def refresh(self, value: str) -> str:
        """What oauth2-proxy's refresh makes: a new cookie and ID token (new
        iat, exp), the same sid; the old cookie stays valid until it expires."""
        now = int(self.clock())
        new = secrets.token_urlsafe(24)
        self.sessions[new] = {**self.sessions[value], "iat": now, "exp": now + 300}
        self.sessions[value] = self.sessions[new]
        return new

    def answer(self, cookie_header: str) -> tuple[int, dict[str, str]]:
        self.calls += 1
        cookies: dict[str, str] = {}
        for part in cookie_header.split(";"):
            name, _, value = part.strip().partition("=")
            cookies.setdefault(name, value)
        value = cookies.get(NAME)
        if value is None:
            parts, index = [], 0
            while f"{NAME}_{index}" in cookies:
                parts.append(cookies[f"{NAME}_{index}"])
                index += 1
            value = "".join(parts)
        claims = self.sessions.get(value)
        if claims is None:
            return 401, {}
        return 202, {"Authorization": f"Bearer {jwt(claims)}", "X-Auth-Request-User": claims.get("sub", ""),
                     "X-Auth-Request-Preferred-Username": claims.get("preferred_username", "")}

    def app(self) -> tornado.web.Application:
        proxy = self

        class Auth(tornado.web.RequestHandler):
            async def get(self) -> None:
                await asyncio.sleep(proxy.delay)
                code, headers = proxy.answer(self.request.headers.get("Cookie", ""))
                self.set_status(code)
                for name, value in headers.items():
                    self.set_header(name, value)

        return tornado.web.Application([(r"/oauth2/auth", Auth)])


@dataclasses.dataclass
class FakeConsul:
    """/v1/acl/login and /v1/acl/logout: each login a new token."""

    logins: list[dict] = dataclasses.field(default_factory=list)
    tokens: dict[str, str] = dataclasses.field(default_factory=dict)
    logged_out: list[str] = dataclasses.field(default_factory=list)
    refuse_logout: bool = False
    stale_reads: int = 0
    self_reads: dict[str, int] = dataclasses.field(default_factory=dict)

    def login(self, body: dict) -> dict:
        self.logins.append(body)
        secret, accessor = secrets.token_hex(16), secrets.token_hex(16)
        self.tokens[secret] = accessor
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        return {"SecretID": secret, "AccessorID": accessor, "ExpirationTime": expires}

    def app(self) -> tornado.web.Application:
        consul = self

        class Login(tornado.web.RequestHandler):
            def post(self) -> None:
                self.write(consul.login(json.loads(self.request.body)))

        class Logout(tornado.web.RequestHandler):
            def post(self) -> None:
                if consul.refuse_logout:
                    self.set_status(500)
                    return
                accessor = consul.tokens.pop(self.request.headers.get("X-Consul-Token", ""), None)
                if accessor is None:
                    self.set_status(403)
                    self.write("ACL not found")
                    return
                consul.logged_out.append(accessor)

        class Self(tornado.web.RequestHandler):
            # A token is "not found" for its first `stale_reads` reads, as a
            # client agent's stale read on a lagging server answers.
            def get(self) -> None:
                secret = self.request.headers.get("X-Consul-Token", "")
                seen = consul.self_reads[secret] = consul.self_reads.get(secret, 0) + 1
                if secret not in consul.tokens or seen <= consul.stale_reads:
                    self.set_status(403)
                    self.write("ACL not found")
                    return
                self.write({"AccessorID": consul.tokens[secret]})

        return tornado.web.Application([(r"/v1/acl/login", Login), (r"/v1/acl/logout", Logout),
                                        (r"/v1/agent/members", Self)])


def serve(app: tornado.web.Application) -> tuple[HTTPServer, int]:
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    return server, port


@dataclasses.dataclass
class Lab:
    state_dir: Path
    flags: list[str]
    clock: Clock
    proxy: FakeOAuth2Proxy
    consul: FakeConsul
    urls: dict[str, str]
    servers: list[HTTPServer] = dataclasses.field(default_factory=list)
    exchange: edge.Exchange | None = None
    url: str = ""

    def start(self) -> None:
        """A new exchange on the same state dir: what a restart is."""
        args = edge.arguments(["--auth-method", "sso", "--cookie-name", NAME,
                               "--state-dir", str(self.state_dir), "--timeout", "2",
                               "--oauth2-proxy", self.urls["proxy"], "--consul", self.urls["consul"],
                               *self.flags])
        self.exchange = edge.Exchange(args, self.clock)
        server, port = serve(edge.make_app(self.exchange))
        self.servers.append(server)
        self.url = f"http://127.0.0.1:{port}"

    async def restart(self) -> None:
        await self.exchange.log_out_all()
        self.start()

    @functools.cached_property
    def client(self) -> AsyncHTTPClient:
        # Not the exchange's client: a shared one's ten connections could
        # all wait for the exchange while its own requests wait for them.
        return AsyncHTTPClient(force_instance=True, max_clients=100)

    async def token(self, cookies: list[str]) -> tuple[int, str | None]:
        headers = tornado.httputil.HTTPHeaders()
        for cookie in cookies:
            headers.add("Cookie", cookie)
        answer = await self.client.fetch(self.url + "/token", headers=headers, raise_error=False)
        return answer.code, answer.headers.get("X-Consul-Token")

    async def sign_out(self, cookies: list[str], method: str = "POST") -> int:
        headers = tornado.httputil.HTTPHeaders()
        for cookie in cookies:
            headers.add("Cookie", cookie)
        answer = await self.client.fetch(self.url + "/sign-out", method=method, headers=headers,
                                         body="" if method in ("POST", "PUT") else None, raise_error=False)
        return answer.code

    async def settle(self) -> None:
        """Let the background logouts finish."""
        while self.exchange.background:
            await asyncio.gather(*self.exchange.background)


@contextlib.asynccontextmanager
async def lab(state_dir: Path, *flags: str, proxy_url: str = "", consul_url: str = ""):
    clock = Clock()
    proxy, consul = FakeOAuth2Proxy(clock), FakeConsul()
    servers = []
    urls = {}
    for name, fake, given in (("proxy", proxy, proxy_url), ("consul", consul, consul_url)):
        server, port = serve(fake.app())
        servers.append(server)
        urls[name] = given or f"http://127.0.0.1:{port}"
    state = Lab(state_dir, list(flags), clock, proxy, consul, urls, servers)
    state.start()
    try:
        yield state
    finally:
        await state.settle()
        for server in state.servers:
            server.stop()


def closed_port_url() -> str:
    sock, port = bind_unused_port()
    sock.close()
    return f"http://127.0.0.1:{port}"


def run(scenario) -> None:
    asyncio.run(scenario())


def halves(value: str) -> tuple[str, str]:
    return value[:16], value[16:]


# How a browser (or someone) may spell one split session's cookies, what
# oauth2-proxy makes of it, and what the exchange must answer.
SPELLINGS = {
    "as set": lambda a, b: [f"{NAME}_0={a}; {NAME}_1={b}"],
    "reordered": lambda a, b: [f"{NAME}_1={b}; {NAME}_0={a}"],
    "one header each (HTTP/2)": lambda a, b: [f"{NAME}_1={b}", f"{NAME}_0={a}"],
    "other cookies around": lambda a, b: [f"x=1; {NAME}_0={a}; y=2", f"{NAME}_1={b}; z=3"],
    "an extra split name": lambda a, b: [f"{NAME}_0={a}; {NAME}_1={b}; {NAME}_7=junk"],
    "an unsplit copy beside": lambda a, b: [f"{NAME}={a}{b}; {NAME}_1={b}; {NAME}_0={a}"],
}


@pytest.mark.parametrize(("spelling", "status", "same_token", "logins"), [
    ("as set", 200, True, 1),
    ("reordered", 200, True, 1),
    ("one header each (HTTP/2)", 200, True, 1),
    ("other cookies around", 200, True, 1),
    ("an extra split name", 200, True, 1),
    ("an unsplit copy beside", 200, True, 1),
    # oauth2-proxy reads the unsplit name first: junk there is no session.
    ("junk unsplit name beside", 401, False, 1),
    # Refused before oauth2-proxy is asked.
    ("a duplicated name", 401, False, 1),
    # Controls: another session is another login and another token.
    ("another session", 200, False, 2),
    ("no session cookie", 401, False, 1),
])
def test_every_spelling_of_one_session_gets_its_one_token(tmp_path, spelling, status, same_token, logins):
    async def scenario():
        async with lab(tmp_path) as it:
            a, b = halves(it.proxy.sign_in("alice"))
            code, first = await it.token(SPELLINGS["as set"](a, b))
            assert code == 200 and first
            if spelling == "junk unsplit name beside":
                cookies = [f"{NAME}=junk; {NAME}_0={a}; {NAME}_1={b}"]
            elif spelling == "a duplicated name":
                cookies = [f"{NAME}_0={a}; {NAME}_0={a}; {NAME}_1={b}"]
            elif spelling == "another session":
                cookies = [f"{NAME}={it.proxy.sign_in('bob')}"]
            elif spelling == "no session cookie":
                cookies = [f"x={a}{b}"]
            else:
                cookies = SPELLINGS[spelling](a, b)
            code, token = await it.token(cookies)
            assert code == status
            assert (token == first) is same_token
            assert len(it.consul.logins) == logins
            # Asked again: a session from the cookie cache, without
            # oauth2-proxy; a refusal is never remembered.
            calls = it.proxy.calls
            assert await it.token(cookies) == (code, token)
            assert it.proxy.calls == calls or status != 200
            assert len(it.consul.logins) == logins
    run(scenario)


def test_junk_beside_a_session_costs_one_oauth2_proxy_question_each_and_never_a_login(tmp_path):
    """The attack: five junk values of an extra cookie made five tokens."""
    async def scenario():
        async with lab(tmp_path) as it:
            value = it.proxy.sign_in("alice")
            _, first = await it.token([f"{NAME}={value}"])
            for n in range(5):
                assert await it.token([f"{NAME}={value}; {NAME}_{n}=junk{n}"]) == (200, first)
            assert len(it.consul.logins) == 1
            assert it.proxy.calls == 6
    run(scenario)


def test_parallel_first_requests_in_several_spellings_share_one_login(tmp_path):
    async def scenario():
        async with lab(tmp_path) as it:
            a, b = halves(it.proxy.sign_in("alice"))
            answers = await asyncio.gather(*(it.token(spell(a, b)) for spell in SPELLINGS.values()
                                             for _ in range(3)))
            assert {code for code, _ in answers} == {200}
            assert len({token for _, token in answers}) == 1
            assert len(it.consul.logins) == 1
    run(scenario)


def test_checks_under_way_are_capped_and_beyond_it_the_answer_is_503(tmp_path):
    async def scenario():
        async with lab(tmp_path, "--max-sessions", "2") as it:
            # Below the exchange's --timeout (2 s): each check is answered.
            it.proxy.delay = 1.0
            cookies = [[f"{NAME}=junk{n}"] for n in range(6)]
            requests = [asyncio.ensure_future(it.token(c)) for c in cookies]
            deadline = time.monotonic() + 0.9
            while len(it.exchange.pending) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert len(it.exchange.pending) == 2
            codes = sorted(code for code, _ in await asyncio.gather(*requests))
            assert codes == [401, 401, 503, 503, 503, 503]
            assert it.exchange.pending == {}
    run(scenario)


def test_a_refreshed_id_token_keeps_the_session_token(tmp_path):
    async def scenario():
        async with lab(tmp_path) as it:
            value = it.proxy.sign_in("alice")
            _, first = await it.token([f"{NAME}={value}"])
            it.clock.now += 60
            # The same cookie, past --recheck: a new ID token (new iat, exp), same sid.
            refreshed = it.proxy.refresh(value)
            assert await it.token([f"{NAME}={value}"]) == (200, first)
            # The refreshed cookie oauth2-proxy set: new bytes, same session.
            assert await it.token([f"{NAME}={refreshed}"]) == (200, first)
            assert len(it.consul.logins) == 1
            # Control: the same person signing in again is a new session.
            code, second = await it.token([f"{NAME}={it.proxy.sign_in('alice')}"])
            assert code == 200 and second != first
            assert len(it.consul.logins) == 2
    run(scenario)


def test_the_cookie_cache_asks_oauth2_proxy_again_after_recheck(tmp_path):
    async def scenario():
        async with lab(tmp_path, "--recheck", "10s") as it:
            value = it.proxy.sign_in("alice")
            _, first = await it.token([f"{NAME}={value}"])
            it.clock.now += 9
            await it.token([f"{NAME}={value}"])
            assert it.proxy.calls == 1
            it.clock.now += 2
            assert await it.token([f"{NAME}={value}"]) == (200, first)
            assert it.proxy.calls == 2
            # oauth2-proxy ends the session: refused, and its token logged out.
            del it.proxy.sessions[value]
            it.clock.now += 11
            assert await it.token([f"{NAME}={value}"]) == (401, None)
            await it.settle()
            assert it.consul.tokens == {}
            assert it.exchange.sessions == {} and it.exchange.seen == {}
    run(scenario)


@pytest.mark.parametrize("signed_out_with", ["as set", "reordered", "an extra split name"])
def test_after_sign_out_every_spelling_is_refused_without_a_login_also_after_a_restart(
        tmp_path, signed_out_with):
    async def scenario():
        async with lab(tmp_path) as it:
            a, b = halves(it.proxy.sign_in("alice"))
            other = it.proxy.sign_in("bob")
            await it.token(SPELLINGS["as set"](a, b))
            _, bobs = await it.token([f"{NAME}={other}"])
            assert len(it.consul.logins) == 2
            assert await it.sign_out(SPELLINGS[signed_out_with](a, b)) == 204
            # Logged out before the answer.
            assert len(it.consul.logged_out) == 1
            # The spelling in the cookie cache: refused without asking oauth2-proxy.
            calls = it.proxy.calls
            assert await it.token(SPELLINGS["as set"](a, b)) == (401, None)
            assert it.proxy.calls == calls
            for attempt in ("now", "after --recheck", "after a restart"):
                if attempt == "after --recheck":
                    it.clock.now += 30
                if attempt == "after a restart":
                    await it.restart()
                for name, spell in SPELLINGS.items():
                    assert await it.token(spell(a, b)) == (401, None), (attempt, name)
                # The refreshed cookie of that session, too.
                refreshed = it.proxy.refresh(f"{a}{b}")
                assert await it.token([f"{NAME}={refreshed}"]) == (401, None), attempt
                # Control: another session is untouched (after a restart: a new login).
                code, token = await it.token([f"{NAME}={other}"])
                assert code == 200 and (token == bobs or attempt == "after a restart")
            assert [body["Meta"]["user"] for body in it.consul.logins] == ["alice", "bob", "bob"]
            state = tmp_path / "signed-out.json"
            assert stat.S_IMODE(state.stat().st_mode) == 0o600
            # Only hashes: no cookie, no token.
            assert a not in state.read_text() and b not in state.read_text()
            assert len(json.loads(state.read_text())["signed_out"]) == 1
    run(scenario)


def test_sign_out_is_post_only(tmp_path):
    async def scenario():
        async with lab(tmp_path) as it:
            value = it.proxy.sign_in("alice")
            _, token = await it.token([f"{NAME}={value}"])
            for method in ("GET", "PUT", "DELETE"):
                assert await it.sign_out([f"{NAME}={value}"], method=method) == 405
            assert await it.token([f"{NAME}={value}"]) == (200, token)
            assert not (tmp_path / "signed-out.json").exists()
    run(scenario)


def test_nginx_sign_out_subrequest_a_post_without_body_or_length_is_recorded(tmp_path):
    """What nginx sends (proxy_method POST, proxy_pass_request_body off,
    Content-Length ""): no body and no Content-Length."""
    async def scenario():
        async with lab(tmp_path) as it:
            value = it.proxy.sign_in("alice")
            await it.token([f"{NAME}={value}"])
            port = int(it.url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"POST /sign-out HTTP/1.1\r\nHost: edge_token_exchange\r\n"
                         f"Cookie: {NAME}={value}\r\nConnection: close\r\n\r\n".encode())
            status = (await reader.readline()).decode()
            writer.close()
            assert status.startswith("HTTP/1.1 204"), status
            assert await it.token([f"{NAME}={value}"]) == (401, None)
            assert len(it.exchange.signed_out) == 1
    run(scenario)


def test_unauthenticated_sign_outs_record_nothing(tmp_path):
    async def scenario():
        async with lab(tmp_path) as it:
            # One real sign-out: the file exists.
            value = it.proxy.sign_in("alice")
            await it.token([f"{NAME}={value}"])
            assert await it.sign_out([f"{NAME}={value}"]) == 204
            state = tmp_path / "signed-out.json"
            before = (state.read_bytes(), state.stat().st_mtime_ns)
            junk = ([[f"{NAME}={secrets.token_urlsafe(24)}"] for _ in range(900)]
                    + [[f"{NAME}_0={n}; {NAME}_1=x"] for n in range(50)]
                    + [[f"{NAME}=a; {NAME}=b"], [f"{NAME}=a b"], [], ["x=1"]] * 13
                    + [[f"{NAME}={value}; {NAME}=again"]] * 48)
            assert len(junk) == 1050
            for start in range(0, len(junk), 50):
                codes = await asyncio.gather(*(it.sign_out(c) for c in junk[start:start + 50]))
                assert set(codes) == {204}
            assert (state.read_bytes(), state.stat().st_mtime_ns) == before
            assert len(it.exchange.signed_out) == 1
            assert len(it.exchange.seen) == 1 and it.exchange.sessions == {}
            assert len(it.consul.logins) == 1
    run(scenario)


def test_per_person_cap_logs_out_the_oldest_session(tmp_path, caplog):
    async def scenario():
        async with lab(tmp_path, "--max-sessions-per-person", "2") as it:
            cookies = [[f"{NAME}={it.proxy.sign_in('alice')}"] for _ in range(3)]
            bobs = [f"{NAME}={it.proxy.sign_in('bob')}"]
            _, bob_token = await it.token(bobs)
            tokens = [(await it.token(c))[1] for c in cookies]
            await it.settle()
            oldest = it.consul.logged_out
            assert len(oldest) == 1 and tokens[0] not in it.consul.tokens
            assert all(t in it.consul.tokens for t in tokens[1:])
            line = next(m for m in caplog.messages if "--max-sessions-per-person" in m)
            assert "'alice'" in line and oldest[0] in line
            # Control: the other person keeps theirs.
            assert await it.token(bobs) == (200, bob_token)
            # The oldest session comes back: a new login; the next oldest goes.
            code, again = await it.token(cookies[0])
            await it.settle()
            assert code == 200 and again not in tokens and tokens[1] not in it.consul.tokens
            assert sorted(len(ids) for ids in it.exchange.people.values()) == [1, 2]
    caplog.set_level(logging.INFO, logger="consul-edge-exchange")
    run(scenario)


def test_logins_over_the_rate_limit_get_429(tmp_path, caplog):
    async def scenario():
        async with lab(tmp_path, "--logins-per-minute", "3", "--max-sessions-per-person", "10") as it:
            cookies = [[f"{NAME}={it.proxy.sign_in('alice')}"] for _ in range(4)]
            codes = [(await it.token(c))[0] for c in cookies]
            assert codes == [200, 200, 200, 429]
            assert len(it.consul.logins) == 3
            assert any("'alice'" in r.getMessage() and "--logins-per-minute" in r.getMessage()
                       for r in caplog.records)
            # Sessions already held are not limited; another person is not either.
            assert (await it.token(cookies[0]))[0] == 200
            assert (await it.token([f"{NAME}={it.proxy.sign_in('bob')}"]))[0] == 200
            # A refill of one login every 60/3 s.
            it.clock.now += 20
            assert (await it.token(cookies[3]))[0] == 200
            assert (await it.token([f"{NAME}={it.proxy.sign_in('alice')}"]))[0] == 429
    caplog.set_level(logging.INFO, logger="consul-edge-exchange")
    run(scenario)


def test_an_id_token_without_issuer_or_subject_is_refused(tmp_path, caplog):
    async def scenario():
        async with lab(tmp_path) as it:
            for claims in ({"iss": None}, {"sub": None}, {"sid": None, "auth_time": None, "iat": None}):
                value = it.proxy.sign_in("alice", **claims)
                assert await it.token([f"{NAME}={value}"]) == (403, None)
                assert await it.sign_out([f"{NAME}={value}"]) == 204
            assert it.consul.logins == [] and it.exchange.seen == {}
            assert len(it.exchange.signed_out) == 0
            assert sum("no Consul token" in r.getMessage() for r in caplog.records) == 3
    caplog.set_level(logging.INFO, logger="consul-edge-exchange")
    run(scenario)


@pytest.mark.parametrize("down", ["oauth2-proxy", "Consul"])
def test_fails_closed_when_it_cannot_ask(tmp_path, down):
    async def scenario():
        closed = closed_port_url()
        async with lab(tmp_path, **({"proxy_url": closed} if down == "oauth2-proxy" else
                                    {"consul_url": closed})) as it:
            value = it.proxy.sign_in("alice")
            assert await it.token([f"{NAME}={value}"]) == (503, None)
            assert it.exchange.pending == {} and it.exchange.logging_in == {}
            if down == "oauth2-proxy":
                assert await it.sign_out([f"{NAME}={value}"]) == 503
    run(scenario)


@pytest.mark.parametrize(("stale_reads", "status", "kept"), [
    (0, 200, True),
    (3, 200, True),
    # Never accepted within --token-wait: fail closed, and the token goes.
    (10**6, 503, False),
])
def test_a_new_token_is_handed_out_only_once_the_agent_accepts_it(tmp_path, stale_reads, status, kept):
    async def scenario():
        async with lab(tmp_path, "--token-wait", "0.3") as it:
            it.consul.stale_reads = stale_reads
            code, token = await it.token([f"{NAME}={it.proxy.sign_in('alice')}"])
            await it.settle()
            assert code == status and (token is not None) == kept
            assert len(it.consul.logins) == 1 and bool(it.consul.tokens) == kept
            reads = sum(it.consul.self_reads.values())
            assert reads == stale_reads + 1 if kept else reads > 1, reads
    run(scenario)


def test_at_stop_every_token_is_logged_out(tmp_path):
    async def scenario():
        async with lab(tmp_path) as it:
            for user in ("alice", "bob", "carol"):
                await it.token([f"{NAME}={it.proxy.sign_in(user)}"])
            assert len(it.consul.tokens) == 3
            await it.exchange.log_out_all()
            assert it.consul.tokens == {} and it.exchange.sessions == {} and it.exchange.people == {}
    run(scenario)


def test_caches_stay_within_their_caps_under_ten_thousand_junk_cookies(tmp_path, caplog):
    """In process (the stand-ins' logic without HTTP): 10 000 requests."""
    async def scenario():
        async with lab(tmp_path, "--max-sessions", "5", "--max-signed-out", "10",
                       "--max-sessions-per-person", "50", "--logins-per-minute", "1000") as it:
            ex = it.exchange

            async def ask(pairs, forwarded):
                code, headers = it.proxy.answer("; ".join(f"{n}={v}" for n, v in pairs))
                return SimpleNamespace(code=code, headers=tornado.httputil.HTTPHeaders(headers))

            async def login(id_token, user, signed_in_at):
                return it.consul.login({"Meta": {"user": user}})

            async def log_out(session, why):
                it.consul.tokens.pop(session.secret_id, None)

            ex.ask_oauth2_proxy, ex.login, ex.log_out = ask, login, log_out
            value = it.proxy.sign_in("alice")
            for n in range(5000):
                pairs = edge.session_cookies([f"{NAME}={secrets.token_hex(8)}; {NAME}_0=x{n}"], NAME)
                assert (await ex.token_for(pairs, {})).status == 401
            assert len(ex.seen) == 0 and len(ex.sessions) == 0 and len(ex.buckets) == 0
            for n in range(5000):
                pairs = edge.session_cookies([f"{NAME}={value}; {NAME}_{n % 100}=junk{n}"], NAME)
                assert (await ex.token_for(pairs, {})).status == 200
                assert len(ex.seen) <= 20
            assert len(it.consul.logins) == 1
            # Many people, many sessions: at most --max-sessions held.
            people = [it.proxy.sign_in(f"user{n}") for n in range(200)]
            for person in people:
                await ex.token_for([(NAME, person)], {})
                assert len(ex.sessions) <= 5 and len(ex.people) <= 5 and len(ex.buckets) <= 5
            await it.settle()
            assert len(it.consul.tokens) == 5
            # Signed out: at most --max-signed-out, on disk too.
            for person in people[:30]:
                await ex.sign_out([(NAME, person)], {})
            assert len(ex.signed_out) == 10
            assert len(json.loads((tmp_path / "signed-out.json").read_text())["signed_out"]) == 10
            assert any("--max-signed-out" in r.getMessage() for r in caplog.records)
            assert ex.pending == {} and ex.logging_in == {}
    caplog.set_level(logging.INFO, logger="consul-edge-exchange")
    run(scenario)


def test_failed_logouts_to_retry_are_capped(tmp_path):
    async def scenario():
        async with lab(tmp_path, "--max-sessions", "3") as it:
            it.consul.refuse_logout = True
            for n in range(10):
                await it.token([f"{NAME}={it.proxy.sign_in(f'user{n}')}"])
            await it.settle()
            assert len(it.exchange.to_log_out) == 3
            it.consul.refuse_logout = False
            await it.exchange.sweep()
            assert it.exchange.to_log_out == {}
    run(scenario)


def test_the_sweep_drops_what_has_ended(tmp_path):
    async def scenario():
        async with lab(tmp_path, "--session-lifetime", "1h", "--logins-per-minute", "2") as it:
            value = it.proxy.sign_in("alice")
            await it.token([f"{NAME}={value}"])
            await it.sign_out([f"{NAME}={it.proxy.sign_in('bob')}"])
            assert len(it.exchange.signed_out) == 1 and it.exchange.buckets
            it.clock.now += 3601
            await it.exchange.sweep()
            await it.settle()
            ex = it.exchange
            assert (ex.sessions, ex.people, ex.seen, ex.buckets, len(ex.signed_out)) == ({}, {}, {}, {}, 0)
            assert it.consul.tokens == {}
            assert json.loads((tmp_path / "signed-out.json").read_text()) == {"signed_out": {}}
    run(scenario)


# --- the signed-out set on disk ------------------------------------------------

def signed_out(state_dir: Path, cap: int = 10) -> edge.SignedOut:
    return edge.SignedOut(state_dir, cap, time.time)


def test_the_signed_out_set_is_read_back_without_what_has_ended(tmp_path):
    now = time.time()
    live, ended = "a" * 64, "b" * 64
    (tmp_path / "signed-out.json").write_text(json.dumps({"signed_out": {live: now + 60, ended: now - 1}}))
    (tmp_path / ".signed-out.json.leftover").write_text("half a write")
    state = signed_out(tmp_path)
    assert live in state and ended not in state and len(state) == 1
    assert json.loads((tmp_path / "signed-out.json").read_text()) == {"signed_out": {live: now + 60}}
    assert [p.name for p in tmp_path.iterdir()] == ["signed-out.json"]


def test_over_the_cap_the_one_that_ends_first_is_forgotten(tmp_path, caplog):
    state = signed_out(tmp_path, cap=3)
    now = time.time()
    for n, until in enumerate([50, 10, 40, 30]):
        state.add(f"{n:064x}", now + until)
    assert sorted(state.until.values()) == [now + 30, now + 40, now + 50]
    assert "forgot the one that ends first" in caplog.text
    # Read back over a lower cap: trimmed the same way.
    assert sorted(signed_out(tmp_path, cap=2).until.values()) == [now + 40, now + 50]


@pytest.mark.parametrize("content", [
    "{", "[]", '{"signed_out": []}', '{"signed_out": {"x": 1}}',
    '{"signed_out": {"' + "a" * 64 + '": "soon"}}', '{"signed_out": {"' + "a" * 64 + '": true}}',
])
def test_a_broken_state_file_stops_the_start(tmp_path, content):
    (tmp_path / "signed-out.json").write_text(content)
    with pytest.raises(edge.StateError, match="remove it"):
        signed_out(tmp_path)


def test_a_failed_write_is_logged_and_retried(tmp_path, caplog):
    state = signed_out(tmp_path / "missing")
    state.add("c" * 64, time.time() + 60)
    assert state.unsaved and "cannot write the signed-out set" in caplog.text
    (tmp_path / "missing").mkdir()
    state.expire()
    assert not state.unsaved and (tmp_path / "missing" / "signed-out.json").exists()
