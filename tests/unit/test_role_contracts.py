"""Contracts between roles: consumers and consul_acl, READMEs and argument specs.

The consumers (python_web_service, edge_nginx, consul_snapshot) state what they need from
Consul in their own vars; consul_acl collects what the playbook hands it and
names no consumer itself. The filters are exercised directly, the contracts
and the wiring are read from the repository's files.
"""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "consul_acl_tokens", REPO / "roles/consul_acl/filter_plugins/consul_acl_tokens.py")
acl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(acl)

GROUPS = {"app": ["app-1", "app-2"], "edge": ["edge-1"], "consul_servers": ["s-1"]}
CONSUMERS = [
    {"hosts": "app", "contract": {
        "tokens": [
            {"name": "svc", "description": "the service", "rules": 'service "svc" { policy = "write" }',
             "per_host": True, "file": {"path": "/etc/consul-tokens/svc.token"}},
            {"name": "reader", "rules": 'key "k" { policy = "read" }',
             "file": {"path": "/etc/consul-tokens/reader.token", "mode": "0640", "group": "svc"}},
            {"name": "writer", "rules": 'key "k" { policy = "write" }'},
        ],
        "retired_tokens": ["svc"]}},
    {"hosts": "edge", "contract": {"tokens": [
        {"name": "ui", "rules": 'node_prefix "" { policy = "read" }',
         "file": {"path": "/etc/consul-tokens/ui.token"}}],
        "policies": [{"name": "ui-role", "description": "for a sign-in role",
                      "rules": 'key "" { policy = "read" }'}],
        "retired_tokens": ["ui-role"]}},
]


def test_each_contract_token_becomes_a_policy_and_a_token_for_its_group():
    collected = acl.consul_acl_collect(CONSUMERS)
    assert [p["name"] for p in collected["policies"]] == ["svc", "reader", "writer", "ui", "ui-role"]
    by_name = {t["name"]: t for t in collected["tokens"]}
    assert by_name["reader"]["policies"] == ["reader"]
    assert by_name["reader"]["file"]["hosts"] == "app"
    assert by_name["ui"]["file"]["hosts"] == "edge"
    assert "file" not in by_name["writer"]
    # A contract policy is a policy only: the roles of consul_acl_roles hold it.
    assert "ui-role" not in by_name
    assert collected["policies"][-1]["description"] == "for a sign-in role"
    assert collected["retired"] == ["svc", "ui-role"]


@pytest.mark.parametrize(("consumers", "message"), [
    ([{"contract": {}}], "needs 'hosts'"),
    ([{"hosts": "app", "contract": {"tokens": [{"name": "x"}]}}], "needs a name and rules"),
    ([{"hosts": "app", "contract": {"tokens": [{"rules": "x"}]}}], "needs a name and rules"),
    ([{"hosts": "app", "contract": {"policies": [{"name": "x"}]}}],
     "a policy of the contract for 'app' needs"),
    ([{"hosts": "app", "contract": {"tokens": [{"name": "x", "rules": "r"}]}},
      {"hosts": "edge", "contract": {"policies": [{"name": "x", "rules": "r"}]}}], "two contracts declare x"),
    ([{"hosts": "app", "contract": {"tokens": [{"name": "x", "rules": "r"}]}},
      {"hosts": "edge", "contract": {"tokens": [{"name": "x", "rules": "r"}]}}], "two contracts declare x"),
], ids=["no-hosts", "no-rules", "no-name", "policy-no-rules", "token-and-policy", "duplicate"])
def test_a_broken_contract_is_named(consumers, message):
    with pytest.raises(AnsibleFilterError, match=message):
        acl.consul_acl_collect(consumers)


def test_per_host_tokens_go_to_their_own_host_only():
    tokens = acl.consul_acl_expand_tokens(acl.consul_acl_collect(CONSUMERS)["tokens"], GROUPS)
    deliveries = acl.consul_acl_file_deliveries(tokens, GROUPS, ["app-1", "app-2", "edge-1"])
    svc = [(d["host"], d["name"]) for d in deliveries if d["path"].endswith("svc.token")]
    assert svc == [("app-1", "svc-app-1"), ("app-2", "svc-app-2")]
    reader = [d for d in deliveries if d["name"] == "reader"]
    assert [d["host"] for d in reader] == ["app-1", "app-2"]
    assert {(d["group"], d["mode"]) for d in reader} == {("svc", "0640")}
    assert [d["host"] for d in deliveries if d["name"] == "ui"] == ["edge-1"]


def test_a_limited_run_delivers_to_the_hosts_of_the_play_only():
    tokens = acl.consul_acl_expand_tokens(acl.consul_acl_collect(CONSUMERS)["tokens"], GROUPS)
    deliveries = acl.consul_acl_file_deliveries(tokens, GROUPS, ["app-2"])
    assert {d["host"] for d in deliveries} == {"app-2"}
    assert sorted(d["name"] for d in deliveries) == ["reader", "svc-app-2"]


# A host in both the app and the edge group: both contracts deliver a
# consul-template token to the one file consul-template reads.
SHARED = [
    {"hosts": "app", "contract": {"tokens": [
        {"name": "ct", "rules": 'key "k" { policy = "read" }', "file": {"path": "/t/ct.token"}},
        {"name": "svc", "rules": 'service "svc" { policy = "write" }', "per_host": True,
         "file": {"path": "/t/svc.token"}}]}},
    {"hosts": "edge", "contract": {"tokens": [
        {"name": "ct-edge", "rules": 'service "svc" { policy = "read" }', "file": {"path": "/t/ct.token"}},
        {"name": "svc-edge", "rules": 'node_prefix "" { policy = "read" }', "per_host": True,
         "file": {"path": "/t/svc.token"}}]}},
]
SHARED_GROUPS = {"app": ["app-1", "both-1"], "edge": ["edge-1", "both-1"]}


def shared_tokens(consumers=SHARED, groups=SHARED_GROUPS):
    tokens = acl.consul_acl_expand_tokens(acl.consul_acl_collect(consumers)["tokens"], groups)
    return acl.consul_acl_merge_shared_files(tokens, groups)


@pytest.mark.parametrize(("host", "path", "name", "policies"), [
    ("app-1", "/t/ct.token", "ct", ["ct"]),
    ("edge-1", "/t/ct.token", "ct-edge", ["ct-edge"]),
    ("both-1", "/t/ct.token", "ct+ct-edge-both-1", ["ct", "ct-edge"]),
    ("app-1", "/t/svc.token", "svc-app-1", ["svc"]),
    ("edge-1", "/t/svc.token", "svc-edge-edge-1", ["svc-edge"]),
    ("both-1", "/t/svc.token", "svc-both-1+svc-edge-both-1", ["svc", "svc-edge"]),
])
def test_a_file_two_contracts_deliver_to_one_host_gets_one_token_with_both_policies(host, path, name,
                                                                                    policies):
    tokens = shared_tokens()
    deliveries = acl.consul_acl_file_deliveries(tokens, SHARED_GROUPS, ["app-1", "edge-1", "both-1"])
    at_path = [d["name"] for d in deliveries if (d["host"], d["path"]) == (host, path)]
    assert at_path == [name]
    assert next(t for t in tokens if t["name"] == name)["policies"] == policies


def test_a_shared_file_drops_the_per_host_tokens_it_replaces_and_names_the_host():
    names = {t["name"]: t for t in shared_tokens()}
    assert "svc-both-1" not in names and "svc-edge-both-1" not in names
    assert names["ct"]["file"]["exclude_hosts"] == ["both-1"]
    assert "both-1" in names["ct+ct-edge-both-1"]["description"]
    # Accessor keys stay unique: one API token per name.
    api = acl.consul_acl_api_tokens(list(names.values()), [], "dc1")
    keys = [t["key"] for t in api]
    assert len(keys) == len(set(keys))


def test_files_at_one_path_with_different_owners_are_refused_by_name():
    consumers = [
        {"hosts": "app", "contract": {"tokens": [
            {"name": "a", "rules": "r", "file": {"path": "/t/x.token", "owner": "svc"}}]}},
        {"hosts": "edge", "contract": {"tokens": [
            {"name": "b", "rules": "r", "file": {"path": "/t/x.token"}}]}},
    ]
    with pytest.raises(AnsibleFilterError, match=r"a and b both deliver /t/x.token to both-1"):
        shared_tokens(consumers)


def test_tokens_that_share_no_file_on_any_host_are_left_as_they_are():
    tokens = acl.consul_acl_expand_tokens(acl.consul_acl_collect(CONSUMERS)["tokens"], GROUPS)
    assert acl.consul_acl_merge_shared_files(tokens, GROUPS) == tokens


def test_api_tokens_hold_agents_dns_then_consumers_with_stable_keys():
    tokens = acl.consul_acl_expand_tokens(acl.consul_acl_collect(CONSUMERS)["tokens"], GROUPS)
    api = acl.consul_acl_api_tokens(tokens, ["s-1", "app-1"], "dc1")
    assert [t["key"] for t in api[:3]] == ["dc1/agent/s-1", "dc1/agent/app-1", "dc1/dns"]
    assert api[0]["node_identities"] == [{"node_name": "s-1", "datacenter": "dc1"}]
    assert "policies" not in api[0]
    assert api[2]["policies"] == ["dns-read"]
    assert {"key": "dc1/token/svc-app-1", "secret": "svc-app-1"}.items() <= api[3].items()


def load_vars(role: str) -> dict:
    return yaml.safe_load((REPO / "roles" / role / "vars" / "main.yml").read_text(encoding="utf-8"))


# Every role that states a contract with consul_acl (vars/main.yml: <role>_consul_acl).
CONSUMER_ROLES = sorted(p.parent.parent.name for p in (REPO / "roles").glob("*/vars/main.yml")
                   if f"\n{p.parent.parent.name}_consul_acl:" in p.read_text(encoding="utf-8"))


def test_the_consumers_are_found():
    assert {"python_web_service", "edge_nginx", "consul_snapshot"} <= set(CONSUMER_ROLES)


@pytest.mark.parametrize("role", CONSUMER_ROLES)
def test_consumer_roles_state_their_needs(role):
    contract = load_vars(role)[f"{role}_consul_acl"]
    assert contract["tokens"], role
    for token in contract["tokens"]:
        assert token["name"] and token["rules"].strip(), token
        assert set(token) <= {"name", "description", "rules", "per_host", "file"}, token


def test_consul_acl_names_no_consumer():
    consumer_names = {t["name"] for role in CONSUMER_ROLES
                      for t in load_vars(role)[f"{role}_consul_acl"]["tokens"]}
    consul_acl_role = REPO / "roles" / "consul_acl"
    text = "\n".join(p.read_text(encoding="utf-8") for p in consul_acl_role.rglob("*")
                     if p.is_file() and p.suffix in {".yml", ".j2", ".md"})
    consumer_names |= {p["name"] for role in CONSUMER_ROLES
                       for p in load_vars(role)[f"{role}_consul_acl"].get("policies", [])}
    for name in consumer_names | {"python-web-service", "app", "edge", "consul-snapshot"}:
        assert f'"{name}"' not in text and f" {name}:" not in text and f"[{name}]" not in text, name


def test_the_acl_play_hands_every_consumer_contract_over():
    plays = yaml.safe_load((REPO / "playbooks" / "consul.yml").read_text(encoding="utf-8"))
    acl_play = next(p for p in plays if any(r.get("role") == "consul_acl" for r in p.get("roles", [])))
    role = next(r for r in acl_play["roles"] if r["role"] == "consul_acl")
    consumers = role["vars"]["consul_acl_consumers"]
    imported = {t["ansible.builtin.import_role"]["name"] for t in acl_play["pre_tasks"]}
    assert {c["contract"].strip("{} ").removesuffix("_consul_acl") for c in consumers} == imported


def test_role_readmes_state_the_inputs_their_argument_specs_take():
    import role_docs

    for role in role_docs.roles():
        readme = (role / "README.md").read_text(encoding="utf-8")
        assert role_docs.render(role, readme) == readme, (
            f"{role.name}/README.md: the contract table is out of step with meta/argument_specs.yml; "
            "run python tools/checks/role_docs.py")
        assert "| output |" in readme, f"{role.name}/README.md names no output"


def test_only_tokens_that_consul_does_not_hold_as_declared_are_written(tmp_path):
    namespace = "6f4b6c1e-2f0d-4b8e-9a55-6c1b2f1d9c10"
    (tmp_path / "consul_tokens").mkdir()
    api = acl.consul_acl_api_tokens([{"name": "ui", "description": "UI", "policies": ["ui"]}], ["s-1"], "dc1")
    for token in api:
        (tmp_path / "consul_tokens" / token["secret"]).write_text(f"secret-of-{token['secret']}\n")

    def held(token):
        import uuid
        entry = {"AccessorID": str(uuid.uuid5(uuid.UUID(namespace), token["key"])),
                 "SecretID": f"secret-of-{token['secret']}", "Description": token["description"],
                 "Policies": [{"ID": "x", "Name": p} for p in token.get("policies", [])]}
        if "node_identities" in token:
            entry["NodeIdentities"] = [{"NodeName": n["node_name"], "Datacenter": n["datacenter"]}
                                       for n in token["node_identities"]]
        return entry

    current = [held(t) for t in api]
    assert acl.consul_acl_tokens_to_write(api, current, str(tmp_path), namespace) == []
    assert acl.consul_acl_tokens_to_write(api, [], str(tmp_path), namespace) == api
    for field, value in (("SecretID", "another"), ("Description", "changed"),
                         ("Policies", [{"Name": "other"}])):
        changed = [dict(entry) for entry in current]
        changed[-1][field] = value
        assert [t["key"] for t in acl.consul_acl_tokens_to_write(api, changed, str(tmp_path), namespace)] == [
            "dc1/token/ui"], field
    moved = [dict(entry) for entry in current]
    moved[0]["NodeIdentities"] = [{"NodeName": "s-1", "Datacenter": "dc2"}]
    assert [t["key"] for t in acl.consul_acl_tokens_to_write(api, moved, str(tmp_path), namespace)] == [
        "dc1/agent/s-1"]


def test_agent_tokens_of_nodes_that_left_the_inventory_are_stale_and_no_other():
    namespace = "6f4b6c1e-2f0d-4b8e-9a55-6c1b2f1d9c10"

    def agent(node: str, dc: str = "dc1", accessor: str | None = None) -> dict:
        ours = str(uuid.uuid5(uuid.UUID(namespace), f"{dc}/agent/{node}"))
        return {"AccessorID": accessor or ours, "NodeIdentities": [{"NodeName": node, "Datacenter": dc}]}

    current = [agent("s-1"), agent("s-4"), agent("s-5"), agent("c-9"),
               agent("s-6", accessor="11111111-1111-1111-1111-111111111111"),  # made by someone else
               agent("s-7", dc="dc2"),                                            # another datacenter's
               {"AccessorID": "22222222-2222-2222-2222-222222222222", "Policies": [{"Name": "x"}]}]
    stale = acl.consul_acl_stale_agent_tokens(current, ["s-1", "s-2", "s-3"], "dc1", namespace)
    assert stale == sorted(agent(n)["AccessorID"] for n in ("s-4", "s-5", "c-9"))
    assert acl.consul_acl_stale_agent_tokens([], ["s-1"], "dc1", namespace) == []


SIGN_IN_METHODS = [{"name": "idp", "type": "jwt", "max_token_ttl": "8h", "config": {}}]
SIGN_IN_ROLES = [{"name": "ui-operator", "policies": ["ui-operator"]},
                 {"name": "ui-read-only", "policies": ["ui-read-only"]}]
SIGN_IN_RULES = [{"name": "admins", "auth_method": "idp", "selector": '"a" in list.groups',
                  "bind_name": "ui-operator"},
                 {"name": "readers", "auth_method": "idp", "selector": '"r" in list.groups',
                  "bind_name": "ui-read-only"}]


@pytest.mark.parametrize(("rules", "roles", "methods", "expected"), [
    (SIGN_IN_RULES, SIGN_IN_ROLES, SIGN_IN_METHODS, []),
    ([], [], [], []),
    ([{**SIGN_IN_RULES[0], "auth_method": "idq"}], SIGN_IN_ROLES, SIGN_IN_METHODS,
     ["consul_acl_binding_rules: rule 'admins' names auth method 'idq', which consul_acl_auth_methods "
      "does not declare"]),
    ([{**SIGN_IN_RULES[0], "bind_name": "root"}], SIGN_IN_ROLES, SIGN_IN_METHODS,
     ["consul_acl_binding_rules: rule 'admins' binds role 'root', which consul_acl_roles does not declare"]),
    ([*SIGN_IN_RULES, SIGN_IN_RULES[0]], SIGN_IN_ROLES, SIGN_IN_METHODS,
     ["consul_acl_binding_rules declares 'admins' twice"]),
    (SIGN_IN_RULES, [*SIGN_IN_ROLES, SIGN_IN_ROLES[0]], [*SIGN_IN_METHODS, *SIGN_IN_METHODS],
     ["consul_acl_roles declares 'ui-operator' twice", "consul_acl_auth_methods declares 'idp' twice"]),
    # A rule with neither a known method nor a known role: both named.
    ([{"name": "x", "auth_method": None, "bind_name": None}], [], [],
     ["consul_acl_binding_rules: rule 'x' names auth method 'None', which consul_acl_auth_methods "
      "does not declare",
      "consul_acl_binding_rules: rule 'x' binds role 'None', which consul_acl_roles does not declare"]),
], ids=["good", "none", "unknown-method", "unknown-role", "duplicate-rule", "duplicate-role-and-method",
        "nothing-known"])
def test_sign_in_data_that_names_what_does_not_exist_is_named(rules, roles, methods, expected):
    assert acl.consul_acl_login_problems(rules, roles, methods) == expected


def test_node_identities_name_each_nodes_datacenter_and_a_secondary_gets_a_replication_token():
    api = acl.consul_acl_api_tokens([], ["s-1", "dc2-s-1"], "dc1", node_datacenters={"dc2-s-1": "dc2"},
                                    replication_policy="acl-replication")
    identities = {t["secret"]: t["node_identities"] for t in api if "node_identities" in t}
    assert identities == {"agent-s-1": [{"node_name": "s-1", "datacenter": "dc1"}],
                          "agent-dc2-s-1": [{"node_name": "dc2-s-1", "datacenter": "dc2"}]}
    # Every key is the primary's: accessor IDs stay stable whatever the node's datacenter.
    assert all(t["key"].startswith("dc1/") for t in api)
    replication = [t for t in api if t["secret"] == "replication"]
    assert replication == [{"key": "dc1/replication", "secret": "replication",
                            "description": "ACL replication of the secondary datacenters' servers",
                            "policies": ["acl-replication"]}]
    # One datacenter: no replication token.
    assert not [t for t in acl.consul_acl_api_tokens([], ["s-1"], "dc1") if t["secret"] == "replication"]
