"""Filters for the secrets the consul role generates on the controller."""

from __future__ import annotations

import base64
import binascii
import re

from ansible.errors import AnsibleFilterError

_HEX = re.compile(r"^[0-9a-f]+$")


def consul_hex_to_base64(value: str) -> str:
    """Base64 of the bytes a hex string spells: 64 hex digits -> a gossip key."""
    text = str(value).strip()
    if not _HEX.match(text) or len(text) % 2:
        raise AnsibleFilterError("consul_hex_to_base64: expects an even number of hex digits")
    return base64.b64encode(binascii.unhexlify(text)).decode("ascii")


class FilterModule:
    def filters(self):
        return {
            "consul_hex_to_base64": consul_hex_to_base64,
        }
