#!/usr/bin/python
"""Keep Consul's sign-in objects (roles, auth methods, binding rules) as declared, in one task."""

from __future__ import annotations

DOCUMENTATION = r"""
module: consul_acl_sign_in
short_description: Roles, auth methods and binding rules as data, with check mode and diff
description:
  - Reads the roles, the declared auth methods and their binding rules from the local agent's
    API and writes only what differs. Config keys go to Consul as given (Consul's own
    spelling, for example OIDCDiscoveryURL), durations are compared by value.
  - Binding rules carry no name in Consul; the rule's name is kept as the first word of its
    description ("<name>: <description>"). A binding rule of a declared auth method that no
    declared rule names is deleted, so every right a sign-in gives is declared.
  - Roles and auth methods that are not declared are left alone.
  - Written because community.general's consul_auth_method rewrites config keys
    (OIDCDiscoveryURL becomes Oidcdiscoveryurl) and never finds MaxTokenTTL equal, and
    consul_role compares policy names with Consul's policy links: neither reports changed=0
    on a second run.
options:
  url:
    description: The local agent's HTTP API.
    type: str
    default: http://127.0.0.1:8500
  token:
    description: An ACL token with acl write.
    type: str
    required: true
  roles:
    description: Roles, each {name, description, policies (names)}.
    type: list
    elements: dict
    default: []
  auth_methods:
    description: >-
      Auth methods, each {name, type, description, display_name, max_token_ttl, token_locality,
      config}.
    type: list
    elements: dict
    default: []
  binding_rules:
    description: Binding rules, each {name, auth_method, selector, bind_type, bind_name, description}.
    type: list
    elements: dict
    default: []
"""

import json
import re
import urllib.error
import urllib.parse
import urllib.request

from ansible.module_utils.basic import AnsibleModule

UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|\u00b5s|ms|s|m|h)")


class ConsulError(Exception):
    pass


def seconds(duration) -> float:
    text = str(duration or "0")
    if text == "0":
        return 0.0
    parts = PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{duration!r} is not a duration such as 30m or 8h")
    return sum(float(n) * UNITS[u] for n, u in parts)


class Consul:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url.rstrip("/"), token

    def call(self, path: str, method: str = "GET", body=None, missing_ok: bool = False):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}/v1/{path}", data=data, method=method,
                                         headers={"X-Consul-Token": self.token})
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return json.loads(reply.read().decode() or "null")
        except urllib.error.HTTPError as error:
            if missing_ok and error.code == 404:
                return None
            detail = error.read().decode(errors="replace").strip()
            raise ConsulError(f"{method} /v1/{path}: {error.code} {detail}") from error
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise ConsulError(f"{method} /v1/{path}: {error}") from error


def rule_description(rule: dict) -> str:
    return f"{rule['name']}: {rule['description']}" if rule.get("description") else rule["name"]


def rule_name(description: str) -> str:
    return (description or "").split(":", 1)[0]


def wanted_role(role: dict) -> dict:
    return {"Name": role["name"], "Description": role.get("description") or "",
            "Policies": sorted(role.get("policies") or [])}


def held_role(role: dict) -> dict:
    return {"Name": role["Name"], "Description": role.get("Description", ""),
            "Policies": sorted(p["Name"] for p in role.get("Policies") or [])}


def wanted_method(method: dict) -> dict:
    return {"Name": method["name"], "Type": method["type"],
            "DisplayName": method.get("display_name") or "", "Description": method.get("description") or "",
            "MaxTokenTTL": method["max_token_ttl"], "TokenLocality": method.get("token_locality") or "local",
            "Config": method["config"]}


def held_method(method: dict) -> dict:
    return {"Name": method["Name"], "Type": method["Type"], "DisplayName": method.get("DisplayName", ""),
            "Description": method.get("Description", ""), "MaxTokenTTL": method.get("MaxTokenTTL", "0s"),
            "TokenLocality": method.get("TokenLocality") or "local", "Config": method.get("Config") or {}}


def same_method(held: dict, wanted: dict) -> bool:
    return (seconds(held["MaxTokenTTL"]) == seconds(wanted["MaxTokenTTL"])
            and {k: v for k, v in held.items() if k != "MaxTokenTTL"}
            == {k: v for k, v in wanted.items() if k != "MaxTokenTTL"})


def wanted_rule(rule: dict) -> dict:
    return {"Description": rule_description(rule), "AuthMethod": rule["auth_method"],
            "Selector": rule["selector"], "BindType": rule.get("bind_type") or "role",
            "BindName": rule["bind_name"]}


def held_rule(rule: dict) -> dict:
    return {k: rule.get(k, "") for k in ("Description", "AuthMethod", "Selector", "BindType", "BindName")}


def plan(consul: Consul, roles: list, methods: list, rules: list) -> tuple[list, dict, dict]:
    """(writes, before, after): each write is (label, method, path, body)."""
    writes: list = []
    before: dict = {"roles": {}, "auth_methods": {}, "binding_rules": {}}
    after: dict = {"roles": {}, "auth_methods": {}, "binding_rules": {}}

    held_roles = {r["Name"]: r for r in consul.call("acl/roles") or []}
    for role in roles:
        want, have = wanted_role(role), held_roles.get(role["name"])
        after["roles"][role["name"]] = want
        if have is not None:
            before["roles"][role["name"]] = held_role(have)
        if have is None or held_role(have) != want:
            body = {"Name": want["Name"], "Description": want["Description"],
                    "Policies": [{"Name": name} for name in want["Policies"]]}
            path = f"acl/role/{have['ID']}" if have else "acl/role"
            writes.append((f"role {role['name']}", "PUT", path, body))

    existing: set = set()
    for method in methods:
        want = wanted_method(method)
        have = consul.call(f"acl/auth-method/{urllib.parse.quote(method['name'], safe='')}", missing_ok=True)
        after["auth_methods"][method["name"]] = want
        if have is not None:
            existing.add(method["name"])
            before["auth_methods"][method["name"]] = held_method(have)
            if seconds(have.get("MaxTokenTTL")) == seconds(want["MaxTokenTTL"]):
                # The same duration in Consul's spelling: no change in the diff.
                want["MaxTokenTTL"] = have["MaxTokenTTL"]
            if have["Type"] != want["Type"]:
                raise ConsulError(f"auth method {method['name']} is of type {have['Type']} in Consul and "
                                  f"{want['Type']} in the inventory; Consul cannot change a method's type: "
                                  "give the new one another name")
        if have is None or not same_method(held_method(have), want):
            named = f"acl/auth-method/{urllib.parse.quote(method['name'], safe='')}"
            path = named if have else "acl/auth-method"
            writes.append((f"auth method {method['name']}", "PUT", path, want))

    by_method: dict = {}
    for rule in rules:
        by_method.setdefault(rule["auth_method"], []).append(rule)
    for method in methods:
        # A method about to be created has no rules yet.
        held = consul.call("acl/binding-rules?" + urllib.parse.urlencode({"authmethod": method["name"]})) \
            if method["name"] in existing else []
        held_by_name = {}
        for have in held:
            name = rule_name(have.get("Description", ""))
            if name in held_by_name or name not in {r["name"] for r in by_method.get(method["name"], [])}:
                before["binding_rules"][f"{method['name']}/{have['ID']}"] = held_rule(have)
                writes.append((f"binding rule {have['ID']} of {method['name']} (not declared)", "DELETE",
                               f"acl/binding-rule/{have['ID']}", None))
                continue
            held_by_name[name] = have
        for rule in by_method.get(method["name"], []):
            want, have = wanted_rule(rule), held_by_name.get(rule["name"])
            after["binding_rules"][rule["name"]] = want
            if have is not None:
                before["binding_rules"][rule["name"]] = held_rule(have)
            if have is None or held_rule(have) != want:
                path = f"acl/binding-rule/{have['ID']}" if have else "acl/binding-rule"
                writes.append((f"binding rule {rule['name']}", "PUT", path, want))
    return writes, before, after


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "default": "http://127.0.0.1:8500"},
            "token": {"type": "str", "required": True, "no_log": True},
            "roles": {"type": "list", "elements": "dict", "default": []},
            "auth_methods": {"type": "list", "elements": "dict", "default": []},
            "binding_rules": {"type": "list", "elements": "dict", "default": []},
        },
        supports_check_mode=True,
    )
    consul = Consul(module.params["url"], module.params["token"])
    p = module.params
    try:
        for method in p["auth_methods"]:
            seconds(method.get("max_token_ttl"))
        declared = {m["name"] for m in p["auth_methods"]}
        unknown = sorted({r["auth_method"] for r in p["binding_rules"]} - declared)
        if unknown:
            module.fail_json(msg="binding rules name auth methods that are not declared: "
                                 + ", ".join(unknown))
        writes, before, after = plan(consul, p["roles"], p["auth_methods"], p["binding_rules"])
    except (ConsulError, ValueError, KeyError) as error:
        module.fail_json(msg=f"consul_acl_sign_in: {error}")
    result = {"changed": bool(writes), "written": [label for label, *_ in writes],
              "diff": {"before": before, "after": after}}
    if not module.check_mode:
        for label, method, path, body in writes:
            try:
                consul.call(path, method, body)
            except ConsulError as error:
                module.fail_json(msg=f"consul_acl_sign_in: writing {label}: {error}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
