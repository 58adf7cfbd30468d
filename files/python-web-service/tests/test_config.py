"""Config validation: what is accepted as data, and each way a file is refused."""

from __future__ import annotations

import json

import pytest
from python_web_service.config import MAX_GREETING_CHARS, ConfigError, parse


def encode(greeting) -> bytes:
    return json.dumps({"greeting": greeting}).encode("utf-8")


@pytest.mark.parametrize("greeting", [
    "Hello World",
    "Hello Consul",
    'She said "hi"',
    "{{ key \"python-web-service/greeting\" }}",
    "__import__('os').system('id')",
    "Grüße, 世界",
    "x" * MAX_GREETING_CHARS,
])
def test_any_string_is_data(greeting):
    assert parse(encode(greeting)).greeting == greeting


def test_version_follows_the_content():
    assert parse(encode("a")).version != parse(encode("b")).version
    assert parse(encode("a")).version == parse(encode("a")).version


@pytest.mark.parametrize(("raw", "reason"), [
    (encode(""), "empty"),
    (encode("   "), "empty"),
    (encode("x" * (MAX_GREETING_CHARS + 1)), "more than"),
    (b'{"greeting": "\xff\xfe"}', "not UTF-8"),
    (encode(42), "not a string"),
    (encode(None), "not a string"),
    (encode(["Hello"]), "not a string"),
    (b'["Hello"]', "not an object"),
    (b'{"greeting": "Hello}', "not JSON"),
    (b'greeting = "Hello"', "not JSON"),
    (b"", "not JSON"),
    (encode("line\nbreak"), "control characters"),
    (b" " * (64 * 1024 + 1), "bytes"),
])
def test_bad_file_is_refused_with_a_reason(raw, reason):
    with pytest.raises(ConfigError, match=reason):
        parse(raw)
