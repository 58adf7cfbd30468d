"""Loading and validating the service's config file.

consul-template renders the file from Consul KV as JSON data, never as code.
Anything in KV is only ever a string here: quotes, braces and template syntax
are served as they are.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 64 * 1024
MAX_GREETING_CHARS = 1024


class ConfigError(ValueError):
    """The file cannot be used; the message says why."""


@dataclass(frozen=True)
class Config:
    greeting: str
    version: str  # first 12 hex digits of the file's SHA-256


def parse(raw: bytes) -> Config:
    """Validate the bytes of a config file and return the config they hold."""
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"file is {len(raw)} bytes, more than the {MAX_FILE_BYTES} allowed")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"file is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"file is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"file holds a {type(data).__name__}, not an object")
    greeting = data.get("greeting")
    if not isinstance(greeting, str):
        raise ConfigError(f"greeting is {type(greeting).__name__}, not a string")
    if not greeting.strip():
        raise ConfigError("greeting is empty")
    if len(greeting) > MAX_GREETING_CHARS:
        raise ConfigError(f"greeting has {len(greeting)} characters, more than {MAX_GREETING_CHARS}")
    if any(ord(ch) < 32 and ch != "\t" for ch in greeting):
        raise ConfigError("greeting holds control characters")
    return Config(greeting=greeting, version=hashlib.sha256(raw).hexdigest()[:12])


def load(path: Path) -> Config:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse(raw)
