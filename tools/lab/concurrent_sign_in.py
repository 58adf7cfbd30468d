#!/usr/bin/env python3
"""Many people signing in at the edge at once, with plain HTTP (no browser).

Each sign-in is the one a browser makes: GET <ui-url>/oauth2/start?rd=/ui/,
the redirects to the IdP's login form, a POST of the user name and password
(with the form's XSRF token and login challenge), consent, the edge's
/oauth2/callback (where oauth2-proxy exchanges the code at the IdP), and then
GET <ui-url>/v1/agent/self, which must answer 200 with the new session. That
answer is the success test: no cookie name is assumed.

The lab publishes the edge and the IdP on this machine's loopback under
`localhost` and `*.localhost` names that Python does not resolve, so
connections to them go to 127.0.0.1 while the URL keeps the name for TLS
(SNI, certificate check) and the Host header. The lab's web CA is the one
trust anchor.

    .venv/bin/python tools/lab/concurrent_sign_in.py --ui-url https://consul.localhost:8443 \\
        --ca inventories/lab/.secrets/web-ca/web-ca.pem \\
        --secrets-dir inventories/lab/.secrets --count 50

Prints one JSON object: attempts, succeeded, failed, the first errors, the
p50/p99 of a whole sign-in in seconds (successful ones), and the p50/p99 of
each request of the flow (where the time goes). Exit 1 when any
sign-in failed. `run()` returns the same object for a test to assert on.

The sign-ins take turns among the given people (--user, repeated): the
edge's token exchange keeps at most --max-sessions-per-person sessions of a
person (the oldest are logged out, also while in use) and refuses more than
--logins-per-minute logins of a person a minute (429), so spread 50 over
enough people and let a minute pass between two runs.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import threading
import time
import traceback
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import localhost_names

START_PATH = "/oauth2/start?rd=/ui/"
CHECK_PATH = "/v1/agent/self"
MAX_REDIRECTS = 15
FIRST_ERRORS = 5
# A URL's query in an error text (requests quotes the URL it was asked for).
QUERY = re.compile(r"\?[^\s'\")]+")


class SignInError(Exception):
    """One sign-in went wrong; the message says at which step."""


# ----------------------------------------------------------------- cookies

class CookieJar:
    """A browser's cookies, reduced to what a sign-in needs: kept per host
    name (cookies do not tell ports apart), sent to that host only, removed
    when an answer expires them. Path and Domain are not needed here: every
    cookie of the flow is set for "/" of its own host. Python's own jar will
    not send cookies set by plain `localhost`, the edge's name today."""

    def __init__(self) -> None:
        self.by_host: dict[str, dict[str, str]] = {}

    def store(self, url: str, set_cookie_headers: list[str]) -> None:
        host = urllib.parse.urlsplit(url).hostname or ""
        jar = self.by_host.setdefault(host, {})
        for header in set_cookie_headers:
            pair, *attributes = (part.strip() for part in header.split(";"))
            name, sep, value = pair.partition("=")
            if not sep or not name:
                continue
            if not value or _expired(attributes):
                jar.pop(name, None)
            else:
                jar[name] = value

    def header(self, url: str) -> str:
        host = urllib.parse.urlsplit(url).hostname or ""
        return "; ".join(f"{name}={value}" for name, value in self.by_host.get(host, {}).items())


def _expired(attributes: list[str]) -> bool:
    for attribute in attributes:
        key, _, value = attribute.partition("=")
        key = key.strip().lower()
        if key == "max-age":
            try:
                return int(value) <= 0
            except ValueError:
                continue
        if key == "expires":
            try:
                return parsedate_to_datetime(value).timestamp() <= time.time()
            except (TypeError, ValueError):
                continue
    return False


# -------------------------------------------------------------------- form

class LoginForm(HTMLParser):
    """The sign-in form of a page: its action and its hidden fields (the
    login app's `_xsrf` token and `login_challenge`)."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.hidden: dict[str, str] = {}
        self.fields: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "form" and self.action is None:
            self.action = values.get("action", "")
        elif tag == "input" and values.get("name"):
            self.fields.add(values["name"])
            if values.get("type", "").lower() == "hidden":
                self.hidden[values["name"]] = values.get("value", "")

    @classmethod
    def parse(cls, page: str) -> LoginForm:
        form = cls()
        form.feed(page)
        form.close()
        return form


# ----------------------------------------------------------------- sign-in

class Browser:
    """A requests session that follows redirects itself and keeps cookies
    in a CookieJar, so each hop is seen and a failing hop is named."""

    def __init__(self, ca: Path, timeout: float) -> None:
        self.session = requests.Session()
        self.session.verify = str(ca)
        self.session.trust_env = False  # no proxy from the environment
        self.timeout = timeout
        self.cookies = CookieJar()
        # (method and URL without its query, seconds) of every request made.
        self.hops: list[tuple[str, float]] = []

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, url: str, data: dict[str, str] | None = None) -> requests.Response:
        headers = {"Cookie": cookie} if (cookie := self.cookies.header(url)) else {}
        started = time.perf_counter()
        answer = self.session.request(method, url, data=data, headers=headers,
                                      allow_redirects=False, timeout=self.timeout)
        hop = f"{method} {short(url)}"
        # The same URL again (Hydra's /oauth2/auth is met three times): numbered.
        seen = sum(1 for name, _ in self.hops if name.split(" #")[0] == hop)
        self.hops.append((f"{hop} #{seen + 1}" if seen else hop, time.perf_counter() - started))
        self.session.cookies.clear()  # the CookieJar above is the only one
        self.cookies.store(url, answer.raw.headers.getlist("Set-Cookie"))
        return answer

    def follow(self, method: str, url: str, data: dict[str, str] | None = None) -> requests.Response:
        """The request, then its redirects (as GETs) up to a final answer."""
        answer = self.request(method, url, data)
        for _ in range(MAX_REDIRECTS):
            if not answer.is_redirect:
                return answer
            url = urllib.parse.urljoin(answer.url, answer.headers["Location"])
            answer = self.request("GET", url)
        raise SignInError(f"more than {MAX_REDIRECTS} redirects, last {short(url)}")


def short(url: str) -> str:
    """A URL without its query (codes, challenges and states stay out of reports)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def without_queries(text: str) -> str:
    """An error text without the query strings of the URLs it quotes."""
    return QUERY.sub("?...", text)


def failed_answer(step: str, answer: requests.Response) -> SignInError:
    body = " ".join(answer.text[:160].split())
    return SignInError(f"{step}: HTTP {answer.status_code} from {short(answer.url)}: {body}")


def sign_in(ui_url: str, user: str, password: str, ca: Path, timeout: float = 30.0,
            hops: list[tuple[str, float]] | None = None) -> float:
    """One whole sign-in; its duration in seconds, or SignInError. The time
    of each request is appended to `hops` (method and URL without query)."""
    ui_url = ui_url.rstrip("/")
    browser = Browser(ca, timeout)
    started = time.perf_counter()
    try:
        page = browser.follow("GET", ui_url + START_PATH)
        form = LoginForm.parse(page.text) if page.status_code == 200 else None
        if form is None or form.action is None or not {"username", "password"} <= form.fields:
            raise failed_answer("start: no sign-in form", page)
        landed = browser.follow("POST", urllib.parse.urljoin(page.url, form.action),
                                {**form.hidden, "username": user, "password": password})
        if landed.status_code >= 400:
            raise failed_answer("after the form (login, consent, callback)", landed)
        if short(landed.url).startswith(short(page.url)):
            raise failed_answer("the form was refused", landed)
        check = browser.request("GET", ui_url + CHECK_PATH)
        if check.status_code != 200:
            raise failed_answer(f"{CHECK_PATH} with the new session", check)
        return time.perf_counter() - started
    except requests.RequestException as error:
        raise SignInError(f"{type(error).__name__}: {without_queries(str(error))}") from error
    finally:
        browser.close()
        if hops is not None:
            hops.extend(browser.hops)


# ------------------------------------------------------------------- runs

def percentile(samples: list[float], p: float) -> float | None:
    """Nearest-rank percentile; None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def read_password(secrets_dir: Path, user: str) -> str:
    """The lab user's password, generated by the lab_idp role."""
    return (secrets_dir / "lab_idp" / "users" / user).read_text(encoding="utf-8").strip()


def run(ui_url: str, ca: Path | str, secrets_dir: Path | str, users: str | list[str] = "admin",
        count: int = 50, concurrency: int | None = None, timeout: float = 30.0) -> dict:
    """`count` sign-ins, taking turns among `users`, `concurrency` at a time
    (all at once by default); the summary that main() prints."""
    ca, secrets_dir = Path(ca), Path(secrets_dir)
    people = [users] if isinstance(users, str) else list(users)
    passwords = {user: read_password(secrets_dir, user) for user in people}
    workers = max(1, min(concurrency or count, count))
    # Each worker thread waits for the others before its first sign-in, so
    # that the first `workers` sign-ins really run at the same time.
    gate = threading.Barrier(workers)
    local = threading.local()
    hops: list[tuple[str, float]] = []  # list.extend is atomic under the GIL

    def attempt(number: int) -> tuple[float | None, str | None]:
        if not getattr(local, "started", False):
            local.started = True
            with suppress(threading.BrokenBarrierError):
                gate.wait(timeout)
        user = people[number % len(people)]
        try:
            return sign_in(ui_url, user, passwords[user], ca, timeout, hops), None
        except SignInError as error:
            return None, str(error)
        except Exception as error:  # a probe's own bug is a failure too, and says where
            return None, "".join(traceback.format_exception_only(error)).strip()

    began = time.perf_counter()
    localhost_names.install()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(attempt, range(count)))
    wall = time.perf_counter() - began
    durations = [d for d, _ in outcomes if d is not None]
    errors = [e for _, e in outcomes if e is not None]
    by_hop: dict[str, list[float]] = {}
    for hop, seconds in hops:
        by_hop.setdefault(hop, []).append(seconds)
    distinct: dict[str, int] = {}
    for error in errors:
        distinct[error] = distinct.get(error, 0) + 1
    return {
        "ui_url": ui_url,
        "users": people,
        "attempts": count,
        "concurrency": workers,
        "succeeded": len(durations),
        "failed": len(errors),
        "errors": errors[:FIRST_ERRORS],
        "distinct_errors": dict(sorted(distinct.items(), key=lambda kv: -kv[1])[:FIRST_ERRORS]),
        "p50_s": _rounded(percentile(durations, 50)),
        "p99_s": _rounded(percentile(durations, 99)),
        "max_s": _rounded(max(durations, default=None)),
        "wall_s": round(wall, 3),
        # Where the time goes: each request of the flow, in the order first made.
        "hops_p50_p99_s": {hop: [_rounded(percentile(times, 50)), _rounded(percentile(times, 99))]
                           for hop, times in by_hop.items()},
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ui-url", required=True,
                        help="the edge's URL of the Consul UI, e.g. https://localhost:8443")
    parser.add_argument("--ca", type=Path, required=True, help="the lab's web CA (PEM)")
    parser.add_argument("--secrets-dir", type=Path, required=True,
                        help="the inventory's secrets folder (platform_secrets_dir)")
    parser.add_argument("--user", action="append", dest="users",
                        help="lab user who signs in, repeated to take turns (default admin)")
    parser.add_argument("--count", type=int, default=50, help="sign-ins in all (default 50)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="sign-ins at a time (default: all of them)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    args = parser.parse_args(argv)
    if args.count < 1 or (args.concurrency is not None and args.concurrency < 1):
        parser.error("--count and --concurrency must be at least 1")
    result = run(args.ui_url, args.ca, args.secrets_dir, args.users or ["admin"], args.count,
                 args.concurrency, args.timeout)
    print(json.dumps(result, indent=2))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
