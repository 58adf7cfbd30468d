#!/usr/bin/env python3
"""`make bench-idp-login`: does the lab IdP's login answer as fast for an
unknown user name as for a known one with a wrong password?

Starts a real sign-in at Hydra (the edge's OAuth2 client), takes the login
form's challenge and XSRF token, then posts wrong passwords alternately for
`admin` and for a new random name, over the published port on loopback.
Prints the medians and their gap and writes docs/bench/idp_login.json.
A gap within the spread of either side tells nobody which names exist.
"""

from __future__ import annotations

import argparse
import http.client
import re
import secrets
import ssl
import statistics
import sys
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import LAB_SECRETS, percentile, write_report

ISSUER_PORT, LOGIN_PORT, HOST = 9443, 9444, "idp.localhost"
REDIRECT = "https://localhost:8443/oauth2/callback"


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            body: str | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    context = ssl.create_default_context(cafile=str(LAB_SECRETS / "web-ca" / "web-ca.pem"))
    # The published port is on loopback; the certificate names idp.localhost,
    # which this machine's resolver may not know.
    context.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=15)
    conn.request(method, path, body=body, headers={"Host": f"{HOST}:{port}", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def login_form() -> tuple[str, str, str]:
    """(challenge, XSRF cookie, XSRF form value) of a fresh sign-in."""
    query = urllib.parse.urlencode({"client_id": "consul-edge", "response_type": "code",
                                    "scope": "openid", "redirect_uri": REDIRECT,
                                    "state": secrets.token_hex(8)})
    answer, _ = request(ISSUER_PORT, "GET", f"/oauth2/auth?{query}")
    location = urllib.parse.urlsplit(answer.getheader("Location", ""))
    challenge = urllib.parse.parse_qs(location.query)["login_challenge"][0]
    answer, page = request(LOGIN_PORT, "GET", f"/login?login_challenge={challenge}")
    cookie = next(c.split(";")[0] for c in answer.headers.get_all("Set-Cookie") or []
                  if c.startswith("_xsrf="))
    form = re.search(rb'name="_xsrf" value="([^"]+)"', page)
    if answer.status != 200 or not form:
        raise SystemExit(f"no login form: HTTP {answer.status}")
    return challenge, cookie, form.group(1).decode()


def attempt(form: tuple[str, str, str], user: str) -> float:
    challenge, cookie, xsrf = form
    body = urllib.parse.urlencode({"_xsrf": xsrf, "login_challenge": challenge,
                                   "username": user, "password": secrets.token_urlsafe(12)})
    started = time.perf_counter()
    answer, _ = request(LOGIN_PORT, "POST", "/login", {
        "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}, body)
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status != 401:
        raise SystemExit(f"a wrong password for {user!r} answered HTTP {answer.status}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60, help="attempts per kind of name")
    args = parser.parse_args(argv)
    form = login_form()
    attempt(form, "admin")  # warm-up
    known, unknown = [], []
    for _ in range(args.rounds):
        known.append(attempt(form, "admin"))
        unknown.append(attempt(form, f"nobody-{secrets.token_hex(4)}"))
    summary = {}
    for name, samples in (("known_user_wrong_password", known), ("unknown_user", unknown)):
        summary[name] = {"attempts": len(samples),
                         **{f"p{p}_ms": round(percentile(samples, p), 1) for p in (50, 95)},
                         "stdev_ms": round(statistics.stdev(samples), 1)}
    gap = summary["unknown_user"]["p50_ms"] - summary["known_user_wrong_password"]["p50_ms"]
    summary["gap_p50_ms"] = round(gap, 1)
    summary["gap_within_spread"] = abs(gap) < min(summary[k]["stdev_ms"] for k in
                                                 ("known_user_wrong_password", "unknown_user"))
    for name in ("known_user_wrong_password", "unknown_user"):
        row = summary[name]
        print(f"{name:28} p50 {row['p50_ms']:7} ms  p95 {row['p95_ms']:7} ms  "
              f"stdev {row['stdev_ms']} ms  ({row['attempts']} attempts)")
    print(f"unknown minus known at the median: {summary['gap_p50_ms']} ms "
          f"({'within' if summary['gap_within_spread'] else 'OUTSIDE'} the spread)")
    path = write_report("idp_login", {"summary": summary,
                                      "samples_ms": {"known": known, "unknown": unknown}})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
