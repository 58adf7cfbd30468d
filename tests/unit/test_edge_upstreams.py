"""The edge's upstream writer (roles/edge_nginx/files/consul_edge_upstreams.py):
catalog data registered by anyone who may write the service must never
become nginx syntax. Table-driven hostile addresses and ports, then the real
chain: a Consul dev agent on loopback holds hostile registrations, the real
consul-template renders the role's template, the writer turns it into an
upstream block."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import dev_agent_running

REPO = Path(__file__).resolve().parents[2]
WRITER = REPO / "roles/edge_nginx/files/consul_edge_upstreams.py"
spec = importlib.util.spec_from_file_location("consul_edge_upstreams", WRITER)
upstreams = importlib.util.module_from_spec(spec)
spec.loader.exec_module(upstreams)

# What nginx may see in a server line: an IPv4 or bracketed IPv6 literal and a port.
SERVER_LINE = re.compile(r"^    server (\d{1,3}(\.\d{1,3}){3}|\[[0-9a-f:.]+\]):\d{1,5} "
                         r"max_fails=1 fail_timeout=5s;$")

GOOD = [
    ("10.0.0.7", 8080, "10.0.0.7:8080"),
    ("172.18.0.5", 1, "172.18.0.5:1"),
    ("192.168.1.1", 65535, "192.168.1.1:65535"),
    ("2001:db8::1", 8080, "[2001:db8::1]:8080"),
    ("2001:DB8:0:0:0:0:0:1", 80, "[2001:db8::1]:80"),
    ("::ffff:10.0.0.1", 80, "[::ffff:a00:1]:80"),
]

HOSTILE_ADDRESSES = [
    "10.0.0.7; }\nserver { listen 9999; location / { return 200 pwned; } }\nupstream x {",
    "10.0.0.7 backup",
    "10.0.0.7;",
    "10.0.0.7}",
    "{10.0.0.7",
    '"10.0.0.7"',
    "'10.0.0.7'",
    "10.0.0.7\n",
    "10.0.0.7\r\nserver 6.6.6.6:80",
    "10.0.0.7#",
    "10.0.0.7 # comment",
    "10.0.0.7\x00",
    "10.0.0.7\t",
    " 10.0.0.7",
    "10.0.0.7:80",
    "10.0.0.256",
    "10.0.0",
    "010.000.000.007",
    "0x0a.0.0.7",
    "app-1",
    "app-1.example.com",
    "unix:/run/nginx.sock",
    "127.0.0.1",
    "127.1.2.3",
    "::1",
    "0.0.0.0",
    "::",
    "169.254.169.254",
    "fe80::1",
    "fe80::1%eth0",
    "2001:db8::1%25x;",
    "[2001:db8::1]",
    "224.0.0.1",
    "ff02::1",
    "%31%30.0.0.7",
    "\uff11\uff10.0.0.7",  # full-width digits
    "1" * 5000,
    "",
]

HOSTILE_PORTS = [0, -1, 65536, 70000, 2**63, "8080", "8080;", 8080.0, True, None, [8080]]


@pytest.mark.parametrize(("address", "port", "server"), GOOD)
def test_well_formed_instances_become_servers(address, port, server):
    block = upstreams.upstream_block("app", [{"id": "a", "node": "n", "address": address, "port": port}])
    assert f"    server {server} max_fails=1 fail_timeout=5s;\n" in block


@pytest.mark.parametrize("address", HOSTILE_ADDRESSES, ids=lambda a: repr(a)[:40])
def test_hostile_addresses_are_left_out_and_logged(address):
    logged: list[str] = []
    instances = [{"id": "evil\nid", "node": "evil-node", "address": address, "port": 8080},
                 {"id": "good", "node": "app-1", "address": "10.0.0.8", "port": 8080}]
    block = upstreams.upstream_block("app", instances, logged.append)
    servers = [line for line in block.splitlines() if line.startswith("    server")]
    assert servers == ["    server 10.0.0.8:8080 max_fails=1 fail_timeout=5s;"]
    assert len(logged) == 1 and '"evil\\nid"' in logged[0] and "evil-node" in logged[0]
    assert "\n" not in logged[0] and len(logged[0]) < 400


@pytest.mark.parametrize("port", HOSTILE_PORTS, ids=repr)
def test_hostile_ports_are_left_out(port):
    logged: list[str] = []
    block = upstreams.upstream_block("app", [{"id": "x", "node": "n", "address": "10.0.0.7", "port": port}],
                                     logged.append)
    assert "10.0.0.7" not in block and "server 127.0.0.1:9 down;" in block
    assert "port" in logged[0]


@pytest.mark.parametrize("instance", [None, "10.0.0.7:80", 7, [], {}, {"address": "10.0.0.7"},
                                      {"port": 80}], ids=repr)
def test_malformed_entries_are_left_out(instance):
    logged: list[str] = []
    block = upstreams.upstream_block("app", [instance], logged.append)
    assert "server 127.0.0.1:9 down;" in block and len(logged) == 1


def test_duplicates_collapse_and_order_is_stable():
    instances = [{"id": str(i), "node": "n", "address": a, "port": 80}
                 for i, a in enumerate(["10.0.0.9", "10.0.0.7", "10.0.0.9"])]
    assert upstreams.upstream_block("app", instances) == upstreams.upstream_block("app", instances[::-1])
    assert upstreams.upstream_block("app", instances).count("server 10.0.0.9:80") == 1


def test_main_writes_only_on_change_and_reloads_only_then(tmp_path):
    data, conf, marker = tmp_path / "svc.json", tmp_path / "svc.conf", tmp_path / "reloads"
    reload_cmd = ["sh", "-c", f"echo x >> {marker}"]
    data.write_text(json.dumps([{"id": "a", "node": "n", "address": "10.0.0.7", "port": 80}]))
    assert upstreams.main([str(data), str(conf), "app", *reload_cmd]) == 0
    assert upstreams.main([str(data), str(conf), "app", *reload_cmd]) == 0
    assert marker.read_text().count("x") == 1
    assert oct(conf.stat().st_mode & 0o777) == "0o644"
    # Unreadable data keeps the block nginx has, and reloads nothing.
    before = conf.read_text()
    for bad in ("{", '{"not": "a list"}', "\xff"):
        data.write_text(bad, encoding="latin-1")
        assert upstreams.main([str(data), str(conf), "app", *reload_cmd]) == 0
        assert conf.read_text() == before
    assert marker.read_text().count("x") == 1


# --- the real chain -------------------------------------------------------

@pytest.fixture(scope="module")
def dev_agent(consul_bin, tmp_path_factory):
    """A Consul dev agent on loopback ports of its own."""
    with dev_agent_running(consul_bin, tmp_path_factory.mktemp("dev-agent")) as url:
        yield url


def register(url: str, body: dict) -> int:
    request = urllib.request.Request(f"{url}/v1/catalog/register", method="PUT",
                                     data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def role_template() -> str:
    """The edge role's template text, as Ansible would install it."""
    entry = yaml.safe_load((REPO / "roles/edge_nginx/vars/main.yml").read_text())
    text = entry["edge_nginx_consul_template"]["contents"]
    # Undo the Jinja escaping of consul-template's braces, fill the service.
    text = re.sub(r"\{\{ '(\{\{-?|\}\})' \}\}", r"\1", text)
    return text.replace("{{ edge_nginx_app_service }}", "edge-test")


def test_real_consul_template_renders_hostile_catalog_data_as_data(
        dev_agent, consul_template_bin, tmp_path):
    accepted: list[str] = []
    for number, address in enumerate([*HOSTILE_ADDRESSES[:24], "10.0.0.7", "10.0.0.8"]):
        instance_id = f"edge-test-{number}\n}} server 6.6.6.6:80; #"
        status = register(dev_agent, {
            "Node": f"node-{number}", "Address": "10.9.9.9",
            "Service": {"ID": instance_id, "Service": "edge-test", "Address": address, "Port": 8080}})
        if status == 200:
            accepted.append(address)
    # Consul itself takes nearly all of them: the edge is the only check.
    assert len(accepted) > 20, accepted
    template, data = tmp_path / "edge.ctmpl", tmp_path / "edge-test.json"
    template.write_text(role_template())
    subprocess.run([str(consul_template_bin), f"-consul-addr={dev_agent.removeprefix('http://')}",
                    "-once", f"-template={template}:{data}"], check=True, timeout=60,
                   capture_output=True)
    rendered = json.loads(data.read_text())
    assert {entry["address"] for entry in rendered} == set(accepted)
    block = upstreams.upstream_block("python_web_service", rendered, lambda _message: None)
    servers = [line for line in block.splitlines() if line.startswith("    server")]
    assert servers and all(SERVER_LINE.match(line) for line in servers), servers
    assert sorted(servers) == ["    server 10.0.0.7:8080 max_fails=1 fail_timeout=5s;",
                               "    server 10.0.0.8:8080 max_fails=1 fail_timeout=5s;"]
    # Nothing but the block's own lines: no injected directive survived.
    assert [line for line in block.splitlines() if line.strip()] == [
        block.splitlines()[0], "upstream python_web_service {", *servers, "    keepalive 16;", "}"]
