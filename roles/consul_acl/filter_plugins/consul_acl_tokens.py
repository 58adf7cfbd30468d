"""consul_acl_expand_tokens: consul_acl_tokens with every per_host entry
expanded into one token per host of its file's hosts group."""

from __future__ import annotations

from typing import Any


def consul_acl_expand_tokens(tokens: list[dict[str, Any]],
                             groups: dict[str, list[str]]) -> list[dict[str, Any]]:
    """A per_host entry named N for group G becomes N-<host> for each host of
    G, its description names the host and its file goes to that host only
    (file.host). Other entries are returned as they are."""
    expanded: list[dict[str, Any]] = []
    for token in tokens:
        if not token.get("per_host"):
            expanded.append(dict(token))
            continue
        for host in groups.get(token["file"]["hosts"], []):
            expanded.append({
                **token,
                "name": f"{token['name']}-{host}",
                "description": f"{token.get('description', token['name'])} on {host}",
                "file": {**token["file"], "host": host},
            })
    return expanded


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"consul_acl_expand_tokens": consul_acl_expand_tokens}
