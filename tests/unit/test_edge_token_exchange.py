"""The edge's token exchange (roles/edge_token_exchange/files/consul_edge_exchange.py):
what it takes from a request before anything is asked. The session cookie is
outside data: hostile spellings must never map two different cookie sets to
one cache key, nor reach oauth2-proxy in another form than the key was made
of. The whole chain (oauth2-proxy, Consul's /v1/acl/login, nginx) is tested
in molecule (test_sign_in_tokens.py)."""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "roles/edge_token_exchange/files/consul_edge_exchange.py"
spec = importlib.util.spec_from_file_location("consul_edge_exchange", PROGRAM)
exchange = importlib.util.module_from_spec(spec)
# dataclasses look the module up by name.
sys.modules["consul_edge_exchange"] = exchange
spec.loader.exec_module(exchange)

NAME = "_consul_edge_session"
VALUE = "QUJD|1700000000|c2lnbmF0dXJl-_="


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
    assert exchange.session_cookies(headers, NAME) == expected


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
    with pytest.raises(exchange.BadSession, match=why):
        exchange.session_cookies(headers, NAME)


def test_the_key_is_a_hash_that_tells_every_cookie_set_apart():
    sets = [
        [(NAME, "ab")],
        [(NAME, "a"), (NAME + "_0", "b")],
        [(NAME + "_0", "a"), (NAME + "_1", "b")],
        [(NAME + "_1", "b"), (NAME + "_0", "a")],
        [(NAME + "_0", "ab")],
        [(NAME, "")],
        [],
    ]
    keys = [exchange.session_key(pairs) for pairs in sets]
    assert len(set(keys)) == len(keys)
    assert all(len(k) == 64 and VALUE not in k for k in keys)
    assert exchange.session_key([(NAME, VALUE)]) == exchange.session_key([(NAME, VALUE)])


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
    assert exchange.jwt_claims(token) == claims


@pytest.mark.parametrize(("value", "expected"), [
    (1700000000, 1700000000.0), (1.5, 1.5), (True, None), ("1700000000", None), (None, None), ([1], None),
])
def test_numeric_claims(value, expected):
    assert exchange.numeric(value) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-27T08:00:00Z", 1795766400.0),
    ("2026-11-27T08:00:00.5Z", 1795766400.5),
    ("2026-11-27T09:00:00.123456789+01:00", 1795766400.123456789),
    ("", None), ("2026-11-27", None), ("2026-11-27T08:00:00", None), ("soon", None),
])
def test_consul_expiration_times(text, expected):
    got = exchange.consul_time(text)
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.mark.parametrize(("text", "seconds"), [("8h", 28800), ("30m", 1800), ("10s", 10), ("1h30m", 5400)])
def test_durations(text, seconds):
    assert exchange.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "8", "8d", "h", "-1s", "1s1h", " 8h"])
def test_bad_durations_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        exchange.parse_duration(text)
