"""sd_notify(3) without a dependency: tell systemd (Type=notify) that the
service is ready, reloading, or ready again."""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send MESSAGE to $NOTIFY_SOCKET; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True
