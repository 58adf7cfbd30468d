#!/usr/bin/python
"""Keep a Consul cluster's autopilot configuration as declared, in one task."""

from __future__ import annotations

DOCUMENTATION = r"""
module: consul_autopilot
short_description: Set Consul's autopilot configuration when it differs, with check mode and diff
description:
  - Reads the cluster's autopilot configuration from the local agent
    (/v1/operator/autopilot/configuration) and writes it back, with a check-and-set on its
    ModifyIndex, only when one of the given settings differs. Settings not given are kept.
  - Durations are compared by value ("200ms" and "0.2s" are the same).
  - Consul reads the agent config's autopilot block only when a cluster is first
    bootstrapped; afterwards this API is the only way to change it.
options:
  url:
    description: The local agent's HTTP API.
    type: str
    default: http://127.0.0.1:8500
  token:
    description: An ACL token with operator write.
    type: str
    required: true
  cleanup_dead_servers:
    description: Remove dead servers from raft when a new server joins.
    type: bool
  last_contact_threshold:
    description: How long a server may go without contact with the leader and count as healthy (Go duration).
    type: str
  server_stabilization_time:
    description: How long a new server must be healthy before it becomes a voter (Go duration).
    type: str
  max_trailing_logs:
    description: How many log entries a server may trail the leader by and count as healthy.
    type: int
"""

import json
import re
import urllib.error
import urllib.request

from ansible.module_utils.basic import AnsibleModule

# Module option -> the API's field name.
FIELDS = {
    "cleanup_dead_servers": "CleanupDeadServers",
    "last_contact_threshold": "LastContactThreshold",
    "server_stabilization_time": "ServerStabilizationTime",
    "max_trailing_logs": "MaxTrailingLogs",
}
DURATIONS = {"last_contact_threshold", "server_stabilization_time"}
UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|\u00b5s|ms|s|m|h)")


def seconds(duration: str) -> float:
    """A Go duration ("1m30s", "200ms") in seconds; ValueError when it is none."""
    text = str(duration)
    if text == "0":
        return 0.0
    parts = PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{duration!r} is not a duration such as 200ms, 10s or 1m30s")
    return sum(float(n) * UNITS[u] for n, u in parts)


def call(url: str, token: str, method: str = "GET", body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"X-Consul-Token": token})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read().decode() or "null")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "default": "http://127.0.0.1:8500"},
            "token": {"type": "str", "required": True, "no_log": True},
            "cleanup_dead_servers": {"type": "bool"},
            "last_contact_threshold": {"type": "str"},
            "server_stabilization_time": {"type": "str"},
            "max_trailing_logs": {"type": "int"},
        },
        supports_check_mode=True,
    )
    wanted = {k: module.params[k] for k in FIELDS if module.params[k] is not None}
    for key in DURATIONS & set(wanted):
        try:
            seconds(wanted[key])
        except ValueError as error:
            module.fail_json(msg=f"{key}: {error}")
    endpoint = module.params["url"].rstrip("/") + "/v1/operator/autopilot/configuration"
    try:
        current = call(endpoint, module.params["token"])
    except (urllib.error.URLError, OSError, ValueError) as error:
        module.fail_json(msg=f"could not read the autopilot configuration from {endpoint}: {error}")

    def same(key: str) -> bool:
        have = current.get(FIELDS[key])
        if key in DURATIONS:
            return seconds(have) == seconds(wanted[key])
        return have == wanted[key]

    differing = sorted(key for key in wanted if not same(key))
    before = {key: current.get(FIELDS[key]) for key in wanted}
    after = {**before, **{key: wanted[key] for key in differing}}
    result = {"changed": bool(differing), "differing": differing,
              "diff": {"before": before, "after": after}}
    if differing and not module.check_mode:
        body = {k: v for k, v in current.items() if k not in ("CreateIndex", "ModifyIndex")}
        body.update({FIELDS[key]: wanted[key] for key in differing})
        cas = f"{endpoint}?cas={current.get('ModifyIndex', 0)}"
        try:
            written = call(cas, module.params["token"], "PUT", body)
        except (urllib.error.URLError, OSError, ValueError) as error:
            module.fail_json(msg=f"could not write the autopilot configuration: {error}", **result)
        if written is not True:
            module.fail_json(msg="the autopilot configuration changed while it was being written "
                                 "(check-and-set refused); run again", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
