"""ACLs deny by default, tokens are least-privilege, gossip and RPC are
encrypted and authenticated, and no secret leaks into logs."""

from __future__ import annotations

import json
import stat
import uuid

import pytest
import yaml
from conftest import (
    ANSIBLE_LOG,
    REPO,
    SECRETS,
    _quote,
    api_call,
    consul_api,
    dns_a_records,
    get_host,
    group,
    run_playbook,
    token_secret,
    write_private_file,
)


@pytest.fixture(scope="module")
def app(clients):
    return clients[0]


# --- ACLs -----------------------------------------------------------------------

def test_anonymous_kv_and_catalog_writes_are_denied(app):
    key = f"molecule/anon-{uuid.uuid4()}"
    consul_api(app, f"kv/{key}", "PUT", "x")
    assert api_call(app, f"kv/{key}", token=None)[0] == 403
    assert api_call(app, f"kv/{key}", "PUT", "y", token=None)[0] == 403
    register = '{"Node": "anon-node", "Address": "192.0.2.1"}'
    assert api_call(app, "catalog/register", "PUT", register, token=None)[0] == 403
    consul_api(app, f"kv/{key}", "DELETE")


def test_anonymous_catalog_reads_see_nothing(app):
    # Consul filters list endpoints instead of refusing them: with deny by
    # default the anonymous token sees no node and no service.
    assert consul_api(app, "catalog/nodes", token=None) == []
    assert consul_api(app, "catalog/services", token=None) == {}
    assert consul_api(app, "catalog/nodes")  # the management token sees them


def test_dns_answers_without_opening_the_anonymous_token(app):
    assert len(dns_a_records(app, "consul.service.consul")) == 3


def test_consul_template_token_reads_the_greeting_and_nothing_else(app):
    own, other = "python-web-service/greeting", f"molecule/other-{uuid.uuid4()}"
    sibling = "python-web-service/other-setting"
    consul_api(app, f"kv/{own}", "PUT", "Hello World")
    consul_api(app, f"kv/{other}", "PUT", "secret")
    consul_api(app, f"kv/{sibling}", "PUT", "secret")
    assert api_call(app, f"kv/{own}?raw", token="consul-template") == (200, "Hello World")
    assert api_call(app, f"kv/{own}", "PUT", "changed", token="consul-template")[0] == 403
    assert api_call(app, f"kv/{other}?raw", token="consul-template")[0] == 403
    assert api_call(app, f"kv/{sibling}?raw", token="consul-template")[0] == 403
    # No catalog reads: Consul filters what the token may not see.
    assert consul_api(app, "catalog/services", token="consul-template") == {}
    assert consul_api(app, "health/service/python-web-service", token="consul-template") == []
    consul_api(app, f"kv/{other}", "DELETE")
    consul_api(app, f"kv/{sibling}", "DELETE")


def test_each_app_host_has_its_own_web_service_token(clients, servers):
    apps = [host for host in clients if host.backend.host in group("app")]
    secrets = {host.backend.host: host.file("/etc/consul-tokens/python-web-service.token")
               .content_string.strip() for host in apps}
    assert len(set(secrets.values())) == len(apps) >= 2
    assert secrets == {name: token_secret(f"python-web-service-{name}") for name in secrets}
    names = {t.get("Description", "") for t in consul_api(servers[0], "acl/tokens")}
    # Described as the role's contract describes it, with the host's name.
    contract = yaml.safe_load((REPO / "roles/python_web_service/vars/main.yml").read_text(encoding="utf-8"))
    description = next(t["description"] for t in contract["python_web_service_consul_acl"]["tokens"]
                       if t["name"] == "python-web-service")
    assert {f"{description} on {name}" for name in secrets} <= names


def test_a_rerun_deletes_the_token_an_earlier_version_shared(servers):
    """Migration: the web-service token that every app host shared (same
    derived accessor ID as the old version made) is deleted by a re-run."""
    accessor = str(uuid.uuid5(uuid.UUID("6f4b6c1e-2f0d-4b8e-9a55-6c1b2f1d9c10"),
                              "dc1/token/python-web-service"))
    api_call(servers[0], f"acl/token/{accessor}", "DELETE")  # left by an aborted run
    consul_api(servers[0], "acl/token", "PUT", json.dumps({
        "AccessorID": accessor, "Description": "The web service's registration",
        "Policies": [{"Name": "python-web-service"}]}))
    assert api_call(servers[0], f"acl/token/{accessor}")[0] == 200
    result = run_playbook("site.yml", "--tags", "consul_acl_tokens")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert api_call(servers[0], f"acl/token/{accessor}")[0] == 403  # ACL not found


def test_web_service_token_registers_only_its_service_and_reads_nothing(app):
    token = f"python-web-service-{app.backend.host}"
    own = '{"Name": "python-web-service", "ID": "molecule-probe", "Port": 8080}'
    other = '{"Name": "other-service", "ID": "molecule-other", "Port": 8081}'
    assert api_call(app, "agent/service/register", "PUT", own, token=token)[0] == 200
    assert api_call(app, "agent/service/register", "PUT", other, token=token)[0] == 403
    status, _ = api_call(app, "agent/service/deregister/molecule-probe", "PUT", token=token)
    assert status == 200
    assert api_call(app, "kv/python-web-service/greeting", token=token)[0] == 403
    assert consul_api(app, "catalog/nodes", token=token) == []


def test_greeting_writer_writes_that_one_key_only(app):
    token, other = "greeting-writer", f"molecule/other-{uuid.uuid4()}"
    # A check-and-set against an index the key never has: allowed, changes nothing.
    assert api_call(app, "kv/python-web-service/greeting?cas=1", "PUT", "x", token=token) == (200, "false")
    assert api_call(app, "kv/python-web-service/greeting-other?cas=1", "PUT", "x", token=token)[0] == 403
    assert api_call(app, f"kv/{other}?cas=1", "PUT", "x", token=token)[0] == 403
    # Consul's "write" includes reading that key; nothing else is readable.
    assert api_call(app, "kv/python-web-service/greeting?raw", token=token)[0] == 200
    assert consul_api(app, "kv/?keys", token=token) == ["python-web-service/greeting"]
    assert consul_api(app, "catalog/services", token=token) == {}


def test_ui_operator_has_no_acl_rights(app, servers):
    """The sign-in roles, through tokens of them made here as a sign-in would."""
    made = {role: consul_api(servers[0], "acl/token", "PUT", json.dumps(
        {"Description": f"test of {role}", "Roles": [{"Name": role}], "ExpirationTTL": "10m"}))
        for role in ("ui-operator", "ui-read-only")}

    def call(role: str, path: str, method: str = "GET") -> int:
        header = f"/root/.{role}.test-header"
        return int(app.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' -X {method} -d x "
                                    f"-H @{header} http://127.0.0.1:8500/v1/{path}"))

    try:
        for role, token in made.items():
            write_private_file(app, f"/root/.{role}.test-header", f"X-Consul-Token: {token['SecretID']}\n")
        for path in ("acl/tokens", "acl/policies", "acl/roles"):
            assert call("ui-operator", path) == 403, path
        # The read-only role writes nothing.
        assert call("ui-read-only", f"kv/molecule/ro-{uuid.uuid4()}", "PUT") == 403
        assert call("ui-read-only", "kv/python-web-service/greeting") in (200, 404)
    finally:
        for role, token in made.items():
            app.run(f"rm -f /root/.{role}.test-header")
            consul_api(servers[0], f"acl/token/{token['AccessorID']}", "DELETE")


def test_exactly_one_management_token_the_persisted_one(servers):
    tokens = consul_api(servers[0], "acl/tokens")
    management = [t for t in tokens
                  if any(p["Name"] == "global-management" for p in t.get("Policies", []))]
    assert len(management) == 1
    me = consul_api(servers[0], "acl/token/self")
    assert me["AccessorID"] == management[0]["AccessorID"]


def test_every_node_has_its_agent_token(servers):
    tokens = consul_api(servers[0], "acl/tokens")
    identities = {n["NodeName"] for t in tokens for n in t.get("NodeIdentities", [])}
    assert identities == set(group("consul_servers", None) + group("consul_clients", None))


# --- Gossip and RPC encryption ----------------------------------------------------

def test_rogue_agent_without_gossip_key_cannot_join(app, servers):
    server = group("consul_servers")[0]
    app.run("rm -rf /tmp/rogue && mkdir -p /tmp/rogue")
    app.run(
        "setsid nohup timeout 25 consul agent -node=rogue -data-dir=/tmp/rogue "
        "-bind=$(hostname -I | cut -d' ' -f1) -serf-lan-port=18301 -http-port=18500 "
        f"-dns-port=-1 -grpc-port=-1 -retry-join={server} -retry-interval=1s "
        "> /tmp/rogue/agent.log 2>&1 < /dev/null &")
    try:
        # The rogue is up and trying; give it several join attempts.
        app.run("for i in $(seq 30); do curl -s -o /dev/null 127.0.0.1:18500/v1/agent/self "
                "&& break; sleep 0.5; done; sleep 6")
        rogue_view = app.check_output("curl -s 127.0.0.1:18500/v1/agent/members")
        assert '"Name":"rogue"' in rogue_view.replace(" ", "")
        assert server not in rogue_view
        names = {m["Name"] for m in consul_api(servers[0], "agent/members")}
        assert "rogue" not in names
    finally:
        app.run("pkill -f 'consul agent -node=rogue' || true")


_RPC_TLS_PROBE = """
import socket, ssl, sys
host, cert = sys.argv[1], sys.argv[2:]
ctx = ssl.create_default_context(cafile="/etc/consul.d/tls/consul-agent-ca.pem")
ctx.check_hostname = False
if cert:
    ctx.load_cert_chain("/etc/consul.d/tls/server.pem", "/etc/consul.d/tls/server-key.pem")
raw = socket.create_connection((host, 8300), timeout=5)
raw.sendall(b"\\x03")  # Consul's RPC type byte for TLS
tls = ctx.wrap_socket(raw, server_hostname="server.dc1.consul")
tls.settimeout(2)
try:
    data = tls.recv(1)
    print("closed" if data == b"" else "data")
except socket.timeout:
    print("accepted")  # the server waits for an RPC: the handshake was accepted
except (ssl.SSLError, ConnectionError) as exc:
    print("refused", type(exc).__name__)
"""


def test_rpc_needs_a_certificate_signed_by_the_ca(servers):
    prober, target = servers[1], group("consul_servers")[0]
    without = prober.check_output(f"python3 -c {_quote(_RPC_TLS_PROBE)} {target}")
    with_cert = prober.check_output(f"python3 -c {_quote(_RPC_TLS_PROBE)} {target} cert")
    assert without.startswith(("refused", "closed")), without
    assert with_cert == "accepted", with_cert  # control: the same probe with a CA-signed cert


# --- Files and modes ------------------------------------------------------------------

def test_token_files_are_private(app):
    for name in ("consul-template", "python-web-service"):
        token_file = app.file(f"/etc/consul-tokens/{name}.token")
        assert (token_file.user, token_file.group, token_file.mode) == ("root", "root", 0o600)


def test_secret_configs_and_keys_are_not_world_readable(host):
    if not host.file("/etc/consul.d").exists:
        pytest.skip("no Consul agent on this host (the IdP)")
    for path in ("/etc/consul.d/gossip.hcl", "/etc/consul.d/acl.hcl"):
        config = host.file(path)
        assert (config.user, config.group, config.mode) == ("root", "consul", 0o640)
    if host.file("/etc/consul.d/tls/server-key.pem").exists:
        key = host.file("/etc/consul.d/tls/server-key.pem")
        assert (key.user, key.group, key.mode) == ("root", "consul", 0o640)


def test_controller_secrets_are_private():
    assert stat.S_IMODE(SECRETS.stat().st_mode) == 0o700
    files = [p for p in SECRETS.rglob("*") if p.is_file() and ".ansible_lockfile" not in p.name]
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_server_certificates_on_hosts_are_the_issued_ones(servers):
    for server in servers:
        name = server.backend.host
        issued = (SECRETS / "tls" / f"{name}.pem").read_text()
        assert server.file("/etc/consul.d/tls/server.pem").content_string == issued


# --- No secret in any log ---------------------------------------------------------------

def _secret_values() -> list[str]:
    values = [p.read_text().strip() for p in (SECRETS / "consul_tokens").iterdir()]
    values += [(SECRETS / "consul_gossip_key").read_text().strip(),
               (SECRETS / "consul_acl_bootstrap_token").read_text().strip()]
    for key in [*(SECRETS / "tls").glob("*key.pem"), *(SECRETS / "web-ca").glob("*key.pem")]:
        values += [line for line in key.read_text().splitlines()
                   if line and not line.startswith("-----")]
    # The edge's and the lab IdP's: OAuth2 client secret, cookie secrets, the
    # IdP's system secret and the lab users' passwords.
    for path in [*(SECRETS / "oidc").glob("*"), SECRETS / "oauth2-proxy-cookie-secret",
                 *(SECRETS / "lab_idp").rglob("*")]:
        if path.is_file() and ".ansible_lockfile" not in path.name:
            values.append(path.read_text().strip())
    return values


def test_no_secret_in_the_ansible_output():
    log = ANSIBLE_LOG.read_text(encoding="utf-8", errors="replace")
    assert "Consul servers" in log  # the log is the real -v output of the runs
    leaked = [v[:6] + "..." for v in _secret_values() if v in log]
    assert leaked == []


def test_no_secret_in_var_log_or_the_journal(host):
    patterns = "\n".join(_secret_values()) + "\n"
    write_private_file(host, "/root/.secret-patterns", patterns)
    try:
        logs = host.run("grep -rlF -f /root/.secret-patterns /var/log")
        journal = host.run("journalctl --no-pager -o cat | grep -cF -f /root/.secret-patterns")
    finally:
        host.run("rm -f /root/.secret-patterns")
    assert logs.rc == 1, f"secrets in {logs.stdout}"  # 1: grep found nothing
    assert journal.stdout.strip() == "0"
    assert host.run("journalctl --no-pager -o cat | wc -l").stdout.strip() != "0"


UNITS_BY_GROUP = {
    "consul_servers": ["consul", "dnsmasq"],
    "consul_clients": ["consul", "dnsmasq"],
    "app": ["consul-template", "python-web-service"],
    "edge": ["consul-template", "oauth2-proxy", "consul-edge-exchange", "nginx"],
    "lab_idp": ["hydra", "lab-idp-login"],
}


# Debian's nginx unit with our sandbox drop-in: its master must stay root to
# bind 443 and read the TLS key, which systemd scores higher.
EXPOSURE_LIMITS = {"nginx": 3.0}


@pytest.mark.parametrize(("group_name", "unit"), [
    (group_name, unit) for group_name, units in UNITS_BY_GROUP.items() for unit in units])
def test_units_we_ship_are_hardened(group_name, unit):
    """systemd's own exposure score (0 best, 10 worst) stays at 2.0 or lower
    for every unit we ship (nginx: 3.0); the popular public Consul role's unit
    scores 9.3."""
    for name in group(group_name):
        result = get_host(name).run(f"systemd-analyze security {unit}.service")
        assert result.rc == 0, result.stderr
        last = result.stdout.strip().splitlines()[-1]
        score = float(last.split(":")[1].split()[0])
        assert score <= EXPOSURE_LIMITS.get(unit, 2.0), f"{name} {unit}: {last}"
