#!/usr/bin/python3
"""The edge's token exchange: one Consul token per signed-in session.

nginx asks this service (auth_request) before every /ui/ and /v1/ request.
It takes the session cookie oauth2-proxy set, asks oauth2-proxy whether the
session is valid (GET /oauth2/auth; with set_authorization_header the 202
answer carries the user's ID token), and exchanges the ID token once at
Consul's /v1/acl/login for a token of the roles the person's groups bind to.
The answer to nginx carries that token (X-Consul-Token) and the user name.

- The cache is keyed by a SHA-256 of the session cookie(s), never the raw
  value; it holds the token until the session ends (the sign-in time plus the
  session lifetime, or the token's own expiry, whichever is first), then logs
  it out (/v1/acl/logout). oauth2-proxy is asked again after --recheck
  seconds, so an expired session stops working within that time.
- Sign-out (nginx runs /sign-out before oauth2-proxy clears the cookie) logs
  the token out at once and refuses that cookie from then on: oauth2-proxy's
  cookie sessions cannot be revoked, a copied cookie would still be valid
  there.
- Fails closed: when oauth2-proxy or Consul cannot be asked, the answer is
  503 (nginx shows its error page); no answer ever carries another session's
  token or none at all with a 200.
- At stop, every token it holds is logged out: a restart does not leave
  tokens behind in Consul (the next request exchanges again).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import signal
import socket
import time
from collections import OrderedDict

import tornado.httpclient
import tornado.ioloop
import tornado.web

# Log lines quote outside data (names, answers) with %r: a newline in one
# cannot forge a line of the journal.
LOG = logging.getLogger("consul-edge-exchange")

# RFC 6265 cookie-octet: no control characters, space, DQUOTE, comma,
# semicolon or backslash. oauth2-proxy's values are base64url and "|".
COOKIE_VALUE = re.compile(r"^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*$")
MAX_SESSION_COOKIE_BYTES = 16384
MAX_ID_TOKEN_BYTES = 16384


class BadSession(ValueError):
    """The request's session cookies cannot be one oauth2-proxy set."""


def session_cookies(headers: list[str], name: str) -> list[tuple[str, str]]:
    """The session cookie pairs (name, or name_<n> when oauth2-proxy split a
    large session) in the order sent. Raises BadSession on a repeated name, a
    value outside cookie-octet, or more than MAX_SESSION_COOKIE_BYTES; []
    when there is none."""
    split = re.compile(re.escape(name) + r"(_[0-9]{1,2})?")
    pairs: list[tuple[str, str]] = []
    size = 0
    for header in headers:
        for part in header.split(";"):
            cookie_name, sep, value = part.strip(" \t").partition("=")
            if not sep or not split.fullmatch(cookie_name):
                continue
            if any(cookie_name == seen for seen, _ in pairs):
                raise BadSession(f"cookie {cookie_name} sent twice")
            if not COOKIE_VALUE.match(value):
                raise BadSession(f"cookie {cookie_name} has characters outside cookie-octet")
            size += len(cookie_name) + len(value)
            if size > MAX_SESSION_COOKIE_BYTES:
                raise BadSession(f"session cookies over {MAX_SESSION_COOKIE_BYTES} bytes")
            pairs.append((cookie_name, value))
    return pairs


def session_key(pairs: list[tuple[str, str]]) -> str:
    """SHA-256 over the pairs, each part length-prefixed so that no two
    different cookie lists hash the same input."""
    digest = hashlib.sha256()
    for cookie_name, value in pairs:
        for part in (cookie_name, value):
            data = part.encode("ascii")
            digest.update(len(data).to_bytes(4, "big") + data)
    return digest.hexdigest()


def jwt_claims(token: str) -> dict:
    """The payload of a JWT, NOT verified (Consul verifies it); used only for
    the sign-in time and whether it has expired. {} when it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def numeric(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def consul_time(text: str) -> float | None:
    """Consul's ExpirationTime (RFC 3339, nanoseconds) as a Unix time."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text or "")
    if not match:
        return None
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    stamp = datetime.datetime.fromisoformat(match.group(1) + zone).timestamp()
    return stamp + float("0" + (match.group(2) or ""))


@dataclasses.dataclass
class Session:
    secret_id: str
    accessor_id: str
    user: str
    id_token_sha: str
    ends_at: float
    checked_at: float


class Upstream(Exception):
    """oauth2-proxy or Consul could not be asked (fail closed: 503)."""


class Exchange:
    """The sessions and the calls to oauth2-proxy and Consul."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.signed_out: dict[str, float] = {}
        self.pending: dict[str, asyncio.Future] = {}
        self.to_log_out: dict[str, tuple[str, float]] = {}
        self.background: set[asyncio.Task] = set()
        self.http = tornado.httpclient.AsyncHTTPClient()

    # --- oauth2-proxy and Consul -----------------------------------------
    async def fetch(self, url: str, **kwargs) -> tornado.httpclient.HTTPResponse:
        try:
            return await self.http.fetch(url, raise_error=False, connect_timeout=2,
                                         request_timeout=self.args.timeout, **kwargs)
        except (OSError, tornado.httpclient.HTTPClientError) as err:
            raise Upstream(f"{url}: {err}") from err

    async def ask_oauth2_proxy(self, pairs: list[tuple[str, str]],
                               forwarded: dict[str, str]) -> tornado.httpclient.HTTPResponse:
        headers = {"Cookie": "; ".join(f"{n}={v}" for n, v in pairs), **forwarded}
        answer = await self.fetch(self.args.oauth2_proxy + "/oauth2/auth", headers=headers)
        if answer.code == 599:
            raise Upstream(f"oauth2-proxy: {answer.error}")
        return answer

    async def login(self, id_token: str, user: str, signed_in_at: float) -> dict:
        meta = {"user": user, "signed_in_at": datetime.datetime.fromtimestamp(
            signed_in_at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        body = json.dumps({"AuthMethod": self.args.auth_method, "BearerToken": id_token, "Meta": meta})
        answer = await self.fetch(self.args.consul + "/v1/acl/login", method="POST", body=body)
        if answer.code == 200:
            return json.loads(answer.body)
        if answer.code in (401, 403):
            raise PermissionError(answer.body.decode("utf-8", "replace").strip()[:300])
        said = answer.body.decode("utf-8", "replace").strip()[:300] if answer.body else answer.error
        raise Upstream(f"Consul /v1/acl/login: {answer.code} {said}")

    async def log_out(self, session: Session, why: str) -> None:
        try:
            answer = await self.fetch(self.args.consul + "/v1/acl/logout", method="POST", body="",
                                      headers={"X-Consul-Token": session.secret_id})
        except Upstream as err:
            answer = None
            LOG.warning("logout of %r's token %s failed (%r); retrying", session.user,
                        session.accessor_id, err)
        # 403 "ACL not found": expired or deleted already.
        if answer is not None and answer.code in (200, 403):
            LOG.info("logged out %r's token %s (%s)", session.user, session.accessor_id, why)
            self.to_log_out.pop(session.accessor_id, None)
        else:
            if answer is not None:
                LOG.warning("logout of %r's token %s answered %s; retrying", session.user,
                            session.accessor_id, answer.code)
            self.to_log_out[session.accessor_id] = (session.secret_id, session.ends_at)

    # --- the session cache -------------------------------------------------
    def spawn_log_out(self, session: Session, why: str) -> None:
        """Log out without making the request wait (kept until done)."""
        task = asyncio.ensure_future(self.log_out(session, why))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def drop(self, key: str, why: str) -> None:
        session = self.sessions.pop(key, None)
        if session is not None:
            self.spawn_log_out(session, why)

    def store(self, key: str, session: Session) -> None:
        old = self.sessions.pop(key, None)
        if old is not None and old.accessor_id != session.accessor_id:
            self.spawn_log_out(old, "the session's ID token changed")
        self.sessions[key] = session
        while len(self.sessions) > self.args.max_sessions:
            evicted_key = next(iter(self.sessions))
            self.drop(evicted_key, "more sessions than --max-sessions")

    async def token_for(self, pairs: list[tuple[str, str]], key: str,
                        forwarded: dict[str, str]) -> tuple[int, Session | None, str]:
        """(status for nginx, session, reason)."""
        now = time.time()
        if key in self.signed_out:
            return 401, None, "signed out"
        session = self.sessions.get(key)
        if session is not None and now < session.ends_at and now - session.checked_at < self.args.recheck:
            return 200, session, ""
        # One check and at most one login per session at a time: the UI sends
        # its first requests in parallel.
        if key in self.pending:
            return await asyncio.shield(self.pending[key])
        future = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        try:
            result = await self.check(pairs, key, forwarded)
        except BaseException as err:
            future.set_exception(err)
            future.exception()
            raise
        finally:
            self.pending.pop(key, None)
        future.set_result(result)
        return result

    async def check(self, pairs: list[tuple[str, str]], key: str,
                    forwarded: dict[str, str]) -> tuple[int, Session | None, str]:
        answer = await self.ask_oauth2_proxy(pairs, forwarded)
        if answer.code in (401, 403):
            self.drop(key, f"oauth2-proxy answered {answer.code}")
            return answer.code, None, f"oauth2-proxy answered {answer.code}"
        if answer.code != 202:
            raise Upstream(f"oauth2-proxy answered {answer.code}")
        user = (answer.headers.get("X-Auth-Request-Preferred-Username")
                or answer.headers.get("X-Auth-Request-User") or "")
        scheme, _, id_token = answer.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not id_token or len(id_token) > MAX_ID_TOKEN_BYTES:
            self.drop(key, "no ID token")
            return 403, None, ("the provider gave no ID token (oauth2-proxy needs "
                               "set_authorization_header and an OpenID Connect provider)")
        id_token_sha = hashlib.sha256(id_token.encode()).hexdigest()
        now = time.time()
        session = self.sessions.get(key)
        if session is not None and session.id_token_sha == id_token_sha and now < session.ends_at:
            session.checked_at = now
            return 200, session, ""
        claims = jwt_claims(id_token)
        signed_in_at = numeric(claims.get("auth_time")) or numeric(claims.get("iat")) or now
        expires = numeric(claims.get("exp"))
        # oauth2-proxy may still accept a cookie whose session is over here
        # (a cached session ran out, or its own cookie_expire is longer): no
        # token is made that would end before it is used.
        if signed_in_at + self.args.session_lifetime <= now:
            self.drop(key, "the session is older than its lifetime")
            return 401, None, "the session is older than its lifetime: sign in again"
        try:
            token = await self.login(id_token, user, signed_in_at)
        except PermissionError as err:
            self.drop(key, "Consul refused the ID token")
            if expires is not None and expires <= now:
                return 401, None, "the ID token has expired: sign in again"
            return 403, None, f"Consul refused the ID token: {err}"
        ends_at = signed_in_at + self.args.session_lifetime
        token_end = consul_time(token.get("ExpirationTime", ""))
        if token_end is not None:
            ends_at = min(ends_at, token_end)
        session = Session(secret_id=token["SecretID"], accessor_id=token["AccessorID"], user=user,
                          id_token_sha=id_token_sha, ends_at=ends_at, checked_at=now)
        self.store(key, session)
        LOG.info("%r signed in: token %s until %s", user, session.accessor_id,
                 datetime.datetime.fromtimestamp(ends_at, datetime.UTC).isoformat())
        return 200, session, ""

    async def sign_out(self, key: str) -> None:
        """The token is gone from Consul before the sign-out's answer (a
        failed logout is retried by the sweep)."""
        self.signed_out[key] = time.time() + self.args.session_lifetime
        session = self.sessions.pop(key, None)
        if session is not None:
            await self.log_out(session, "signed out")

    async def sweep(self) -> None:
        """Sessions that ended, signed-out keys past any cookie's life, and
        logouts to retry."""
        now = time.time()
        for key in [k for k, s in self.sessions.items() if s.ends_at <= now]:
            self.drop(key, "the session ended")
        for key in [k for k, until in self.signed_out.items() if until <= now]:
            del self.signed_out[key]
        for accessor_id, (secret_id, ends_at) in list(self.to_log_out.items()):
            if ends_at <= now:
                del self.to_log_out[accessor_id]
            else:
                await self.log_out(Session(secret_id, accessor_id, "?", "", ends_at, now), "retry")

    async def log_out_all(self) -> None:
        sessions = list(self.sessions.values())
        self.sessions.clear()
        await asyncio.gather(*self.background, *(self.log_out(s, "the exchange stops") for s in sessions))


class Handler(tornado.web.RequestHandler):
    def initialize(self, exchange: Exchange) -> None:
        self.exchange = exchange

    def compute_etag(self) -> None:
        return None

    def pairs_and_key(self) -> tuple[list[tuple[str, str]], str] | None:
        try:
            pairs = session_cookies(self.request.headers.get_list("Cookie"),
                                    self.exchange.args.cookie_name)
        except BadSession as err:
            LOG.warning("refused a request from %r: %s",
                        self.request.headers.get("X-Real-IP", "?"), err)
            return None
        if not pairs:
            return None
        return pairs, session_key(pairs)


class TokenHandler(Handler):
    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        found = self.pairs_and_key()
        if found is None:
            self.set_status(401)
            return
        pairs, key = found
        forwarded = {name: self.request.headers[name] for name in
                     ("X-Forwarded-Proto", "X-Forwarded-Host", "X-Original-URI", "X-Real-IP")
                     if name in self.request.headers}
        try:
            status, session, reason = await self.exchange.token_for(pairs, key, forwarded)
        except Upstream as err:
            LOG.error("cannot give a token (fail closed): %r", str(err))
            self.set_status(503)
            return
        self.set_status(status)
        if session is None:
            if status == 403:
                LOG.warning("no Consul token for a session: %r", reason)
            return
        self.set_header("X-Consul-Token", session.secret_id)
        self.set_header("X-Edge-User", session.user)


class SignOutHandler(Handler):
    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        found = self.pairs_and_key()
        if found is not None:
            await self.exchange.sign_out(found[1])
        # Always let the sign-out go on: oauth2-proxy clears the cookie.
        self.set_status(204)


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 8h, 30m or 90s")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def sd_notify(message: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        sock.sendall(message.encode())


def make_app(exchange: Exchange) -> tornado.web.Application:
    return tornado.web.Application(
        [(r"/token", TokenHandler, {"exchange": exchange}),
         (r"/sign-out", SignOutHandler, {"exchange": exchange})],
        log_function=lambda handler: None)


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4181)
    parser.add_argument("--oauth2-proxy", default="http://127.0.0.1:4180")
    parser.add_argument("--consul", default="http://127.0.0.1:8500")
    parser.add_argument("--auth-method", required=True)
    parser.add_argument("--cookie-name", required=True)
    parser.add_argument("--session-lifetime", type=parse_duration, default="8h",
                        help="oauth2-proxy's cookie_expire: no token outlives the session")
    parser.add_argument("--recheck", type=parse_duration, default="10s",
                        help="ask oauth2-proxy again about a session after this long")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--max-sessions", type=int, default=10000)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    exchange = Exchange(args)
    server = make_app(exchange).listen(args.port, address=args.address, xheaders=False)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    sweeper = tornado.ioloop.PeriodicCallback(exchange.sweep, 5000)
    sweeper.start()
    LOG.info("listening on %s:%s", args.address, args.port)
    sd_notify("READY=1")
    await stopping.wait()
    sd_notify("STOPPING=1")
    server.stop()
    sweeper.stop()
    await exchange.log_out_all()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    asyncio.run(serve(arguments(argv)))


if __name__ == "__main__":
    main()
