"""HTTP handlers and the holder of the live config, reloaded in place."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path

import tornado.web

from .config import Config, ConfigError, load

log = logging.getLogger("python_web_service")


@dataclass
class ConfigState:
    """The config being served, and what the last load attempt said."""

    path: Path
    current: Config | None = None
    last_error: str | None = field(default=None)

    def reload(self) -> bool:
        """Load the file; on failure keep serving the last good config."""
        try:
            new = load(self.path)
        except ConfigError as exc:
            self.last_error = str(exc)
            if self.current is None:
                log.error("config %s rejected, nothing to serve yet: %s", self.path, exc)
            else:
                log.error("config %s rejected, still serving version %s: %s",
                          self.path, self.current.version, exc)
            return False
        if self.current is None or new.version != self.current.version:
            log.info("config %s loaded, version %s", self.path, new.version)
        self.current, self.last_error = new, None
        return True


class GreetingHandler(tornado.web.RequestHandler):
    def initialize(self, state: ConfigState) -> None:
        self.state = state

    def get(self) -> None:
        config = self.state.current
        if config is None:
            raise tornado.web.HTTPError(503, reason="no valid config loaded")
        if "application/json" in self.request.headers.get("Accept", ""):
            self.write({"greeting": config.greeting, "version": config.version})
        else:
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.write(config.greeting + "\n")


class HealthHandler(tornado.web.RequestHandler):
    """200 while a valid config is served, 503 before any valid config was
    loaded. Why the last config was rejected (it names files and parser
    errors) is told only to clients on this host (the agent's check, an
    operator); everyone else, the public edge included, sees the status."""

    def initialize(self, state: ConfigState) -> None:
        self.state = state

    def get(self) -> None:
        config = self.state.current
        self.set_status(200 if config else 503)
        answer = {
            "status": "ok" if config and not self.state.last_error else
                      "stale" if config else "no-config",
            "config_version": config.version if config else None,
        }
        if is_loopback(self.request.remote_ip):
            answer["error"] = self.state.last_error
        self.write(answer)


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def make_app(state: ConfigState) -> tornado.web.Application:
    return tornado.web.Application([
        (r"/", GreetingHandler, {"state": state}),
        (r"/health", HealthHandler, {"state": state}),
    ])
