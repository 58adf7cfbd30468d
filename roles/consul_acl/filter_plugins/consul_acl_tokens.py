"""Filters that turn ACL data into the lists the consul_acl tasks loop over.

consul_acl_collect: the consumers' contracts (what each role needs from
Consul, handed over by the playbook with the group of hosts it runs on) into
policies, tokens and retired token names. consul_acl_expand_tokens: every
per_host token into one token per host. consul_acl_merge_shared_files: one
token per host for a file that several contracts deliver to the same host.
consul_acl_file_deliveries: which token file goes to which host of the play.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleFilterError


def consul_acl_collect(consumers: list[dict[str, Any]]) -> dict[str, list]:
    """Policies, tokens and retired names from consul_acl_consumers.

    Each consumer is {hosts: <group>, contract: {tokens: [...], policies: [...],
    retired_tokens: [...]}}. A contract token {name, description, rules,
    per_host, file} becomes a policy of the same name with those rules, and a
    token holding it whose file (if any) goes to the hosts of the consumer's
    group. A contract policy {name, description, rules} is a policy only (for
    the roles of consul_acl_roles)."""
    policies: list[dict[str, Any]] = []
    tokens: list[dict[str, Any]] = []
    retired: list[str] = []
    for consumer in consumers or []:
        if "hosts" not in consumer or "contract" not in consumer:
            raise AnsibleFilterError(
                "consul_acl_consumers: each entry needs 'hosts' (a group) and 'contract'; "
                f"got {sorted(consumer)}")
        contract = consumer["contract"] or {}
        for need in contract.get("tokens", []):
            if not need.get("name") or not need.get("rules"):
                raise AnsibleFilterError(
                    f"consul_acl_consumers: a token of the contract for '{consumer['hosts']}' "
                    "needs a name and rules")
            description = need.get("description", need["name"])
            policies.append({"name": need["name"], "description": description, "rules": need["rules"]})
            token = {"name": need["name"], "description": description, "policies": [need["name"]],
                     "per_host": bool(need.get("per_host", False))}
            if need.get("file"):
                token["file"] = {**need["file"], "hosts": consumer["hosts"]}
            tokens.append(token)
        # Policies without a token of their own: roles and binding rules
        # (consul_acl_roles) hand them to sign-in tokens.
        for need in contract.get("policies", []):
            if not need.get("name") or not need.get("rules"):
                raise AnsibleFilterError(
                    f"consul_acl_consumers: a policy of the contract for '{consumer['hosts']}' "
                    "needs a name and rules")
            policies.append({"name": need["name"], "description": need.get("description", need["name"]),
                             "rules": need["rules"]})
        retired.extend(contract.get("retired_tokens", []))
    names = [p["name"] for p in policies]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AnsibleFilterError(f"consul_acl_consumers: two contracts declare {', '.join(duplicates)}")
    return {"policies": policies, "tokens": tokens, "retired": retired}


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


def _file_hosts(spec: dict[str, Any], groups: dict[str, list[str]]) -> list[str]:
    hosts = [spec["host"]] if "host" in spec else groups.get(spec["hosts"], [])
    return [h for h in hosts if h not in spec.get("exclude_hosts", [])]


def consul_acl_merge_shared_files(tokens: list[dict[str, Any]],
                                  groups: dict[str, list[str]]) -> list[dict[str, Any]]:
    """A host in two consumers' groups may get two token files with the same
    path (consul-template reads one token file, and both the app and the edge
    contract declare a consul-template token). Written one after the other,
    the second would silently replace the first. Instead that host gets one
    token holding the policies of all of them, named after them and the host
    (<a>+<b>-<host>); the original tokens no longer go to that host (a
    per-host token whose only host it was is dropped). Files at one path must
    agree on owner, group and mode."""
    holders: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for token in tokens:
        if token.get("file"):
            for host in _file_hosts(token["file"], groups):
                holders.setdefault((host, token["file"]["path"]), []).append(token)
    shared = {key: held for key, held in holders.items() if len(held) > 1}
    if not shared:
        return tokens
    moved: dict[str, set[str]] = {}
    for (host, _path), held in shared.items():
        for token in held:
            moved.setdefault(token["name"], set()).add(host)
    merged: list[dict[str, Any]] = []
    for token in tokens:
        hosts = moved.get(token["name"])
        if not hosts:
            merged.append(token)
        elif "host" not in token["file"]:
            merged.append({**token, "file": {**token["file"], "exclude_hosts": sorted(
                set(token["file"].get("exclude_hosts", [])) | hosts)}})
    for (host, path), held in sorted(shared.items()):
        names = sorted(t["name"] for t in held)
        owners = {(t["file"].get("owner", "root"), t["file"].get("group", "root"),
                   t["file"].get("mode", "0600")) for t in held}
        if len(owners) > 1:
            raise AnsibleFilterError(
                f"consul_acl: {' and '.join(names)} both deliver {path} to {host} with different "
                f"owner, group or mode {sorted(owners)}; make their file specs agree or change one path")
        name = "+".join(names)
        if not any("host" in t["file"] for t in held):
            name = f"{name}-{host}"
        spec = {key: value for key, value in held[0]["file"].items() if key not in ("hosts", "exclude_hosts")}
        merged.append({
            "name": name,
            "description": f"{path} on {host}, shared by {', '.join(names)}",
            "policies": sorted({p for t in held for p in t.get("policies", [])}),
            "per_host": True,
            "file": {**spec, "host": host},
        })
    return merged


def consul_acl_file_deliveries(tokens: list[dict[str, Any]], groups: dict[str, list[str]],
                               play_hosts: list[str]) -> list[dict[str, Any]]:
    """One {host, name, path, owner, group, mode} per token file and host of
    the play that gets it (a per-host token only to its own host)."""
    deliveries = []
    for token in tokens:
        spec = token.get("file")
        if not spec:
            continue
        for host in _file_hosts(spec, groups):
            if host in play_hosts:
                deliveries.append({"host": host, "name": token["name"], "path": spec["path"],
                                   "owner": spec.get("owner", "root"), "group": spec.get("group", "root"),
                                   "mode": spec.get("mode", "0600")})
    return deliveries


def consul_acl_api_tokens(tokens: list[dict[str, Any]], nodes: list[str], datacenter: str,
                         dns_policy: str = "dns-read",
                         node_datacenters: dict[str, str] | None = None,
                         replication_policy: str | None = None) -> list[dict[str, Any]]:
    """Every token to create in Consul, in one list: the agent token of each
    node (node identity), the DNS token, the replication token when there
    is a secondary datacenter, then the consumer tokens.

    datacenter is the primary one, where tokens are made (and part of each
    token's key); node_datacenters says another datacenter for a node's
    identity. key names the token for its derived accessor ID (stable across
    runs); secret is its file in <secrets>/consul_tokens."""
    where = node_datacenters or {}
    api = [{"key": f"{datacenter}/agent/{node}", "secret": f"agent-{node}",
            "description": f"Agent token of {node}",
            "node_identities": [{"node_name": node, "datacenter": where.get(node, datacenter)}]}
           for node in nodes]
    api.append({"key": f"{datacenter}/dns", "secret": "dns", "description": "DNS interface of every agent",
                "policies": [dns_policy]})
    if replication_policy:
        api.append({"key": f"{datacenter}/replication", "secret": "replication",
                    "description": "ACL replication of the secondary datacenters' servers",
                    "policies": [replication_policy]})
    api += [{"key": f"{datacenter}/token/{t['name']}", "secret": t["name"],
             "description": t.get("description", t["name"]), "policies": t["policies"]} for t in tokens]
    return api


def consul_acl_tokens_to_write(api_tokens: list[dict[str, Any]], current: list[dict[str, Any]],
                               secrets_dir: str, namespace: str) -> list[dict[str, Any]]:
    """The entries of api_tokens that Consul does not hold as declared.

    current is Consul's token list (read with the management token, so it
    carries SecretIDs). A token is written when it is missing, or its
    SecretID, description, policies or node identities differ: a re-run
    that changes nothing calls the token module for none of them."""
    by_accessor = {t.get("AccessorID"): t for t in current or []}
    stale = []
    for token in api_tokens:
        accessor = str(uuid.uuid5(uuid.UUID(namespace), token["key"]))
        have = by_accessor.get(accessor)
        secret = (Path(secrets_dir) / "consul_tokens" / token["secret"]).read_text(encoding="utf-8").strip()
        wanted_nodes = sorted((n["node_name"], n["datacenter"]) for n in token.get("node_identities", []))
        if have is None:
            stale.append(token)
            continue
        policies = sorted(p.get("Name") for p in have.get("Policies") or [])
        nodes = sorted((n.get("NodeName"), n.get("Datacenter")) for n in have.get("NodeIdentities") or [])
        if (have.get("SecretID") != secret or have.get("Description", "") != token["description"]
                or policies != sorted(token.get("policies", [])) or nodes != wanted_nodes):
            stale.append(token)
    return stale


def consul_acl_stale_agent_tokens(current: list[dict[str, Any]], nodes: list[str], datacenter: str,
                                  namespace: str) -> list[str]:
    """Accessor IDs of the agent tokens this role made for nodes that are no
    longer in the inventory (a retired server, a removed client). Only
    tokens whose accessor ID is the one derived for their node identity are
    ours; any other token is left alone."""
    stale = []
    for token in current or []:
        for identity in token.get("NodeIdentities") or []:
            node = identity.get("NodeName", "")
            ours = str(uuid.uuid5(uuid.UUID(namespace), f"{datacenter}/agent/{node}"))
            if token.get("AccessorID") == ours and identity.get("Datacenter") == datacenter \
                    and node not in nodes:
                stale.append(ours)
    return sorted(set(stale))


def consul_acl_login_problems(binding_rules: list[dict[str, Any]], roles: list[dict[str, Any]],
                              auth_methods: list[dict[str, Any]]) -> list[str]:
    """What is wrong with the sign-in data, one sentence per problem naming
    the variable: duplicate names, a binding rule naming an unknown auth
    method or role. (A role's policies may come from a consumer's contract,
    which the preflight does not see: Consul refuses an unknown one when the
    role is written.)"""
    problems: list[str] = []
    for variable, entries in (("consul_acl_roles", roles), ("consul_acl_auth_methods", auth_methods),
                              ("consul_acl_binding_rules", binding_rules)):
        names = [entry.get("name") for entry in entries or []]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"{variable} declares '{name}' twice")
    method_names = {method.get("name") for method in auth_methods or []}
    role_names = {role.get("name") for role in roles or []}
    for rule in binding_rules or []:
        if rule.get("auth_method") not in method_names:
            problems.append(f"consul_acl_binding_rules: rule '{rule.get('name')}' names auth method "
                            f"'{rule.get('auth_method')}', which consul_acl_auth_methods does not declare")
        if rule.get("bind_name") not in role_names:
            problems.append(f"consul_acl_binding_rules: rule '{rule.get('name')}' binds role "
                            f"'{rule.get('bind_name')}', which consul_acl_roles does not declare")
    return problems


def consul_acl_with_discovery_ca(auth_methods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each method with oidc_discovery_ca_file gets that controller file's PEM
    as config OIDCDiscoveryCACert (read when the method is written, so the CA
    may be made earlier in the same run)."""
    result = []
    for declared in auth_methods or []:
        method = dict(declared)
        ca_file = method.pop("oidc_discovery_ca_file", None)
        if ca_file:
            try:
                pem = Path(ca_file).read_text(encoding="utf-8")
            except OSError as error:
                raise AnsibleFilterError(
                    f"consul_acl_auth_methods: '{method.get('name')}': oidc_discovery_ca_file {ca_file} "
                    f"cannot be read ({error.strerror})") from error
            method["config"] = {**(method.get("config") or {}), "OIDCDiscoveryCACert": pem.strip() + "\n"}
        result.append(method)
    return result


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "consul_acl_collect": consul_acl_collect,
            "consul_acl_expand_tokens": consul_acl_expand_tokens,
            "consul_acl_merge_shared_files": consul_acl_merge_shared_files,
            "consul_acl_file_deliveries": consul_acl_file_deliveries,
            "consul_acl_api_tokens": consul_acl_api_tokens,
            "consul_acl_tokens_to_write": consul_acl_tokens_to_write,
            "consul_acl_stale_agent_tokens": consul_acl_stale_agent_tokens,
            "consul_acl_login_problems": consul_acl_login_problems,
            "consul_acl_with_discovery_ca": consul_acl_with_discovery_ca,
        }
