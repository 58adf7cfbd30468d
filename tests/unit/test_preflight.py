"""site.yml stops on a wrong inventory before touching any host, with a
message that names the variable and the fix.

The inventories here point at docker containers that do not exist, so a play
that tried to reach a host would fail with a connection error instead of the
expected message."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ansible_playbook, write_inventory

SERVERS = ["preflight-server-1", "preflight-server-2", "preflight-server-3"]
CLIENTS = ["preflight-client-1"]
UNREACHED = ("UNREACHABLE", "No such container", "Failed to connect")


def run_site(tmp_path, servers=SERVERS, host_vars=None):
    inventory = write_inventory(tmp_path / "hosts.yml", servers, CLIENTS, host_vars)
    return ansible_playbook("-i", str(inventory), "site.yml")


def stopped_in_preflight(result, expected: list[str]) -> str:
    """Assert the run failed with every expected text and touched no host."""
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for text in expected:
        assert text in output, output
    assert not any(marker in output for marker in UNREACHED), output
    return output


@pytest.mark.parametrize(("host_vars", "expected"), [
    ({"consul_version": "latest"}, ["consul_version", "MAJOR.MINOR.PATCH"]),
    ({"consul_version": "v1.21.0"}, ["consul_version", 'no leading "v"']),
    ({"consul_datacenter": "DC 1"}, ["consul_datacenter", "lower-case letters"]),
    ({"consul_install_method": "curl"}, ["consul_install_method", '"remote"', '"controller"']),
    ({"consul_autopilot_last_contact_threshold": "2x"},
     ["consul_autopilot_last_contact_threshold", "Go durations"]),
    ({"consul_autopilot_server_stabilization_time": 10},
     ["consul_autopilot_server_stabilization_time", "10s"]),
    ({"consul_autopilot_max_trailing_logs": -1}, ["consul_autopilot_max_trailing_logs", "whole number"]),
    # Each of these ends up in a systemd unit: a line break would add a directive.
    ({"consul_snapshot_on_calendar": "hourly\nExecStartPre=/bin/sh -c id"},
     ["consul_snapshot_on_calendar", "systemd-analyze calendar"]),
    ({"consul_snapshot_on_calendar": ""}, ["consul_snapshot_on_calendar", "on one line"]),
    ({"consul_snapshot_on_calendar": "hourly\n"}, ["consul_snapshot_on_calendar", "on one line"]),
    ({"consul_snapshot_keep_daily": "7\n"}, ["consul_snapshot_keep_daily", "whole number"]),
    ({"consul_snapshot_user": "consul-snapshot\n"}, ["consul_snapshot_user", "system user"]),
    ({"consul_snapshot_keep_latest": 0}, ["consul_snapshot_keep_latest", "1 or more"]),
    ({"consul_snapshot_keep_latest": "24 --any-server"}, ["consul_snapshot_keep_latest", "whole number"]),
    ({"consul_snapshot_keep_daily": -1}, ["consul_snapshot_keep_daily", "whole number"]),
    ({"consul_snapshot_state_dir_name": "../etc"}, ["consul_snapshot_state_dir_name", "no slash"]),
    ({"consul_snapshot_state_dir_name": "snaps\nUser=root"}, ["consul_snapshot_state_dir_name", "no slash"]),
    ({"consul_snapshot_user": "root\nGroup=root"}, ["consul_snapshot_user", "system user"]),
    ({"consul_acl_binding_rules": [{"name": "admins", "auth_method": "idp", "selector": '"a" in list.groups',
                                    "bind_name": "ui-operator"}]},
     ["consul_acl_binding_rules", "'admins' names auth method 'idp'", "binds role 'ui-operator'"]),
], ids=["version-latest", "version-with-v", "datacenter", "install-method",
        "autopilot-threshold", "autopilot-stabilization-no-unit", "autopilot-trailing-negative",
        "snapshot-calendar-newline", "snapshot-calendar-empty", "snapshot-calendar-final-newline",
        "snapshot-daily-final-newline", "snapshot-user-final-newline", "snapshot-keep-zero",
        "snapshot-keep-with-flag", "snapshot-daily-negative", "snapshot-dir-dotdot",
        "snapshot-dir-newline", "snapshot-user-newline", "binding-rule-names-nothing"])
def test_bad_variable_is_named_with_its_fix(tmp_path, host_vars, expected):
    stopped_in_preflight(run_site(tmp_path, host_vars=host_vars), expected)


def test_no_servers_in_inventory(tmp_path):
    stopped_in_preflight(run_site(tmp_path, servers=[]), ["consul_servers_group", "has no hosts"])


def test_even_number_of_servers(tmp_path):
    stopped_in_preflight(run_site(tmp_path, servers=SERVERS[:2]), ["has 2 servers", "odd number"])


def two_datacenters(tmp_path, dc1: list[str], dc2: list[str], clients2: list[str], extra_dc1=None,
                    primary="dc1") -> str:
    """The lab's shape with a second datacenter: a group per datacenter that
    sets platform_datacenter, both sets of servers in consul_servers."""
    inventory = write_inventory(tmp_path / "hosts.yml", dc1 + dc2, CLIENTS + clients2,
                                {"platform_primary_datacenter": primary})
    data = yaml.safe_load(inventory.read_text(encoding="utf-8"))
    children = data["all"]["children"]
    children["dc1"] = {"hosts": {h: None for h in dc1 + CLIENTS + (extra_dc1 or [])},
                       "vars": {"platform_datacenter": "dc1"}}
    children["dc2"] = {"hosts": {h: None for h in dc2 + clients2}, "vars": {"platform_datacenter": "dc2"}}
    inventory.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(inventory)


DC2 = ["preflight-dc2-server-1"]


def test_two_datacenters_pass_preflight(tmp_path):
    # The control case for the rules below.
    inventory = two_datacenters(tmp_path, SERVERS, DC2, ["preflight-dc2-app-1"])
    result = ansible_playbook("-i", inventory, "playbooks/preflight.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("shape", "expected"), [
    ({"dc2": [*DC2, "preflight-dc2-server-2"]}, ["datacenter 'dc2' has 2 servers", "odd number"]),
    ({"dc2": [], "clients2": ["preflight-dc2-app-1"]}, ["datacenter 'dc2' has hosts but no server"]),
    ({"extra_dc1": DC2}, ["host preflight-dc2-server-1 is in the groups of two datacenters (dc1, dc2)"]),
    ({"primary": "dc3"}, ["the primary datacenter 'dc3' (platform_primary_datacenter) has no host"]),
    ({"primary": "DC 1"}, ["consul_primary_datacenter 'DC 1' is not a datacenter name"]),
], ids=["even-servers-in-dc2", "dc2-without-server", "host-in-two-datacenters", "primary-without-servers",
        "primary-bad-name"])
def test_datacenter_layout_is_checked(tmp_path, shape, expected):
    inventory = two_datacenters(tmp_path, SERVERS, shape.get("dc2", DC2), shape.get("clients2", []),
                                shape.get("extra_dc1"), shape.get("primary", "dc1"))
    stopped_in_preflight(ansible_playbook("-i", inventory, "site.yml"), ["consul:", *expected])


def test_good_inventory_passes_preflight(tmp_path):
    # The control case: the same inventory, without a bad value, gets through
    # the preflight play (which touches no host either).
    inventory = write_inventory(tmp_path / "hosts.yml", SERVERS, CLIENTS)
    result = ansible_playbook("-i", str(inventory), "playbooks/preflight.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("env", ["staging", "production"])
def test_example_inventories_pass_preflight(env):
    # The commented examples stay consistent with the roles' rules; the
    # extra vars stand in for their vault files.
    vault = {"vault_oauth2_proxy_client_secret": "from-vault", "vault_edge_tls_cert": "PEM",
             "vault_edge_tls_key": "PEM"}
    result = ansible_playbook("-i", f"inventories/{env}", "-e", json.dumps(vault),
                              "playbooks/preflight.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("host_vars", "expected"), [
    ({"consul_gossip_key": "c2hvcnQ="}, ["consul_gossip_key", "not base64 of 32 bytes", "consul keygen"]),
    ({"consul_gossip_key": ""}, ["consul_gossip_key", "is empty"]),
    ({"consul_acl_bootstrap_token": ""}, ["consul_acl_bootstrap_token", "is empty", "vault"]),
    ({"consul_acl_bootstrap_token": "not-a-uuid"}, ["consul_acl_bootstrap_token", "not a lower-case UUID"]),
    ({"consul_tls_ca_key": "-----BEGIN EC PRIVATE KEY-----\nMHc=\n-----END EC PRIVATE KEY-----\n"},
     ["consul_tls_ca_cert and consul_tls_ca_key go together"]),
], ids=["gossip-short", "gossip-empty", "token-empty", "token-not-uuid", "ca-key-without-cert"])
def test_bad_secret_is_named_and_not_printed(tmp_path, host_vars, expected):
    output = stopped_in_preflight(run_site(tmp_path, host_vars=host_vars), expected)
    for value in host_vars.values():
        if len(value) > 8:
            assert value.strip() not in output  # the bad value itself is not echoed


def run_edge_preflight(tmp_path, edge_vars, playbook="site.yml"):
    inventory = write_inventory(tmp_path / "hosts.yml", SERVERS, CLIENTS)
    data = yaml.safe_load(inventory.read_text(encoding="utf-8"))
    data["all"]["children"]["consul_clients"]["children"] = {
        "edge": {"hosts": {"preflight-edge-1": None}, "vars": {
            "oauth2_proxy_oidc_issuer_url": "https://idp.example.com",
            "oauth2_proxy_public_url": "https://consul.example.com",
            "oauth2_proxy_client_secret": "s3cret-from-vault",
            "edge_nginx_public_url": "https://www.example.com",
            "edge_nginx_ui_url": "https://consul.example.com",
            "edge_nginx_app_networks": ["10.0.1.0/24"],
            "edge_token_exchange_auth_method": "company-sso",
            **edge_vars}}}
    inventory.write_text(yaml.safe_dump(data), encoding="utf-8")
    return ansible_playbook("-i", str(inventory), playbook)


@pytest.mark.parametrize(("edge_vars", "expected"), [
    ({"oauth2_proxy_oidc_issuer_url": "http://idp.example.com"}, ["oauth2_proxy_oidc_issuer_url", "https://"]),
    ({"edge_nginx_public_url": "consul.example.com"}, ["edge_nginx_public_url", "https:// URL"]),
    ({"edge_nginx_ui_url": "consul.example.com"}, ["edge_nginx_ui_url", "own origin"]),
    ({"edge_nginx_ui_url": "https://www.example.com/ui/"}, ["edge_nginx_ui_url", "origin of its own"]),
    ({"edge_nginx_app_networks": []}, ["edge_nginx_app_networks is empty", "CIDR"]),
    ({"edge_nginx_app_networks": ["app-1"]}, ["edge_nginx_app_networks", "CIDR networks"]),
    ({"oauth2_proxy_cookie_name": "_consul_edge_session"}, ["oauth2_proxy_cookie_name", "__Host-"]),
    ({"oauth2_proxy_allowed_groups": []}, ["oauth2_proxy_allowed_groups is empty"]),
    ({"oauth2_proxy_client_secret": None}, ["no OAuth2 client secret", "oauth2_proxy_client_secret_file"]),
    ({"edge_nginx_tls_cert": "-----BEGIN CERTIFICATE-----"}, ["edge_nginx_tls_cert and edge_nginx_tls_key"]),
    ({"edge_token_exchange_auth_method": ""},
     ["edge_token_exchange_auth_method", "consul_acl_auth_methods"]),
    ({"edge_token_exchange_auth_method": "sso\nx"},
     ["edge_token_exchange_auth_method", "auth method (type jwt)"]),
    ({"edge_token_exchange_cookie_name": "a;b"}, ["edge_token_exchange_cookie_name", "cookie_name"]),
    ({"edge_token_exchange_session_lifetime": "8 hours"}, ["edge_token_exchange_session_lifetime",
                                                          "durations like 8h"]),
    ({"edge_token_exchange_recheck": ""}, ["edge_token_exchange_recheck", "durations like 8h"]),
], ids=["issuer-http", "public-url", "ui-url", "ui-same-origin", "no-app-networks", "app-network-name",
         "cookie-not-host-only", "no-groups", "no-client-secret", "cert-without-key", "no-auth-method",
        "auth-method-newline", "cookie-name", "lifetime", "recheck-empty"])
def test_bad_edge_variable_is_named_with_its_fix(tmp_path, edge_vars, expected):
    stopped_in_preflight(run_edge_preflight(tmp_path, edge_vars), expected)


def test_good_edge_inventory_passes_preflight(tmp_path):
    result = run_edge_preflight(tmp_path, {}, playbook="playbooks/preflight.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "edge_nginx : Check the public URL" in result.stdout
