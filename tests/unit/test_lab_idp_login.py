"""The lab IdP's login app: password checks, the claims it hands to Hydra,
and its pages, served by tornado's test server (Hydra's admin API is the
real one only in the lab and molecule; here no call reaches it)."""

from __future__ import annotations

import crypt
import json
import sys
from pathlib import Path

import pytest
from tornado.testing import AsyncHTTPTestCase

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "roles/lab_idp/files"))
import lab_idp_login

HASH = crypt.crypt("correct horse", crypt.mksalt(crypt.METHOD_SHA512))
ADMIN = {"username": "admin", "password_hash": HASH, "email": "admin@lab.localhost",
         "name": "Lab Admin", "groups": ["consul-admins"]}


@pytest.mark.parametrize(("user", "password", "expected"), [
    (ADMIN, "correct horse", True),
    (ADMIN, "correct horse ", False),
    (ADMIN, "", False),
    (None, "correct horse", False),
])
def test_password_matches(user, password, expected):
    decoy = lab_idp_login.decoy_hash({"admin": ADMIN})
    assert lab_idp_login.password_matches(user, password, decoy) is expected


@pytest.mark.parametrize("setting", ["$6$", "$6$rounds=5000$", "$6$rounds=20000$", "$5$"])
def test_unknown_users_cost_what_known_users_cost(setting):
    """The decoy that unknown user names are checked against uses the
    users' own algorithm and rounds, whatever they are: a fixed decoy with
    other rounds would tell names apart by the time of the answer."""
    stored = crypt.crypt("pw", setting + "abcdefgh")
    decoy = lab_idp_login.decoy_hash({"u": {"password_hash": stored}})
    assert decoy.rsplit("$", 2)[0] == stored.rsplit("$", 2)[0]
    assert decoy.rsplit("$", 2)[1] != "abcdefgh"
    assert lab_idp_login.password_matches(None, "pw", decoy) is False


def test_claims_carry_the_groups_and_profile():
    claims = lab_idp_login.id_token_claims(ADMIN)
    assert claims == {"email": "admin@lab.localhost", "email_verified": True, "name": "Lab Admin",
                      "preferred_username": "admin", "groups": ["consul-admins"]}
    assert lab_idp_login.id_token_claims({**ADMIN, "groups": []})["groups"] == []


def test_users_file_is_read_by_user_name(tmp_path):
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"users": [ADMIN]}), encoding="utf-8")
    assert lab_idp_login.load_users(path) == {"admin": ADMIN}


class LoginPageTest(AsyncHTTPTestCase):
    def get_app(self):
        return lab_idp_login.make_app({"admin": ADMIN}, "http://127.0.0.1:9", "test-secret")

    def test_health(self):
        assert self.fetch("/health").body == b"ok\n"

    def test_post_without_xsrf_token_is_refused(self):
        answer = self.fetch("/login", method="POST",
                            body="login_challenge=x&username=admin&password=correct+horse")
        assert answer.code == 403

    def test_challenge_is_escaped_in_the_form(self):
        handler_form = lab_idp_login.FORM.generate(challenge='"><script>', error="", xsrf_html="")
        assert b"<script>" not in handler_form
        assert b"&quot;&gt;&lt;script&gt;" in handler_form
