"""The edge's upstream writer (roles/edge_nginx/files/consul_edge_upstreams.py):
catalog data registered by anyone who may write the service must never
become nginx syntax, and only addresses in the declared networks (an
allowlist) become servers. Table-driven hostile addresses, notations of
loopback, link-local, private and IPv4-embedding ranges, ports and command
lines, then the real chain: a Consul dev agent on loopback holds hostile registrations, the real
consul-template renders the role's template, the writer turns it into an
upstream block."""

from __future__ import annotations

import importlib.util
import ipaddress
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

# The declared networks of most tests: two IPv4 and one IPv6.
DECLARED = ["10.0.0.0/24", "192.168.1.0/24", "2001:db8::/64"]
ALLOWED = [ipaddress.ip_network(network) for network in DECLARED]
ALLOW_OPTIONS = [option for network in DECLARED for option in ("--allow-network", network)]
# Everything: what the address itself is must still refuse it.
EVERYTHING = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]

GOOD = [
    # Inside the first declared network, written back canonical.
    ("10.0.0.7", 8080, "10.0.0.7:8080"),
    ("10.0.0.254", 1, "10.0.0.254:1"),
    # Inside the second declared network.
    ("192.168.1.1", 65535, "192.168.1.1:65535"),
    # Inside the declared IPv6 network, in canonical and other notations.
    ("2001:db8::1", 8080, "[2001:db8::1]:8080"),
    ("2001:DB8:0:0:0:0:0:1", 80, "[2001:db8::1]:80"),
    ("2001:0db8:0000:0000:0000:0000:0000:00ff", 80, "[2001:db8::ff]:80"),
]

# Refused for what the address is, whichever networks are declared:
# (address, the reason logged).
REFUSED_ANYWHERE = [
    # IPv4 loopback in every notation: only dotted decimal parses at all.
    ("127.0.0.1", "is loopback"),
    ("127.1.2.3", "is loopback"),
    ("127.1", "not an IP literal"),
    ("0177.0.0.1", "not an IP literal"),
    ("0x7f.0.0.1", "characters no IP literal has"),
    ("0x7f000001", "characters no IP literal has"),
    ("2130706433", "not an IP literal"),
    ("127.000.000.001", "not an IP literal"),
    # Link-local (the cloud metadata address), unspecified, "this network".
    ("169.254.169.254", "is link-local"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    # Multicast, reserved, broadcast.
    ("224.0.0.1", "is multicast"),
    ("240.0.0.1", "is reserved"),
    ("255.255.255.255", "is reserved"),
    # IPv6 loopback and unspecified, canonical, expanded and zero-padded.
    ("::1", "is loopback"),
    ("0:0:0:0:0:0:0:1", "is loopback"),
    ("0000:0000::0001", "is loopback"),
    ("::", "unspecified"),
    # IPv4-mapped: the edge's own loopback through a dual-stack socket.
    ("::ffff:127.0.0.1", "IPv4-mapped"),
    ("::ffff:7f00:1", "IPv4-mapped"),
    ("::FFFF:127.0.0.1", "IPv4-mapped"),
    ("0:0:0:0:0:ffff:7f00:1", "IPv4-mapped"),
    ("::ffff:169.254.169.254", "IPv4-mapped"),
    # The mapped form of addresses inside the declared IPv4 networks.
    ("::ffff:10.0.0.7", "IPv4-mapped"),
    ("::ffff:a00:7", "IPv4-mapped"),
    ("::ffff:192.168.1.1", "IPv4-mapped"),
    # IPv4-compatible, 6to4, NAT64 (well-known and local-use), Teredo.
    ("::127.0.0.1", "IPv4-compatible"),
    ("::10.0.0.7", "IPv4-compatible"),
    ("2002:7f00:1::1", "6to4"),
    ("2002:a00:7::1", "6to4"),
    ("64:ff9b::7f00:1", "NAT64"),
    ("64:ff9b::127.0.0.1", "NAT64"),
    ("64:ff9b:1::7f00:1", "NAT64"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo"),
    # IPv6 link-local (with and without a zone), multicast, reserved.
    ("fe80::1", "is link-local"),
    ("FE80::1", "is link-local"),
    ("fe80::1%eth0", "IPv6 zone"),
    ("fe80::1%25eth0", "IPv6 zone"),
    ("2001:db8::1%eth0", "IPv6 zone"),
    ("ff02::1", "is multicast"),
    ("4000::1", "is reserved"),
]

# Good addresses that are not in the declared networks (private ranges too).
OUTSIDE_DECLARED = [
    "10.0.1.7",
    "10.255.255.254",
    "172.16.0.1",
    "192.168.2.1",
    "100.64.0.1",
    "8.8.8.8",
    "2001:db8:0:1::1",
    "fd00::1",
    "2a00:1450::1",
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
    "::ffff:10.0.0.1",
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


def servers_of(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.startswith("    server")]


@pytest.mark.parametrize(("address", "port", "server"), GOOD)
def test_well_formed_instances_in_declared_networks_become_servers(address, port, server):
    logged: list[str] = []
    block = upstreams.upstream_block("app", [{"id": "a", "node": "n", "address": address, "port": port}],
                                     ALLOWED, logged.append)
    assert servers_of(block) == [f"    server {server} max_fails=1 fail_timeout=5s;"]
    assert logged == []


def refusal(address: str, allowed) -> tuple[list[str], list[str]]:
    """The servers and log lines of a block holding one instance at `address`
    beside a good one in the first declared network."""
    logged: list[str] = []
    instances = [{"id": "evil\nid", "node": "evil-node", "address": address, "port": 8080},
                 {"id": "good", "node": "app-1", "address": "10.0.0.8", "port": 8080}]
    block = upstreams.upstream_block("app", instances, allowed, logged.append)
    return servers_of(block), logged


@pytest.mark.parametrize(("address", "reason"), REFUSED_ANYWHERE, ids=lambda a: repr(a)[:40])
@pytest.mark.parametrize("allowed", [ALLOWED, EVERYTHING], ids=["declared", "everything"])
def test_refused_whatever_the_declared_networks(address, reason, allowed):
    servers, logged = refusal(address, allowed)
    assert servers == ["    server 10.0.0.8:8080 max_fails=1 fail_timeout=5s;"]
    assert len(logged) == 1 and reason in logged[0], logged
    assert '"evil\\nid"' in logged[0] and "\n" not in logged[0]


def ip_literal(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("address", [a for a, _ in REFUSED_ANYWHERE if ip_literal(a)],
                         ids=lambda a: repr(a)[:40])
def test_embedded_and_special_ranges_are_refused_even_when_declared(address):
    """A declared network that holds the address itself (the mapped range,
    NAT64's prefix, the loopback net: here the address's own /32 or /128)
    does not let it through."""
    ip = ipaddress.ip_address(address)
    own = ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")
    assert refusal(address, [own, ALLOWED[0]])[0] == [
        "    server 10.0.0.8:8080 max_fails=1 fail_timeout=5s;"]


@pytest.mark.parametrize("address", OUTSIDE_DECLARED)
def test_addresses_outside_the_declared_networks_are_refused(address):
    servers, logged = refusal(address, ALLOWED)
    assert servers == ["    server 10.0.0.8:8080 max_fails=1 fail_timeout=5s;"]
    assert len(logged) == 1 and "in no allowed network" in logged[0], logged
    # With their network declared, the same addresses are accepted.
    assert len(refusal(address, EVERYTHING)[0]) == 2


@pytest.mark.parametrize(("address", "network"), [
    ("10.0.0.0", "10.0.0.0/24"), ("10.0.0.255", "10.0.0.0/24"), ("192.168.1.255", "192.168.1.0/24")])
def test_a_network_or_broadcast_address_names_no_host(address, network):
    servers, logged = refusal(address, ALLOWED)
    assert servers == ["    server 10.0.0.8:8080 max_fails=1 fail_timeout=5s;"]
    assert len(logged) == 1 and f"network or broadcast address of {network}" in logged[0], logged
    # Control: the addresses next to them are hosts.
    neighbour = str(ipaddress.ip_address(address) + (1 if address.endswith(".0") else -1))
    assert len(refusal(neighbour, ALLOWED)[0]) == 2


def test_an_instance_in_each_declared_network_is_kept():
    instances = [{"id": str(i), "node": "n", "address": a, "port": 80}
                 for i, a in enumerate(["10.0.0.7", "192.168.1.9", "2001:db8::7", "10.0.1.7"])]
    assert servers_of(upstreams.upstream_block("app", instances, ALLOWED)) == [
        "    server 10.0.0.7:80 max_fails=1 fail_timeout=5s;",
        "    server 192.168.1.9:80 max_fails=1 fail_timeout=5s;",
        "    server [2001:db8::7]:80 max_fails=1 fail_timeout=5s;",
    ]


@pytest.mark.parametrize("address", HOSTILE_ADDRESSES, ids=lambda a: repr(a)[:40])
def test_hostile_addresses_are_left_out_and_logged(address):
    logged: list[str] = []
    instances = [{"id": "evil\nid", "node": "evil-node", "address": address, "port": 8080},
                 {"id": "good", "node": "app-1", "address": "10.0.0.8", "port": 8080}]
    block = upstreams.upstream_block("app", instances, ALLOWED, logged.append)
    servers = [line for line in block.splitlines() if line.startswith("    server")]
    assert servers == ["    server 10.0.0.8:8080 max_fails=1 fail_timeout=5s;"]
    assert len(logged) == 1 and '"evil\\nid"' in logged[0] and "evil-node" in logged[0]
    assert "\n" not in logged[0] and len(logged[0]) < 400


@pytest.mark.parametrize("port", HOSTILE_PORTS, ids=repr)
def test_hostile_ports_are_left_out(port):
    logged: list[str] = []
    block = upstreams.upstream_block("app", [{"id": "x", "node": "n", "address": "10.0.0.7", "port": port}],
                                     ALLOWED, logged.append)
    assert "10.0.0.7" not in block and "server 127.0.0.1:9 down;" in block
    assert "port" in logged[0]


@pytest.mark.parametrize("instance", [None, "10.0.0.7:80", 7, [], {}, {"address": "10.0.0.7"},
                                      {"port": 80}], ids=repr)
def test_malformed_entries_are_left_out(instance):
    logged: list[str] = []
    block = upstreams.upstream_block("app", [instance], ALLOWED, logged.append)
    assert "server 127.0.0.1:9 down;" in block and len(logged) == 1


def test_duplicates_collapse_and_order_is_stable():
    instances = [{"id": str(i), "node": "n", "address": a, "port": 80}
                 for i, a in enumerate(["10.0.0.9", "10.0.0.7", "10.0.0.9"])]
    assert upstreams.upstream_block("app", instances, ALLOWED) == \
        upstreams.upstream_block("app", instances[::-1], ALLOWED)
    assert upstreams.upstream_block("app", instances, ALLOWED).count("server 10.0.0.9:80") == 1


def test_main_writes_only_on_change_and_reloads_only_then(tmp_path):
    data, conf, marker = tmp_path / "svc.json", tmp_path / "svc.conf", tmp_path / "reloads"
    reload_cmd = ["sh", "-c", f"echo x >> {marker}"]
    data.write_text(json.dumps([{"id": "a", "node": "n", "address": "10.0.0.7", "port": 80}]))
    assert upstreams.main([*ALLOW_OPTIONS, str(data), str(conf), "app", *reload_cmd]) == 0
    assert upstreams.main([*ALLOW_OPTIONS, str(data), str(conf), "app", *reload_cmd]) == 0
    assert marker.read_text().count("x") == 1
    assert oct(conf.stat().st_mode & 0o777) == "0o644"
    # Unreadable data keeps the block nginx has, and reloads nothing.
    before = conf.read_text()
    for bad in ("{", '{"not": "a list"}', "\xff"):
        data.write_text(bad, encoding="latin-1")
        assert upstreams.main([*ALLOW_OPTIONS, str(data), str(conf), "app", *reload_cmd]) == 0
        assert conf.read_text() == before
    assert marker.read_text().count("x") == 1


def test_main_takes_both_option_forms_and_leaves_the_reload_command_alone(tmp_path):
    data, conf, marker = tmp_path / "svc.json", tmp_path / "svc.conf", tmp_path / "reloads"
    data.write_text(json.dumps([{"id": str(i), "node": "n", "address": a, "port": 80} for i, a in
                                enumerate(["10.0.0.7", "2001:db8::7", "::ffff:10.0.0.7", "192.168.1.7"])]))
    # Options after UPSTREAM belong to the reload command: not read as ours.
    reload_cmd = ["sh", "-c", f"echo x >> {marker}", "--allow-network=192.168.1.0/24"]
    assert upstreams.main(["--allow-network=10.0.0.0/24", "--allow-network", "2001:db8::/64", "--",
                           str(data), str(conf), "app", *reload_cmd]) == 0
    assert servers_of(conf.read_text()) == ["    server 10.0.0.7:80 max_fails=1 fail_timeout=5s;",
                                            "    server [2001:db8::7]:80 max_fails=1 fail_timeout=5s;"]
    assert marker.read_text() == "x\n"


@pytest.mark.parametrize(("options", "named"), [
    ([], "at least one --allow-network"),
    (["--allow-network"], "needs a network"),
    (["--allow-network", "10.0.0.1/24"], "'10.0.0.1/24'"),  # host bits set: strict
    (["--allow-network=10.0.0.0/33"], "'10.0.0.0/33'"),
    (["--allow-network", "2001:db8::1/64"], "'2001:db8::1/64'"),
    (["--allow-network", "010.0.0.0/24"], "'010.0.0.0/24'"),
    (["--allow-network", "lab-net"], "'lab-net'"),
    (["--allow-network="], "''"),
    (["--allow-network", "10.0.0.0/24", "--allow-network", "10.0.0.0/24; 0.0.0.0/0"],
     "'10.0.0.0/24; 0.0.0.0/0'"),
    (["--allow-networks", "10.0.0.0/24"], "unknown option '--allow-networks'"),
    (["-a", "10.0.0.0/24"], "unknown option '-a'"),
], ids=repr)
def test_bad_command_lines_are_usage_errors_naming_the_culprit(tmp_path, capsys, options, named):
    data, conf = tmp_path / "svc.json", tmp_path / "svc.conf"
    data.write_text(json.dumps([{"id": "a", "node": "n", "address": "10.0.0.7", "port": 80}]))
    positionals = [] if options == ["--allow-network"] else [str(data), str(conf), "app"]
    assert upstreams.main([*options, *positionals]) == 2
    err = capsys.readouterr().err
    assert named in err and "Usage: consul-edge-upstreams --allow-network=CIDR" in err
    assert not conf.exists()


def test_missing_positionals_are_a_usage_error(tmp_path, capsys):
    assert upstreams.main([*ALLOW_OPTIONS, str(tmp_path / "svc.json"), str(tmp_path / "svc.conf")]) == 2
    assert "DATA, CONF and UPSTREAM are required" in capsys.readouterr().err


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
    for number, address in enumerate([*HOSTILE_ADDRESSES[:24], *(a for a, _ in REFUSED_ANYWHERE),
                                      *OUTSIDE_DECLARED, "10.0.0.7", "10.0.0.8"]):
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
    block = upstreams.upstream_block("python_web_service", rendered, ALLOWED, lambda _message: None)
    servers = [line for line in block.splitlines() if line.startswith("    server")]
    assert servers and all(SERVER_LINE.match(line) for line in servers), servers
    assert sorted(servers) == ["    server 10.0.0.7:8080 max_fails=1 fail_timeout=5s;",
                               "    server 10.0.0.8:8080 max_fails=1 fail_timeout=5s;"]
    # Nothing but the block's own lines: no injected directive survived.
    assert [line for line in block.splitlines() if line.strip()] == [
        block.splitlines()[0], "upstream python_web_service {", *servers, "    keepalive 16;", "}"]
