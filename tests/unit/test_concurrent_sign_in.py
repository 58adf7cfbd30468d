"""The concurrent sign-in probe's own parts: the login app's real form, the
cookie handling across the edge's and the IdP's host names, the loopback pin
and the percentiles. The whole flow runs against the lab (see the tool)."""

from __future__ import annotations

import sys
import time
from email.utils import formatdate
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "roles/lab_idp/files"))
import concurrent_sign_in as probe  # noqa: E402  (tools/lab is on the path: conftest.py)
import lab_idp_login  # noqa: E402


def test_the_login_apps_form_gives_its_action_and_hidden_fields():
    page = lab_idp_login.FORM.generate(
        challenge="abc&def", error="", xsrf_html='<input type="hidden" name="_xsrf" value="2|x|y"/>',
    ).decode()
    form = probe.LoginForm.parse(page)
    assert form.action == "/login"
    assert form.hidden == {"_xsrf": "2|x|y", "login_challenge": "abc&def"}
    assert {"username", "password"} <= form.fields


def test_cookies_go_back_to_their_own_host_only_and_expire():
    jar = probe.CookieJar()
    jar.store("https://localhost:8443/oauth2/start", [
        "_oauth2_proxy_csrf=c1; Path=/; Secure; HttpOnly", "junk"])
    jar.store("https://idp.localhost:9443/oauth2/auth", ["ory_csrf=h1; Path=/"])
    # Cookies do not tell ports apart: the login app on :9444 gets Hydra's too.
    jar.store("https://idp.localhost:9444/login", ["_xsrf=x1; Path=/"])
    assert jar.header("https://localhost:8443/oauth2/callback") == "_oauth2_proxy_csrf=c1"
    assert jar.header("https://idp.localhost:9444/login") == "ory_csrf=h1; _xsrf=x1"
    assert jar.header("https://consul.localhost:8443/") == ""
    past = formatdate(time.time() - 3600, usegmt=True)
    jar.store("https://localhost:8443/oauth2/callback", [
        f"_oauth2_proxy_csrf=; Expires={past}", "__Host-consul_edge_session=s1; Path=/; Secure"])
    assert jar.header("https://localhost:8443/ui/") == "__Host-consul_edge_session=s1"
    jar.store("https://localhost:8443/oauth2/sign_out", ["__Host-consul_edge_session=gone; Max-Age=0"])
    assert jar.header("https://localhost:8443/ui/") == ""


def test_percentiles_are_nearest_rank():
    samples = [float(n) for n in range(1, 101)]
    assert probe.percentile(samples, 50) == 50.0
    assert probe.percentile(samples, 99) == 99.0
    assert probe.percentile([3.0], 99) == 3.0
    assert probe.percentile([], 50) is None


def test_urls_in_reports_carry_no_query():
    assert probe.short("https://localhost:8443/oauth2/callback?code=secret&state=s") == \
        "https://localhost:8443/oauth2/callback"
