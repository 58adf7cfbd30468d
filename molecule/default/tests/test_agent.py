"""Every agent: installed from the verified release, hardened, listening where it should."""

from __future__ import annotations

import hashlib
import zipfile

import pytest
from conftest import _quote, consul_api, group, write_private_file


@pytest.fixture(autouse=True)
def _agents_only(request):
    """Molecule runs every `host` test on every host; the IdP runs no Consul."""
    if "host" in request.fixturenames and request.getfixturevalue("host").backend.host in group("lab_idp"):
        pytest.skip("no Consul agent on the IdP host")


def test_service_active_and_enabled(host):
    service = host.service("consul")
    assert service.is_running
    assert service.is_enabled


def test_runs_as_consul_user(host):
    assert host.check_output("systemctl show -p User --value consul") == "consul"
    pid = host.check_output("systemctl show -p MainPID --value consul")
    assert host.check_output(f"ps -o user= -p {pid}") == "consul"


def test_unit_is_hardened(host):
    props = host.check_output(
        "systemctl show -p Type -p NoNewPrivileges -p ProtectSystem -p PrivateTmp "
        "-p ReadWritePaths consul")
    assert "Type=notify" in props
    assert "NoNewPrivileges=yes" in props
    assert "ProtectSystem=strict" in props
    assert "PrivateTmp=yes" in props
    assert "ReadWritePaths=/opt/consul" in props


def test_consul_on_path(host):
    assert host.run("consul version").stdout.startswith("Consul v")


def test_archive_matches_mirror_sums(host, consul_version, mirror):
    archive = f"consul_{consul_version}_linux_amd64.zip"
    sums = (mirror / "consul" / consul_version / f"consul_{consul_version}_SHA256SUMS").read_text()
    expected = {line.split()[1]: line.split()[0] for line in sums.splitlines()}[archive]
    assert host.file(f"/var/cache/release-binaries/{archive}").sha256sum == expected


def test_binary_is_the_one_in_the_archive(host, consul_version, mirror):
    archive = mirror / "consul" / consul_version / f"consul_{consul_version}_linux_amd64.zip"
    with zipfile.ZipFile(archive) as release:
        expected = hashlib.sha256(release.read("consul")).hexdigest()
    binary = host.file("/usr/local/bin/consul")
    assert binary.is_symlink
    assert host.file(binary.linked_to).sha256sum == expected
    assert host.check_output("consul version").splitlines()[0] == f"Consul v{consul_version}"


def test_config_folder_modes(host):
    folder = host.file("/etc/consul.d")
    assert (folder.user, folder.group, folder.mode) == ("root", "consul", 0o750)
    for name in ("consul.hcl", "logging.hcl", "gossip.hcl", "acl.hcl"):
        config = host.file(f"/etc/consul.d/{name}")
        assert (config.user, config.group, config.mode) == ("root", "consul", 0o640)


def test_data_folder_modes(host):
    data = host.file("/opt/consul")
    assert (data.user, data.group, data.mode) == ("consul", "consul", 0o750)
    assert host.file("/opt/consul/node-id").user == "consul"


def test_config_dir_validates(host):
    assert host.run("consul validate /etc/consul.d").rc == 0


def listening(host, proto: str, port: int) -> list[str]:
    """Addresses with a socket listening on proto/port, e.g. ["tcp://10.0.0.2:8301"]."""
    return [s for s in host.socket.get_listening_sockets()
            if s.startswith(f"{proto}://") and s.rsplit(":", 1)[-1] == str(port)]


def test_cluster_ports_listen(host):
    assert listening(host, "tcp", 8301)
    assert listening(host, "udp", 8301)


def test_server_rpc_port_only_on_servers(host):
    is_server = "consul_servers" in host.ansible.get_variables()["group_names"]
    assert bool(listening(host, "tcp", 8300)) == is_server


def test_dns_listens_on_8600(host):
    assert listening(host, "udp", 8600) == ["udp://127.0.0.1:8600"]
    assert listening(host, "tcp", 8600) == ["tcp://127.0.0.1:8600"]


def test_http_api_only_on_loopback(host):
    assert listening(host, "tcp", 8500) == ["tcp://127.0.0.1:8500"]


# GET /v1/status/leader over HTTPS on loopback, verified against the CA
# file argv[1] (empty: the system's roots only).
HTTPS_GET = """
import ssl, sys, urllib.request
context = ssl.create_default_context(cafile=sys.argv[1] or None)
answer = urllib.request.urlopen("https://127.0.0.1:8501/v1/status/leader", context=context, timeout=5)
print(answer.read().decode())
"""


def test_https_api_only_on_loopback_with_a_verified_certificate(host):
    assert listening(host, "tcp", 8501) == ["tcp://127.0.0.1:8501"]
    if "consul_servers" in host.ansible.get_variables()["group_names"]:
        ca = "/etc/consul.d/tls/consul-agent-ca.pem"  # the internal CA signed it
    else:
        # auto_encrypt certificates are signed by Consul's built-in Connect CA
        roots = consul_api(host, "agent/connect/ca/roots")
        write_private_file(host, "/root/.connect-ca.pem", roots["Roots"][0]["RootCert"])
        ca = "/root/.connect-ca.pem"
    # Python's ssl (OpenSSL), as a local client would: curl refuses a dc2
    # agent's certificate whatever the CA, since the intermediate of dc2's
    # Connect CA, its issuer, has an empty subject ("couldn't get
    # X509-issuer name"), which OpenSSL itself accepts.
    leader = host.run(f"python3 -c {_quote(HTTPS_GET)} {ca}")
    assert leader.rc == 0 and leader.stdout.strip('"\n'), leader.stderr
    # the certificate really is checked: without the CA, it is refused
    refused = host.run(f"python3 -c {_quote(HTTPS_GET)} ''")
    assert refused.rc != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr
