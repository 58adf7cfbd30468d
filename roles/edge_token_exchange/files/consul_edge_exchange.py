#!/usr/bin/python3
"""The edge's token exchange: one Consul token per signed-in session.

nginx asks this service (auth_request, GET /token) before every /ui/ and /v1/
request and passes the browser's Cookie header on. The exchange asks
oauth2-proxy whether the session cookies are valid (GET /oauth2/auth; with
set_authorization_header the 202 answer carries the ID token oauth2-proxy
verified) and exchanges that ID token once per session at Consul's
/v1/acl/login for a token of the roles the person's groups bind to. The
answer to nginx carries that token (X-Consul-Token) and the user name.

- A session is what oauth2-proxy verified, never the cookie bytes: its
  identity is a SHA-256 over the ID token's (iss, sub, sid), or (iss, sub,
  auth_time) without a sid, or (iss, sub, iat) without either (the payload is
  read unverified: oauth2-proxy verified it, Consul verifies it again at
  login). A token without iss or sub is refused (403). Every spelling of one
  session's cookies (split, reordered, with extra cookies) therefore maps to
  the one cached Consul token; a new spelling costs one question to
  oauth2-proxy, never a login at Consul. An ID token refreshed by oauth2-proxy
  (same sid) keeps the session's token.
- A bounded LRU maps a SHA-256 of the cookies as sent to the identity
  oauth2-proxy confirmed for them; oauth2-proxy is asked again about those
  cookies after --recheck seconds, so a session it ends stops working within
  that time. Only 202 answers are remembered.
- A session's token is used until the session ends (the sign-in time plus the
  session lifetime, or the token's own expiry, whichever is first), then
  logged out (/v1/acl/logout). A person (iss, sub) holds at most
  --max-sessions-per-person sessions: one more logs the oldest one's token
  out. Logins at Consul are limited per person (--logins-per-minute, a token
  bucket); beyond that the answer is 429.
- Sign-out (POST /sign-out; nginx calls it before oauth2-proxy clears the
  cookie) asks oauth2-proxy about the cookies; only a session it accepts is
  recorded: its identity goes into the signed-out set until the session would
  have ended and its token is logged out before the answer. oauth2-proxy's
  cookie sessions cannot be revoked, so every later spelling of that session
  is refused here (401) without a login. The set is written to
  --state-dir/signed-out.json (atomically, mode 0600) and read at start: a
  restart forgets no sign-out. It holds at most --max-signed-out entries.
- Everything a client can make grow is bounded: the sessions, the cookie LRU,
  the checks under way, the per-person buckets, the signed-out set and the
  logouts to retry. An unauthenticated request stores nothing.
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
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import signal
import socket
import tempfile
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import NamedTuple

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
# Cookie spellings remembered per session held (--max-sessions).
SPELLINGS_PER_SESSION = 4
STATE_FILE = "signed-out.json"
IDENTITY = re.compile(r"[0-9a-f]{64}")


class BadSession(ValueError):
    """The request's session cookies cannot be one oauth2-proxy set."""


class NoIdentity(ValueError):
    """The ID token names no issuer, subject or session."""


class Upstream(Exception):
    """oauth2-proxy or Consul could not be asked (fail closed: 503)."""


class StateError(Exception):
    """The state file cannot be read: the exchange does not start without it."""


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


def digest(parts: Iterable[str]) -> str:
    """SHA-256 over the parts, each length-prefixed so that no two different
    lists hash the same input."""
    sha = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        sha.update(len(data).to_bytes(4, "big") + data)
    return sha.hexdigest()


def cookie_key(pairs: list[tuple[str, str]]) -> str:
    """The cookie LRU's key: a hash of the cookies exactly as sent (what
    oauth2-proxy was asked about), never the raw value."""
    return digest(part for pair in pairs for part in pair)


def jwt_claims(token: str) -> dict:
    """The payload of a JWT, NOT verified (oauth2-proxy verified it, Consul
    verifies it again); {} when it is not a JWT."""
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


@dataclasses.dataclass(frozen=True)
class Identity:
    """What oauth2-proxy verified about a session."""

    session: str  # SHA-256 of (iss, sub, and sid, auth_time or iat)
    person: str  # SHA-256 of (iss, sub)
    signed_in_at: float | None  # auth_time, else iat


def identity_of(claims: dict) -> Identity:
    iss, sub = claims.get("iss"), claims.get("sub")
    if not isinstance(iss, str) or not iss or not isinstance(sub, str) or not sub:
        raise NoIdentity("the ID token has no iss or sub")
    sid = claims.get("sid")
    auth_time, iat = numeric(claims.get("auth_time")), numeric(claims.get("iat"))
    if isinstance(sid, str) and sid:
        which = ("sid", sid)
    elif auth_time is not None:
        which = ("auth_time", repr(auth_time))
    elif iat is not None:
        which = ("iat", repr(iat))
    else:
        raise NoIdentity("the ID token has none of sid, auth_time and iat")
    return Identity(session=digest((iss, sub, *which)), person=digest((iss, sub)),
                    signed_in_at=auth_time if auth_time is not None else iat)


def consul_time(text: str) -> float | None:
    """Consul's ExpirationTime (RFC 3339, nanoseconds) as a Unix time."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text or "")
    if not match:
        return None
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    stamp = datetime.datetime.fromisoformat(match.group(1) + zone).timestamp()
    return stamp + float("0" + (match.group(2) or ""))


def iso(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class Session:
    identity: str
    person: str
    user: str
    secret_id: str
    accessor_id: str
    ends_at: float


@dataclasses.dataclass
class Seen:
    """What oauth2-proxy said about one spelling of the cookies."""

    identity: Identity
    user: str
    checked_at: float


@dataclasses.dataclass
class Bucket:
    tokens: float
    at: float


class Answer(NamedTuple):
    status: int
    session: Session | None = None
    reason: str = ""


class SignedOut:
    """Identities signed out, each until its session would have ended;
    written to a file at each change and read at start."""

    def __init__(self, state_dir: Path, cap: int, clock: Callable[[], float]) -> None:
        self.path = state_dir / STATE_FILE
        self.cap = cap
        self.clock = clock
        self.until: dict[str, float] = {}
        self.unsaved = False
        self.load()

    def load(self) -> None:
        for stale in self.path.parent.glob(f".{STATE_FILE}.*"):
            with contextlib.suppress(OSError):
                stale.unlink()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            raise StateError(f"{self.path}: {err} (remove it to forget every sign-out)") from err
        entries = data.get("signed_out") if isinstance(data, dict) else None
        if not isinstance(entries, dict) or not all(
                isinstance(k, str) and IDENTITY.fullmatch(k) and numeric(v) is not None
                for k, v in entries.items()):
            raise StateError(f"{self.path}: not a signed-out set (remove it to forget every sign-out)")
        now = self.clock()
        self.until = {k: float(v) for k, v in entries.items() if v > now}
        self.trim()
        if len(self.until) != len(entries):
            self.save()
        LOG.info("%d signed-out sessions read from %s", len(self.until), self.path)

    def __contains__(self, identity: str) -> bool:
        until = self.until.get(identity)
        return until is not None and until > self.clock()

    def __len__(self) -> int:
        return len(self.until)

    def add(self, identity: str, until: float) -> None:
        if self.until.get(identity, 0.0) >= until:
            return
        self.until[identity] = until
        self.trim()
        self.save()

    def trim(self) -> None:
        while len(self.until) > self.cap:
            oldest = min(self.until, key=self.until.__getitem__)
            LOG.warning("more signed-out sessions than --max-signed-out (%d): forgot the one that "
                        "ends first (%s)", self.cap, iso(self.until.pop(oldest)))

    def expire(self) -> None:
        now = self.clock()
        ended = [k for k, until in self.until.items() if until <= now]
        for identity in ended:
            del self.until[identity]
        if ended or self.unsaved:
            self.save()

    def save(self) -> None:
        """Write a temporary file, fsync it, rename it over the old one: the
        file on disk is always one whole set."""
        self.unsaved = True
        body = json.dumps({"signed_out": self.until}, separators=(",", ":")).encode()
        try:
            fd, temporary = tempfile.mkstemp(prefix=f".{STATE_FILE}.", dir=self.path.parent)
            try:
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(body)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as err:
            LOG.error("cannot write the signed-out set to %s (%r); a restart now would forget "
                      "the latest sign-outs; retrying", str(self.path), str(err))
            return
        self.unsaved = False


class Exchange:
    """The sessions and the calls to oauth2-proxy and Consul."""

    def __init__(self, args: argparse.Namespace, clock: Callable[[], float] = time.time) -> None:
        self.args = args
        self.clock = clock
        # identity -> session, least recently used first.
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        # person -> their sessions' identities, oldest first.
        self.people: dict[str, OrderedDict[str, None]] = {}
        # cookie key -> what oauth2-proxy said about those cookies.
        self.seen: OrderedDict[str, Seen] = OrderedDict()
        self.max_seen = SPELLINGS_PER_SESSION * args.max_sessions
        # One check per cookie key and one login per identity at a time.
        self.pending: dict[str, asyncio.Future] = {}
        self.logging_in: dict[str, asyncio.Future] = {}
        self.buckets: OrderedDict[str, Bucket] = OrderedDict()
        self.signed_out = SignedOut(Path(args.state_dir), args.max_signed_out, clock)
        # accessor ID -> (secret ID, end, user) of logouts that failed.
        self.to_log_out: dict[str, tuple[str, float, str]] = {}
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
        meta = {"user": user, "signed_in_at": iso(signed_in_at)}
        body = json.dumps({"AuthMethod": self.args.auth_method, "BearerToken": id_token, "Meta": meta})
        answer = await self.fetch(self.args.consul + "/v1/acl/login", method="POST", body=body)
        if answer.code == 200:
            return json.loads(answer.body)
        if answer.code in (401, 403):
            raise PermissionError(answer.body.decode("utf-8", "replace").strip()[:300])
        said = answer.body.decode("utf-8", "replace").strip()[:300] if answer.body else answer.error
        raise Upstream(f"Consul /v1/acl/login: {answer.code} {said}")

    async def usable(self, secret_id: str) -> None:
        """Wait until the local agent resolves a token just made, the way it
        resolves the session's requests: with a stale read on its server, which
        may not have applied the login yet ("ACL not found" for a few
        milliseconds); once resolved, the agent caches the token. The
        agent's member list needs no rights (it filters), so any answer but
        "ACL not found" means the token is known. Raises Upstream when it does
        not settle within --token-wait."""
        deadline = time.monotonic() + self.args.token_wait
        while True:
            answer = await self.fetch(self.args.consul + "/v1/agent/members",
                                      headers={"X-Consul-Token": secret_id})
            said = answer.body.decode("utf-8", "replace").strip()[:200] if answer.body else answer.error
            if answer.code == 200 or (answer.code == 403 and "acl not found" not in str(said).lower()):
                return
            if answer.code != 403 or time.monotonic() >= deadline:
                raise Upstream(f"Consul /v1/agent/members with a new token: {answer.code} {said}")
            await asyncio.sleep(0.02)

    async def log_out(self, session: Session, why: str) -> None:
        try:
            answer = await self.fetch(self.args.consul + "/v1/acl/logout", method="POST", body="",
                                      headers={"X-Consul-Token": session.secret_id})
        except Upstream as err:
            answer = None
            LOG.warning("logout of %r's token %s failed (%r); retrying", session.user,
                        session.accessor_id, str(err))
        # 403 "ACL not found": expired or deleted already.
        if answer is not None and answer.code in (200, 403):
            LOG.info("logged out %r's token %s (%s)", session.user, session.accessor_id, why)
            self.to_log_out.pop(session.accessor_id, None)
            return
        if answer is not None:
            LOG.warning("logout of %r's token %s answered %s; retrying", session.user,
                        session.accessor_id, answer.code)
        self.to_log_out[session.accessor_id] = (session.secret_id, session.ends_at, session.user)
        while len(self.to_log_out) > self.args.max_sessions:
            first = min(self.to_log_out, key=lambda a: self.to_log_out[a][1])
            LOG.warning("more failed logouts than --max-sessions: gave up on token %s (it expires "
                        "in Consul at %s)", first, iso(self.to_log_out.pop(first)[1]))

    def spawn_log_out(self, session: Session, why: str) -> None:
        """Log out without making the request wait (kept until done)."""
        task = asyncio.ensure_future(self.log_out(session, why))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # --- the state ---------------------------------------------------------
    def forget(self, identity: str) -> Session | None:
        """Take a session out of the cache (the caller logs its token out)."""
        session = self.sessions.pop(identity, None)
        if session is not None:
            mine = self.people.get(session.person)
            if mine is not None:
                mine.pop(identity, None)
                if not mine:
                    del self.people[session.person]
        return session

    def end(self, identity: str, why: str) -> None:
        session = self.forget(identity)
        if session is not None:
            self.spawn_log_out(session, why)

    def live(self, identity: str) -> Session | None:
        session = self.sessions.get(identity)
        if session is None:
            return None
        if self.clock() >= session.ends_at:
            self.end(identity, "the session ended")
            return None
        self.sessions.move_to_end(identity)
        return session

    def remember(self, key: str, seen: Seen) -> None:
        self.seen.pop(key, None)
        self.seen[key] = seen
        while len(self.seen) > self.max_seen:
            self.seen.popitem(last=False)

    def store(self, session: Session) -> None:
        old = self.forget(session.identity)
        if old is not None:
            self.spawn_log_out(old, "replaced by a new login of the session")
        self.sessions[session.identity] = session
        mine = self.people.setdefault(session.person, OrderedDict())
        mine[session.identity] = None
        while len(mine) > self.args.max_sessions_per_person:
            oldest = self.sessions[next(iter(mine))]
            LOG.warning("%r has more than %d sessions (--max-sessions-per-person): logging out the "
                        "oldest one's token %s", oldest.user, self.args.max_sessions_per_person,
                        oldest.accessor_id)
            self.end(oldest.identity, "more sessions than --max-sessions-per-person")
        while len(self.sessions) > self.args.max_sessions:
            self.end(next(iter(self.sessions)), "more sessions than --max-sessions")

    def may_log_in(self, person: str) -> bool:
        """The person's token bucket: --logins-per-minute, refilled evenly."""
        now = self.clock()
        rate = self.args.logins_per_minute
        bucket = self.buckets.pop(person, None) or Bucket(tokens=rate, at=now)
        bucket.tokens = min(rate, bucket.tokens + (now - bucket.at) * rate / 60)
        bucket.at = now
        self.buckets[person] = bucket
        while len(self.buckets) > self.args.max_sessions:
            self.buckets.popitem(last=False)
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    # --- GET /token --------------------------------------------------------
    async def token_for(self, pairs: list[tuple[str, str]], forwarded: dict[str, str]) -> Answer:
        key = cookie_key(pairs)
        seen = self.seen.get(key)
        if seen is not None and self.clock() - seen.checked_at < self.args.recheck:
            self.seen.move_to_end(key)
            if seen.identity.session in self.signed_out:
                return Answer(401, None, "signed out")
            session = self.live(seen.identity.session)
            if session is not None:
                return Answer(200, session)
        # One check per spelling at a time: the UI sends its first requests
        # in parallel.
        if key in self.pending:
            return await asyncio.shield(self.pending[key])
        if len(self.pending) >= self.args.max_sessions:
            raise Upstream(f"more than {self.args.max_sessions} checks under way")
        return await self.once(self.pending, key, self.check(pairs, key, forwarded))

    @staticmethod
    async def once(pending: dict[str, asyncio.Future], key: str, work: Awaitable[Answer]) -> Answer:
        future = asyncio.get_running_loop().create_future()
        pending[key] = future
        try:
            result = await work
        except BaseException as err:
            future.set_exception(err)
            future.exception()
            raise
        finally:
            pending.pop(key, None)
        future.set_result(result)
        return result

    async def verified(self, pairs: list[tuple[str, str]],
                       forwarded: dict[str, str]) -> tuple[Answer | None, Identity | None, str, str]:
        """Ask oauth2-proxy: (refusal, identity, ID token, user name)."""
        answer = await self.ask_oauth2_proxy(pairs, forwarded)
        if answer.code in (401, 403):
            return Answer(answer.code, None, f"oauth2-proxy answered {answer.code}"), None, "", ""
        if answer.code != 202:
            raise Upstream(f"oauth2-proxy answered {answer.code}")
        user = (answer.headers.get("X-Auth-Request-Preferred-Username")
                or answer.headers.get("X-Auth-Request-User") or "")
        scheme, _, id_token = answer.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not id_token or len(id_token) > MAX_ID_TOKEN_BYTES:
            refused = Answer(403, None, "the provider gave no ID token (oauth2-proxy needs "
                                        "set_authorization_header and an OpenID Connect provider)")
            return refused, None, "", user
        try:
            identity = identity_of(jwt_claims(id_token))
        except NoIdentity as err:
            return Answer(403, None, f"{err}: no session to key a token on"), None, "", user
        return None, identity, id_token, user

    async def check(self, pairs: list[tuple[str, str]], key: str, forwarded: dict[str, str]) -> Answer:
        refused, identity, id_token, user = await self.verified(pairs, forwarded)
        if refused is not None or identity is None:
            seen = self.seen.pop(key, None)
            # These very cookies were a session: oauth2-proxy has ended it.
            if seen is not None:
                self.end(seen.identity.session, "oauth2-proxy no longer accepts the session")
            return refused or Answer(403)
        now = self.clock()
        self.remember(key, Seen(identity, user, now))
        if identity.session in self.signed_out:
            return Answer(401, None, "signed out")
        session = self.live(identity.session)
        if session is not None:
            # Also after oauth2-proxy refreshed the ID token: same session.
            return Answer(200, session)
        signed_in_at = identity.signed_in_at if identity.signed_in_at is not None else now
        # oauth2-proxy may still accept a cookie whose session is over here
        # (its own cookie_expire is longer, or the sign-in was long before):
        # no token is made that would end before it is used.
        if signed_in_at + self.args.session_lifetime <= now:
            return Answer(401, None, "the session is older than its lifetime: sign in again")
        if identity.session in self.logging_in:
            return await asyncio.shield(self.logging_in[identity.session])
        return await self.once(self.logging_in, identity.session,
                               self.log_in(identity, id_token, user, signed_in_at))

    async def log_in(self, identity: Identity, id_token: str, user: str, signed_in_at: float) -> Answer:
        if not self.may_log_in(identity.person):
            LOG.warning("%r logged in more than %d times a minute (--logins-per-minute): refused",
                        user, self.args.logins_per_minute)
            return Answer(429, None, "too many logins")
        expires = numeric(jwt_claims(id_token).get("exp"))
        try:
            token = await self.login(id_token, user, signed_in_at)
        except PermissionError as err:
            if expires is not None and expires <= self.clock():
                return Answer(401, None, "the ID token has expired: sign in again")
            return Answer(403, None, f"Consul refused the ID token: {err}")
        ends_at = signed_in_at + self.args.session_lifetime
        token_end = consul_time(token.get("ExpirationTime", ""))
        if token_end is not None:
            ends_at = min(ends_at, token_end)
        session = Session(identity=identity.session, person=identity.person, user=user,
                          secret_id=token["SecretID"], accessor_id=token["AccessorID"], ends_at=ends_at)
        try:
            await self.usable(session.secret_id)
        except Upstream:
            self.spawn_log_out(session, "the new token did not become usable")
            raise
        if identity.session in self.signed_out:
            # Signed out while this login was under way.
            self.spawn_log_out(session, "the session signed out during its login")
            return Answer(401, None, "signed out")
        self.store(session)
        LOG.info("%r signed in: token %s until %s", user, session.accessor_id, iso(ends_at))
        return Answer(200, session)

    # --- POST /sign-out ----------------------------------------------------
    async def sign_out(self, pairs: list[tuple[str, str]], forwarded: dict[str, str]) -> None:
        """Record a session oauth2-proxy accepts as signed out; its token is
        gone from Consul before this returns (a failed logout is retried by
        the sweep). Cookies oauth2-proxy refuses record nothing."""
        refused, identity, _, user = await self.verified(pairs, forwarded)
        if refused is not None or identity is None:
            if refused is not None and refused.status == 403 and user:
                LOG.warning("sign-out of %r not recorded: %s", user, refused.reason)
            return
        now = self.clock()
        signed_in_at = identity.signed_in_at if identity.signed_in_at is not None else now
        until = signed_in_at + self.args.session_lifetime
        if until > now:
            self.signed_out.add(identity.session, until)
        LOG.info("%r signed out (refused until %s)", user, iso(max(until, now)))
        session = self.forget(identity.session)
        if session is not None:
            await self.log_out(session, "signed out")

    # --- housekeeping ------------------------------------------------------
    async def sweep(self) -> None:
        """Sessions that ended, stale cookie spellings, idle buckets,
        signed-out entries past their session's end, and logouts to retry."""
        now = self.clock()
        for identity in [k for k, s in self.sessions.items() if s.ends_at <= now]:
            self.end(identity, "the session ended")
        for key in [k for k, s in self.seen.items() if now - s.checked_at >= self.args.session_lifetime]:
            del self.seen[key]
        rate = self.args.logins_per_minute
        for person in [p for p, b in self.buckets.items() if b.tokens + (now - b.at) * rate / 60 >= rate]:
            del self.buckets[person]
        self.signed_out.expire()
        for accessor_id, (secret_id, ends_at, user) in list(self.to_log_out.items()):
            if ends_at <= now:
                del self.to_log_out[accessor_id]
            else:
                await self.log_out(Session("", "", user, secret_id, accessor_id, ends_at), "retry")

    async def log_out_all(self) -> None:
        sessions = list(self.sessions.values())
        self.sessions.clear()
        self.people.clear()
        await asyncio.gather(*self.background, *(self.log_out(s, "the exchange stops") for s in sessions))


class Handler(tornado.web.RequestHandler):
    def initialize(self, exchange: Exchange) -> None:
        self.exchange = exchange

    def compute_etag(self) -> None:
        return None

    def cookies_sent(self) -> list[tuple[str, str]]:
        """The session cookies; [] when there are none or they are refused."""
        try:
            return session_cookies(self.request.headers.get_list("Cookie"), self.exchange.args.cookie_name)
        except BadSession as err:
            LOG.warning("refused a request from %r: %s", self.request.headers.get("X-Real-IP", "?"), err)
            return []

    def forwarded(self) -> dict[str, str]:
        return {name: self.request.headers[name] for name in
                ("X-Forwarded-Proto", "X-Forwarded-Host", "X-Original-URI", "X-Real-IP")
                if name in self.request.headers}


class TokenHandler(Handler):
    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        pairs = self.cookies_sent()
        if not pairs:
            self.set_status(401)
            return
        try:
            status, session, reason = await self.exchange.token_for(pairs, self.forwarded())
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
        # The session as nginx may count it (blocking queries per session):
        # a hash of the identity, the same for every spelling of the cookie.
        self.set_header("X-Edge-Session", session.identity)


class SignOutHandler(Handler):
    # Other methods: 405 (tornado).
    async def post(self) -> None:
        self.set_header("Cache-Control", "no-store")
        pairs = self.cookies_sent()
        if pairs:
            try:
                await self.exchange.sign_out(pairs, self.forwarded())
            except Upstream as err:
                # nginx then says sign-out is unavailable and keeps the cookie.
                LOG.error("cannot record a sign-out: %r", str(err))
                self.set_status(503)
                return
        # Let the sign-out go on: oauth2-proxy clears the cookie.
        self.set_status(204)


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 8h, 30m or 90s")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def positive(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


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
    parser.add_argument("--state-dir", required=True,
                        help="where the signed-out set is kept (systemd's StateDirectory)")
    parser.add_argument("--session-lifetime", type=parse_duration, default="8h",
                        help="oauth2-proxy's cookie_expire: no token outlives the session")
    parser.add_argument("--recheck", type=parse_duration, default="10s",
                        help="ask oauth2-proxy again about the same cookies after this long")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--token-wait", type=float, default=3.0,
                        help="seconds a new token may take until the local agent accepts it")
    parser.add_argument("--max-sessions", type=positive, default=10000,
                        help="sessions held at once (the cookie LRU holds 4 times as many spellings)")
    parser.add_argument("--max-sessions-per-person", type=positive, default=20,
                        help="a person's sessions held at once; one more logs the oldest one out")
    parser.add_argument("--logins-per-minute", type=positive, default=60,
                        help="logins at Consul per person and minute; beyond it 429")
    parser.add_argument("--max-signed-out", type=positive, default=20000,
                        help="signed-out sessions remembered; beyond it the one that ends first goes")
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
    try:
        asyncio.run(serve(arguments(argv)))
    except StateError as err:
        LOG.error("cannot start: %s", err)
        raise SystemExit(1) from err


if __name__ == "__main__":
    main()
