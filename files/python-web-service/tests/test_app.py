"""The HTTP service with a real tornado server: greeting, health, reloads."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from python_web_service.app import ConfigState, make_app
from tornado.testing import AsyncHTTPTestCase


def write(path: Path, greeting) -> None:
    path.write_text(json.dumps({"greeting": greeting}), encoding="utf-8")


class ServiceTest(AsyncHTTPTestCase):
    def get_app(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.config = Path(self.tmp.name) / "config.json"
        write(self.config, "Hello World")
        self.state = ConfigState(self.config)
        self.state.reload()
        return make_app(self.state)

    def test_greeting_as_text(self):
        response = self.fetch("/")
        assert response.code == 200
        assert response.body.decode() == "Hello World\n"
        assert response.headers["Content-Type"].startswith("text/plain")

    def test_greeting_as_json(self):
        response = self.fetch("/", headers={"Accept": "application/json"})
        body = json.loads(response.body)
        assert body["greeting"] == "Hello World"
        assert body["version"] == self.state.current.version

    def test_health_reports_the_loaded_version(self):
        body = json.loads(self.fetch("/health").body)
        assert body == {"status": "ok", "config_version": self.state.current.version, "error": None}

    def test_reload_serves_the_new_greeting(self):
        write(self.config, "Hello Consul")
        assert self.state.reload()
        assert self.fetch("/").body.decode() == "Hello Consul\n"

    def test_bad_reload_keeps_the_last_good_greeting(self):
        good = self.state.current.version
        self.config.write_bytes(b'{"greeting": 42}')
        assert not self.state.reload()
        assert self.fetch("/").body.decode() == "Hello World\n"
        health = self.fetch("/health")
        assert health.code == 200
        body = json.loads(health.body)
        assert body["status"] == "stale" and body["config_version"] == good
        assert "not a string" in body["error"]
        write(self.config, "Hello again")  # a good file clears the error
        assert self.state.reload()
        assert json.loads(self.fetch("/health").body)["status"] == "ok"

    def test_no_valid_config_at_start_is_503(self):
        self.state.current = None
        self.config.write_bytes(b"")
        self.state.reload()
        assert self.fetch("/").code == 503
        assert self.fetch("/health").code == 503


class RemoteClientTest(ServiceTest):
    """A client not on this host (here: tornado told by X-Real-Ip, which only
    this test server trusts) sees the status, never the reason."""

    def get_httpserver_options(self):
        return {"xheaders": True}

    def test_remote_health_shows_no_reason(self):
        self.config.write_bytes(b'{"greeting": 42}')
        assert not self.state.reload()
        for remote in ("203.0.113.9", "10.0.0.1", "2001:db8::1"):
            body = json.loads(self.fetch("/health", headers={"X-Real-Ip": remote}).body)
            assert body == {"status": "stale", "config_version": self.state.current.version}, remote
        local = json.loads(self.fetch("/health", headers={"X-Real-Ip": "127.0.0.1"}).body)
        assert "not a string" in local["error"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(config: Path, port: int, **env: str) -> subprocess.Popen:
    """The service as its own process, with its output captured."""
    env = {**os.environ, **env, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.Popen([sys.executable, "-m", "python_web_service", "--config", str(config),
                             "--address", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def running_service(tmp_path):
    config, port = tmp_path / "config.json", free_port()
    write(config, "Hello World")
    proc = start_service(config, port)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield proc, config, url
    proc.terminate()
    proc.wait(timeout=10)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.read().decode()


def wait_for_greeting(url: str, expected: str) -> None:
    for _ in range(100):
        if fetch(url) == expected:
            return
        time.sleep(0.02)
    raise AssertionError(f"never served {expected!r}; last {fetch(url)!r}")


def test_sighup_reloads_in_place_and_keeps_serving(running_service):
    proc, config, url = running_service
    assert fetch(url) == "Hello World\n"
    pid = proc.pid
    write(config, "Hello Consul")
    proc.send_signal(signal.SIGHUP)
    wait_for_greeting(url, "Hello Consul\n")
    config.write_bytes(b"\xff not utf-8")
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert fetch(url) == "Hello Consul\n"  # the bad file changed nothing
    assert proc.poll() is None and proc.pid == pid
    proc.terminate()
    output = proc.communicate(timeout=10)[0]
    assert "rejected, still serving version" in output and "not UTF-8" in output


def test_tells_systemd_when_ready_and_when_stopping(tmp_path):
    """Type=notify: READY=1 only once the port is open and SIGHUP is handled,
    so a reload that systemd sends right after start cannot kill it. A reload
    sends nothing: ExecReload's kill returns at once, and a RELOADING=1 that
    came after it would leave the unit waiting in "reloading"."""
    config, port = tmp_path / "config.json", free_port()
    write(config, "Hello World")
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(str(notify_path))
        notify_socket.settimeout(10)
        proc = start_service(config, port, NOTIFY_SOCKET=str(notify_path))
        try:
            assert notify_socket.recv(64) == b"READY=1"
            assert fetch(f"http://127.0.0.1:{port}/") == "Hello World\n"
            write(config, "Hello Consul")
            proc.send_signal(signal.SIGHUP)
            wait_for_greeting(f"http://127.0.0.1:{port}/", "Hello Consul\n")
            proc.terminate()
            assert notify_socket.recv(64) == b"STOPPING=1"
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
            proc.communicate()
