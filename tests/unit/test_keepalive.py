"""The load generator's HTTP client (tools/bench/probes/keepalive.py) against a real
socket server on loopback that misbehaves on purpose: it retries only what
RFC 9112 section 9.3.1 allows (idempotent, reused connection, no response
byte), once, and counts it; every other failure is raised."""

from __future__ import annotations

import http.client
import socket
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench" / "probes"))
from keepalive import ClosedBeforeResponse, KeepAliveClient

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


class Server:
    """Serves `answers_per_connection` requests per connection, then closes
    it without answering the next one (`partial`: after a few bytes)."""

    def __init__(self, answers_per_connection: int, partial: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.answers, self.partial, self.connections = answers_per_connection, partial, 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                for _ in range(self.answers):
                    if not conn.recv(65536):
                        break
                    conn.sendall(OK)
                if conn.recv(65536) and self.partial:
                    conn.sendall(b"HTTP/1.1 2")

    def client(self) -> KeepAliveClient:
        return KeepAliveClient(lambda: http.client.HTTPConnection("127.0.0.1", self.port, timeout=5))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def closes_after_one():
    server = Server(answers_per_connection=1)
    yield server
    server.close()


def test_reused_connection_closed_before_a_byte_is_retried_once_and_counted(closes_after_one):
    client = closes_after_one.client()
    for _ in range(5):
        assert client.request("GET", "/")[0] == 200
    assert client.retries == 4 and closes_after_one.connections == 5


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_non_idempotent_requests_are_not_retried(closes_after_one, method):
    client = closes_after_one.client()
    assert client.request("GET", "/")[0] == 200
    with pytest.raises(ClosedBeforeResponse):
        client.request(method, "/", body=b"x")
    assert client.retries == 0


def test_a_fresh_connection_closed_before_a_byte_fails():
    server = Server(answers_per_connection=0)
    try:
        with pytest.raises(ClosedBeforeResponse):
            server.client().request("GET", "/")
    finally:
        server.close()


def test_a_close_after_some_response_bytes_fails():
    server = Server(answers_per_connection=1, partial=True)
    try:
        client = server.client()
        assert client.request("GET", "/")[0] == 200
        with pytest.raises(http.client.HTTPException):
            client.request("GET", "/")
        assert client.retries == 0
    finally:
        server.close()
