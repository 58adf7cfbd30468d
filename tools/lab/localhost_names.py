"""Names under .localhost resolve to loopback in this process (RFC 6761
section 6.3), as browsers resolve them: the lab's origins
(consul.localhost, www.localhost, idp.localhost) are published on this
machine's loopback, and glibc's resolver does not know them."""

from __future__ import annotations

import socket

_getaddrinfo = socket.getaddrinfo


def _resolve(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str) and name.lower().rstrip(".").endswith(".localhost"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


def install() -> None:
    """Idempotent: every later getaddrinfo of this process sees the names."""
    if socket.getaddrinfo is not _resolve:
        socket.getaddrinfo = _resolve
