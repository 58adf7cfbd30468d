"""An HTTP/1.1 client that reuses its connection the way browsers do
(standard library only: it also runs inside the lab, next to the probes).

A server may close an idle keep-alive connection at any moment (nginx does
at every reload, when old workers exit); a request sent at that moment finds
the connection closed before any byte of a response. RFC 9112 section 9.3.1
lets a client retry an idempotent request then, and browsers do, once. This
client does exactly that and nothing more: it retries once, only for
idempotent methods, only on a reused connection, only when not one byte of
the response arrived, and counts each retry so that callers report them.
Every other failure is raised.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class ClosedBeforeResponse(ConnectionError):
    """The server closed the connection before the first byte of a response."""


class _Response(http.client.HTTPResponse):
    def begin(self) -> None:
        try:
            first = self.fp.peek(1)
        except ConnectionResetError as exc:
            raise ClosedBeforeResponse("reset before any response byte") from exc
        if not first:
            raise ClosedBeforeResponse("closed before any response byte")
        super().begin()


class KeepAliveClient:
    def __init__(self, connect: Callable[[], http.client.HTTPConnection]) -> None:
        self._connect = connect
        self._conn: http.client.HTTPConnection | None = None
        self._served = 0
        self.retries = 0

    def _fresh(self) -> http.client.HTTPConnection:
        self.close()
        self._conn = self._connect()
        self._conn.response_class = _Response
        self._served = 0
        return self._conn

    def _once(self, method: str, path: str, headers: dict[str, str], body: bytes | None,
              ) -> tuple[int, dict[str, str], bytes]:
        conn = self._conn or self._fresh()
        try:
            conn.request(method, path, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # Nothing was read yet: the server had closed while we sent.
            raise ClosedBeforeResponse(f"closed while sending: {exc!r}") from exc
        response = conn.getresponse()
        payload = response.read()
        self._served += 1
        if response.will_close:
            self.close()
        return response.status, dict(response.getheaders()), payload

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body); raises on anything but the one retry."""
        headers = headers or {}
        reused = self._conn is not None and self._served > 0
        try:
            return self._once(method, path, headers, body)
        except ClosedBeforeResponse:
            self.close()
            if not (reused and method in IDEMPOTENT):
                raise
            self.retries += 1
            self._fresh()
            return self._once(method, path, headers, body)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class SteadyGets:
    """GETs of `path` every `pause` seconds over one KeepAliveClient, in a
    thread, for a `with` block: `ok` counts 200s, `failed` holds every other
    status and every exception (a load generator that an unexpected
    exception silently ended would report success), `retries` the one-time
    retries the client made."""

    def __init__(self, connect: Callable[[], http.client.HTTPConnection], path: str = "/",
                 pause: float = 0.02) -> None:
        self.connect, self.path, self.pause = connect, path, pause
        self.ok, self.failed, self.retries = 0, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = KeepAliveClient(self.connect)
        while not self._stop.is_set():
            try:
                status = client.request("GET", self.path)[0]
                if status == 200:
                    self.ok += 1
                else:
                    self.failed.append(status)
            except Exception as exc:  # every exception is a failed request, never a silent end
                self.failed.append(repr(exc))
            self.retries = client.retries
            time.sleep(self.pause)
        client.close()

    def __enter__(self) -> SteadyGets:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
