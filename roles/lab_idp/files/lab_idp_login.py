#!/usr/bin/python3
"""Login and consent app of the lab's OpenID Connect provider (Ory Hydra).

Hydra is the OIDC provider (tokens, keys, discovery); it delegates the user
interaction to this app, as its design intends: the browser is sent here with
a login challenge, the app checks the user's password against a static users
file and accepts the challenge through Hydra's admin API on loopback; then
the consent challenge is accepted for the user's groups and profile, which
Hydra puts into the ID token.

Users file (JSON, written by the lab_idp role; passwords as SHA-512 crypt):
  {"users": [{"username": "...", "password_hash": "$6$...", "email": "...",
              "name": "...", "groups": ["consul-admins"]}]}
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import secrets
import ssl
import urllib.parse
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import tornado.httpclient
import tornado.ioloop
import tornado.template
import tornado.web

with warnings.catch_warnings():
    # crypt is deprecated since Python 3.11 and still the one stdlib
    # verifier of SHA-512 crypt hashes; Debian bookworm's Python has it.
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

LOG = logging.getLogger("lab-idp-login")

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Lab sign-in</title></head>
<body>
<h1>Consul platform lab: sign in</h1>
{% if error %}<p role="alert" id="error">{{ error }}</p>{% end %}
<form method="post" action="/login">
  {% raw xsrf_html %}
  <input type="hidden" name="login_challenge" value="{{ challenge }}">
  <p><label>User name <input name="username" id="username" autocomplete="username" required></label></p>
  <p><label>Password <input name="password" id="password" type="password"
     autocomplete="current-password" required></label></p>
  <p><button type="submit" id="submit">Sign in</button></p>
</form>
</body></html>
"""


FORM = tornado.template.Template(PAGE)


def load_users(path: Path) -> dict[str, dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {user["username"]: user for user in data["users"]}


def decoy_hash(users: dict[str, dict]) -> str:
    """A hash of a random password with the same algorithm and rounds as the
    users' own, so that checking an unknown user costs what checking a known
    one does: the answer's timing tells nobody which names exist."""
    setting = next(iter(users.values()))["password_hash"].rsplit("$", 2)[0] if users else "$6"
    salt = secrets.token_urlsafe(12)[:16].replace("-", "a").replace("_", "b")
    return crypt.crypt(secrets.token_urlsafe(24), f"{setting}${salt}")


def password_matches(user: dict | None, password: str, decoy: str) -> bool:
    # Unknown users are checked against the decoy, so both take as long.
    stored = user["password_hash"] if user else decoy
    return hmac.compare_digest(crypt.crypt(password, stored) or "", stored) and user is not None


def id_token_claims(user: dict) -> dict:
    """What the ID token says about a user; oauth2-proxy reads `groups`."""
    return {
        "email": user["email"],
        "email_verified": True,
        "name": user.get("name", user["username"]),
        "preferred_username": user["username"],
        "groups": list(user.get("groups", [])),
    }


class Hydra:
    """The few calls of Hydra's admin API that a login and consent app makes."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url.rstrip("/")
        # Every sign-in under way makes one call at a time; the default of ten
        # queued the rest behind slow ones.
        self.http = tornado.httpclient.AsyncHTTPClient(max_clients=100)

    async def _call(self, method: str, flow: str, action: str, challenge: str,
                    body: dict | None = None) -> dict:
        query = urllib.parse.urlencode({f"{flow}_challenge": challenge})
        url = f"{self.admin_url}/admin/oauth2/auth/requests/{flow}{action}?{query}"
        response = await self.http.fetch(
            url, method=method, headers={"Content-Type": "application/json"},
            body=json.dumps(body) if body is not None else None, request_timeout=10)
        return json.loads(response.body)

    async def get(self, flow: str, challenge: str) -> dict:
        return await self._call("GET", flow, "", challenge)

    async def accept(self, flow: str, challenge: str, body: dict) -> str:
        answer = await self._call("PUT", flow, "/accept", challenge, body)
        return answer["redirect_to"]


class Base(tornado.web.RequestHandler):
    @property
    def hydra(self) -> Hydra:
        return self.application.settings["hydra"]

    @property
    def users(self) -> dict[str, dict]:
        return self.application.settings["users"]


class LoginHandler(Base):
    async def get(self) -> None:
        challenge = self.get_query_argument("login_challenge")
        request = await self.hydra.get("login", challenge)
        if request.get("skip"):
            self.redirect(await self.hydra.accept("login", challenge, {"subject": request["subject"]}))
            return
        self.render_form(challenge)

    async def post(self) -> None:
        challenge = self.get_body_argument("login_challenge")
        username = self.get_body_argument("username", "")
        user = self.users.get(username)
        # A check costs a fifth of a second of CPU holding the GIL: in worker
        # processes, so that the other sign-ins' calls to Hydra are answered
        # meanwhile (on the event loop, 50 sign-ins at once stalled them past
        # Hydra's timeouts).
        if not await asyncio.get_running_loop().run_in_executor(
                self.application.settings["checks"], password_matches, user,
                self.get_body_argument("password", ""), self.application.settings["decoy_hash"]):
            LOG.info("sign-in refused for %r: wrong user name or password", username)
            self.set_status(401)
            self.render_form(challenge, "Wrong user name or password.")
            return
        LOG.info("sign-in accepted for %r (groups %s)", username, user.get("groups", []))
        self.redirect(await self.hydra.accept("login", challenge,
                                              {"subject": username, "remember": False}))

    def render_form(self, challenge: str, error: str = "") -> None:
        self.set_header("Cache-Control", "no-store")
        self.finish(FORM.generate(challenge=challenge, error=error,
                                  xsrf_html=self.xsrf_form_html()))


class ConsentHandler(Base):
    async def get(self) -> None:
        challenge = self.get_query_argument("consent_challenge")
        request = await self.hydra.get("consent", challenge)
        user = self.users.get(request["subject"])
        if user is None:
            raise tornado.web.HTTPError(403, "unknown subject %s", request["subject"])
        # One first-party client: consent is implied and never asked.
        self.redirect(await self.hydra.accept("consent", challenge, {
            "grant_scope": request.get("requested_scope", []),
            "grant_access_token_audience": request.get("requested_access_token_audience", []),
            "remember": False,
            "session": {"id_token": id_token_claims(user)},
        }))


class HealthHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish("ok\n")


def make_app(users: dict[str, dict], admin_url: str, cookie_secret: str) -> tornado.web.Application:
    return tornado.web.Application(
        [(r"/login", LoginHandler), (r"/consent", ConsentHandler), (r"/health", HealthHandler)],
        users=users, decoy_hash=decoy_hash(users), hydra=Hydra(admin_url),
        checks=ProcessPoolExecutor(max_workers=os.cpu_count() or 2),
        cookie_secret=cookie_secret, xsrf_cookies=True,
        xsrf_cookie_kwargs={"secure": True, "httponly": True, "samesite": "Lax"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=Path, required=True)
    parser.add_argument("--cookie-secret-file", type=Path, required=True)
    parser.add_argument("--admin-url", default="http://127.0.0.1:4445")
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9444)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)
    app = make_app(load_users(args.users), args.admin_url,
                   args.cookie_secret_file.read_text(encoding="utf-8").strip())
    app.listen(args.port, address=args.address, ssl_options=tls)
    LOG.info("listening on %s:%d", args.address, args.port)
    tornado.ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
