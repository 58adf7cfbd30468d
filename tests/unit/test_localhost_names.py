"""tools/lab/localhost_names.py: *.localhost names go to loopback, as
browsers resolve them (RFC 6761); other names are left to the resolver."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "lab"))
import localhost_names


@pytest.mark.parametrize("name", ["consul.localhost", "IDP.LOCALHOST", "www.localhost.", b"a.b.localhost"])
def test_localhost_names_resolve_to_loopback(name):
    localhost_names.install()
    assert {info[4][0] for info in socket.getaddrinfo(name, 443, socket.AF_INET)} == {"127.0.0.1"}


def test_other_names_are_left_to_the_resolver(monkeypatch):
    asked = []
    monkeypatch.setattr(localhost_names, "_getaddrinfo", lambda host, *a, **k: asked.append(host) or [])
    for name in ("localhost.example", "example.com", "127.0.0.2"):
        localhost_names._resolve(name, 443)
    assert asked == ["localhost.example", "example.com", "127.0.0.2"]


def test_install_twice_wraps_once():
    localhost_names.install()
    once = socket.getaddrinfo
    localhost_names.install()
    assert socket.getaddrinfo is once
