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


def consul_secret_files(nodes: list[str], gossip_given: bool, bootstrap_given: bool) -> list[dict]:
    """The secrets generated once into the controller's folder: {path, kind}.

    kind "gossip" is a gossip key, "uuid" a token SecretID. Values the
    inventory gives (vault) are left out."""
    files = [] if gossip_given else [{"path": "consul_gossip_key", "kind": "gossip"}]
    if not bootstrap_given:
        files.append({"path": "consul_acl_bootstrap_token", "kind": "uuid"})
    files += [{"path": f"consul_tokens/agent-{node}", "kind": "uuid"} for node in nodes]
    files.append({"path": "consul_tokens/dns", "kind": "uuid"})
    # The secondary datacenters' servers replicate ACLs with it; consul_acl
    # creates it in Consul only when the inventory has a secondary datacenter.
    files.append({"path": "consul_tokens/replication", "kind": "uuid"})
    return files


def consul_server_certificates(servers: list[str], server_name: str) -> list[dict]:
    """The pki role's certificate list for the Consul servers.

    SANs: server.<dc>.<domain> (what verify_server_hostname checks), the
    node's own name, and localhost for local tools on the HTTPS port."""
    return [{"name": host, "common_name": server_name,
             "sans": [f"DNS:{server_name}", f"DNS:{host}", "DNS:localhost", "IP:127.0.0.1"],
             "extended_key_usage": ["serverAuth", "clientAuth"]} for host in servers]


class FilterModule:
    def filters(self):
        return {
            "consul_hex_to_base64": consul_hex_to_base64,
            "consul_secret_files": consul_secret_files,
            "consul_server_certificates": consul_server_certificates,
        }
