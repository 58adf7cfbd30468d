"""Shared fixtures for the molecule testinfra suite.

Molecule runs pytest with one `host` per inventory host; cluster-wide tests
also need the other hosts, so `hosts` builds testinfra hosts for a group from
molecule's own inventory.
"""

from __future__ import annotations

import configparser
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import testinfra
import yaml
from testinfra.utils.ansible_runner import AnsibleRunner

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
RUNNER = AnsibleRunner(INVENTORY)
CACHE = Path(os.environ["CONSUL_PLATFORM_CACHE"])
SECRETS = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "secrets"
ANSIBLE_LOG = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ansible.log"
REPO = Path(__file__).resolve().parents[3]
# The lab CA that signs the edge's web certificate.
CA = SECRETS / "web-ca" / "web-ca.pem"
# Debian 13 as tools/lab/build_base_image.py builds it (systemd-resolved, sshd).
TRIXIE_IMAGE = "consul-platform/debian-systemd:trixie"

sys.path.insert(0, str(REPO / "tools" / "bench" / "probes"))
sys.path.insert(0, str(REPO / "tools" / "lab"))
import localhost_names  # noqa: E402
from keepalive import SteadyGets  # noqa: E402

# The edge's two origins are *.localhost names on this machine's loopback.
localhost_names.install()

# The scenario's datacenters (molecule.yml: groups dc1 and dc2). Most tests
# look at the primary, dc1; test_datacenters.py at both.
PRIMARY_DC = "dc1"
DATACENTERS = ("dc1", "dc2")


def group(name: str, datacenter: str | None = PRIMARY_DC) -> list[str]:
    """The hosts of an inventory group in one datacenter (None: in all). A
    host in no datacenter's group is in the primary, as the roles see it
    (the IdP; the drills' extra servers)."""
    hosts = set(RUNNER.get_hosts(name))
    if datacenter is not None:
        for other in DATACENTERS:
            if other != datacenter:
                hosts -= set(RUNNER.get_hosts(other))
        if datacenter != PRIMARY_DC:
            hosts &= set(RUNNER.get_hosts(datacenter))
    return sorted(hosts)


def get_host(name: str):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=INVENTORY)


@pytest.fixture(scope="session")
def servers():
    return [get_host(name) for name in group("consul_servers")]


@pytest.fixture(scope="session")
def clients():
    return [get_host(name) for name in group("consul_clients")]


@pytest.fixture(scope="session")
def base_url() -> str:
    """The edge's public URL, as the lab publishes it on this machine's loopback."""
    return get_host(group("edge")[0]).ansible.get_variables()["edge_public_url"].rstrip("/")


@pytest.fixture(scope="session")
def ui_url() -> str:
    """The Consul UI's own origin at the edge (another host name, same published port)."""
    return get_host(group("edge")[0]).ansible.get_variables()["edge_ui_url"].rstrip("/")


@pytest.fixture(scope="session")
def consul_version() -> str:
    # The pinned release; a unit test keeps the role default equal to it.
    # The consul role pins it (files/releases.yml names the role's variable).
    defaults = (REPO / "roles" / "consul" / "defaults" / "main.yml").read_text(encoding="utf-8")
    return next(line.split(":", 1)[1].strip().strip('"') for line in defaults.splitlines()
                if line.startswith("consul_version:"))


@pytest.fixture(scope="session")
def mirror() -> Path:
    return CACHE / "releases"


def secret(name: str) -> str:
    """A secret the run generated on the controller, by its path in the secrets folder."""
    return (SECRETS / name).read_text(encoding="utf-8").strip()


def token_secret(token: str) -> str:
    if token == "management":
        return secret("consul_acl_bootstrap_token")
    return secret(f"consul_tokens/{token}")


def write_private_file(host, path: str, content: str) -> None:
    """Write a root-only file on the host (a docker container, like every
    host of this scenario). The content goes in on stdin: no command line,
    here or in the container, ever carries it."""
    name = host.backend.host
    container = RUNNER.get_variables(name).get("ansible_host", name)
    subprocess.run(["docker", "exec", "-i", container, "sh", "-c", 'umask 077 && cat > "$1"', "sh", path],
                   input=content, text=True, check=True, capture_output=True)


_HEADER_FILES: dict[tuple[str, str], str] = {}


def _header_file(host, token: str) -> str:
    """Put the token in a header file on the host, through the copy module
    (whose content Ansible never logs), so no command line carries it."""
    key = (host.backend.host, token)
    if key not in _HEADER_FILES:
        path = f"/root/.consul-test-{token}.header"
        write_private_file(host, path, f"X-Consul-Token: {token_secret(token)}\n")
        _HEADER_FILES[key] = path
    return _HEADER_FILES[key]


def api_call(host, path: str, method: str = "GET", data: str | None = None,
             token: str | None = "management", port: int = 8500) -> tuple[int, str]:
    """Call the agent's loopback HTTP API on `host` with a named token (None:
    anonymous); return (HTTP status, body)."""
    # Quoted: a query string's "&" would end the command in the shell.
    cmd = f"curl -sS -w '\\n%{{http_code}}' -X {method} {_quote(f'http://127.0.0.1:{port}/v1/{path}')}"
    if token is not None:
        cmd += f" -H @{_header_file(host, token)}"
    if data is not None:
        cmd = f"printf %s {_quote(data)} | {cmd} --data-binary @-"
    result = host.run(cmd)
    assert result.rc == 0, f"{method} /v1/{path} on {host.backend.host}: {result.stderr}"
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def consul_api(host, path: str, method: str = "GET", data: str | None = None,
               token: str | None = "management"):
    """Like api_call, but the call must succeed; returns parsed JSON or text."""
    status, body = api_call(host, path, method, data, token)
    assert status == 200, f"{method} /v1/{path} on {host.backend.host}: {status} {body}"
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return body


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# A minimal DNS A query against the agent's DNS interface, in the host's own
# python3, so the image needs no dig.
_DNS_QUERY = """
import socket, struct, sys
name = sys.argv[1]
query = b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00"
query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\x00\\x00\\x01\\x00\\x01"
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(3)
sock.sendto(query, ("127.0.0.1", 8600))
reply = sock.recv(4096)
count = struct.unpack(">H", reply[6:8])[0]
pos = len(query)
for _ in range(count):
    rtype, _, _, length = struct.unpack(">HHIH", reply[pos + 2:pos + 12])
    if rtype == 1:
        print(socket.inet_ntoa(reply[pos + 12:pos + 16]))
    pos += 12 + length
"""


def dns_a_records(host, name: str) -> list[str]:
    """A records that the agent on `host` answers for `name` on 127.0.0.1:8600."""
    result = host.run(f"python3 -c {_quote(_DNS_QUERY)} {name}")
    assert result.rc == 0, result.stderr
    return sorted(result.stdout.split())


def _lab_strategy() -> dict[str, str]:
    """The drills' runs go the way `make lab` runs playbooks: the strategy,
    forks, pipelining and template-plugin preloading of the repository's
    ansible.cfg (read from it, not copied). Molecule's converge and
    idempotence keep Ansible's stock strategy (molecule writes its own
    ansible.cfg), so the roles are tested both ways."""
    config = configparser.ConfigParser()
    config.read(REPO / "ansible.cfg", encoding="utf-8")
    defaults = config["defaults"]
    return {"ANSIBLE_STRATEGY_PLUGINS": str(REPO / defaults["strategy_plugins"]),
            "ANSIBLE_STRATEGY": defaults["strategy"],
            "ANSIBLE_CALLBACK_PLUGINS": str(REPO / defaults["callback_plugins"]),
            # Not profile_tasks: its timing lines are not what the tests read.
            "ANSIBLE_CALLBACKS_ENABLED": "preload_template_plugins",
            "ANSIBLE_PIPELINING": config["connection"]["pipelining"],
            "ANSIBLE_FORKS": defaults["forks"]}


def run_playbook(name: str, *args: str, inventory: str = INVENTORY) -> subprocess.CompletedProcess:
    """Run a playbook of the repository (`site.yml` or `playbooks/<name>`)
    against molecule's own inventory (or another), logging like the converge did."""
    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    env = {**os.environ, "ANSIBLE_CONFIG": str(ephemeral / "ansible.cfg"),
           "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOG_PATH": str(ephemeral / "ansible.log"), "ANSIBLE_VERBOSITY": "1",
           **_lab_strategy()}
    playbook = REPO / name if name == "site.yml" else REPO / "playbooks" / name
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", inventory, str(playbook), *args],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def run_in_awx_layout(playbook: str, inventory: str, data: Path, ident: str) -> subprocess.CompletedProcess:
    """Run a playbook of the repository as AWX / Ansible Automation Platform
    does: ansible-runner on a private data folder with the repository as
    `project`, settings in `env/envvars` and none of molecule's settings in
    the environment, so the project's own ansible.cfg applies (a job template
    switches its Mitogen strategy off with ANSIBLE_STRATEGY=linear). Returns
    the runner's process with stdout set to the job's output; `status` is
    the runner's verdict (successful, failed, ...)."""
    (data / "env").mkdir(parents=True, exist_ok=True)
    if not (data / "project").exists():
        (data / "project").symlink_to(REPO, target_is_directory=True)
    (data / "env" / "envvars").write_text(json.dumps({"ANSIBLE_NOCOLOR": "1"}), encoding="utf-8")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("ANSIBLE_", "MOLECULE_", "PYTEST_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-runner"), "run", str(data), "--playbook", playbook,
         "--inventory", inventory, "--ident", ident],
        capture_output=True, text=True, check=False, env=env, timeout=1800)
    artifacts = data / "artifacts" / ident

    def artifact(name: str) -> str:
        return (artifacts / name).read_text(encoding="utf-8") if (artifacts / name).is_file() else ""

    result.stdout, result.status = artifact("stdout"), artifact("status")
    return result


def record_figures(what: str, **figures: object) -> None:
    """Figures a test measured (retries, refusals, ...) for `make test`'s
    closing summary (tools/checks/test_summary.py reads figures.jsonl)."""
    folder = Path(os.environ.get("TEST_RESULTS_DIR", "/tmp"))
    with (folder / "figures.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"what": what, **figures}) + "\n")


def wait_for(predicate, timeout: float, what: str):
    """The first true value of predicate(), polled every 0.5 s; fails after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def autopilot_healthy(host) -> bool:
    """All three servers of dc1 healthy in autopilot's view from `host` (200; 429
    while a server is missing or catching up). A moment's view only: on 2
    busy cores a follower's last contact can pass autopilot's 200 ms
    threshold for a moment, so tests wait for it and never assert it once."""
    status, body = api_call(host, "operator/autopilot/health")
    return status == 200 and len(json.loads(body)["Servers"]) == 3


def _docker_run_args(name: str, image: str | None = None, hosts: dict[str, str] | None = None) -> list[str]:
    """`docker run` for a container like the scenario's own, from the
    platform settings in molecule.yml (another image, /etc/hosts entries if given)."""
    text = (REPO / "molecule" / "default" / "molecule.yml").read_text(encoding="utf-8")
    text = text.replace("${LAB_CGROUP_MOUNT:-ro}", os.environ.get("LAB_CGROUP_MOUNT", "ro"))
    host = yaml.safe_load(text)["driver"]["systemd_host"]
    args = ["docker", "run", "-d", "--name", name, "--hostname", name,
            "--cgroupns", host["cgroupns_mode"], "--stop-signal", host["stop_signal"]]
    args += [f"--label={k}={v}" for k, v in host["labels"].items()]
    args += [f"--cap-add={c}" for c in host["capabilities"]]
    args += [f"--security-opt={o}" for o in host["security_opts"]]
    args += [f"--volume={v}" for v in host["volumes"]]
    args += [f"--tmpfs={t}" for t in host["tmpfs"]]
    args += [f"--env={k}={v}" for k, v in host["env"].items()]
    # dc1's network, the first: spares and rebuilt hosts are dc1's.
    args.append(f"--network={host['docker_networks'][0]['name']}")
    args += [f"--add-host={hostname}:{address}" for hostname, address in (hosts or {}).items()]
    return [*args, image or host["image"], host["command"]]


def start_scenario_containers(names: list[str], image: str | None = None,
                              hosts: dict[str, str] | None = None) -> None:
    """Fresh containers like the scenario's (spares, or lost hosts rebuilt),
    booted: whatever had these names is removed first."""
    subprocess.run(["docker", "rm", "-f", *names], capture_output=True, check=False)
    for key in [k for k in _HEADER_FILES if k[0] in names]:
        del _HEADER_FILES[key]  # a new container has none of the old one's files
    for name in names:
        subprocess.run(_docker_run_args(name, image, hosts), check=True, capture_output=True, text=True)
    for name in names:
        subprocess.run(["docker", "exec", name, "systemctl", "is-system-running", "--wait"],
                       capture_output=True, check=False, timeout=120)


def container_address(container: str) -> str:
    template = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    return subprocess.run(["docker", "inspect", "-f", template, container],
                          capture_output=True, text=True, check=True).stdout.strip()


_FIRST_BOOT = """set -eu
useradd --create-home --shell /bin/bash "$1"
install -d -m 0700 -o "$1" -g "$1" "/home/$1/.ssh"
cat > "/home/$1/.ssh/authorized_keys"
chown "$1:$1" "/home/$1/.ssh/authorized_keys"
chmod 0600 "/home/$1/.ssh/authorized_keys"
echo "$1 ALL=(ALL) NOPASSWD:ALL" > "/etc/sudoers.d/$1"
chmod 0440 "/etc/sudoers.d/$1"
visudo -cq
"""


def provision_ssh_access(names: list[str], folder: Path, user: str = "deploy") -> dict[str, dict]:
    """What a cloud image's first boot does for an operator, on containers
    started with sshd: an account `user` with password-less sudo that
    accepts a key pair made for this run only (under `folder`, never kept).
    The controller learns each host's own host key out of band (through
    docker) into a known_hosts file, so SSH checks host keys strictly.
    Returns the inventory's connection variables per host."""
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{user}@drill", "-f", str(key)],
                   check=True, capture_output=True)
    known_hosts, hostvars = [], {}
    for name in names:
        subprocess.run(["docker", "exec", "-i", name, "sh", "-c", _FIRST_BOOT, "first-boot", user],
                       input=(folder / "id_ed25519.pub").read_text(), text=True, check=True,
                       capture_output=True)
        address = container_address(name)
        host_key = wait_for(lambda n=name: subprocess.run(
            ["docker", "exec", n, "cat", "/etc/ssh/ssh_host_ed25519_key.pub"],
            capture_output=True, text=True, check=False).stdout.strip(), 60, f"{name}'s SSH host key")
        known_hosts.append(f"{address} {' '.join(host_key.split()[:2])}")
        hostvars[name] = {"ansible_host": address}
    (folder / "known_hosts").write_text("\n".join(known_hosts) + "\n", encoding="utf-8")
    common = {"ansible_connection": "ssh", "ansible_user": user, "ansible_ssh_private_key_file": str(key),
              "ansible_ssh_common_args": f"-o UserKnownHostsFile={folder / 'known_hosts'} "
                                         "-o StrictHostKeyChecking=yes"}
    return {name: {**common, **hostvars[name]} for name in names}


def restarts_in(output: str) -> list[tuple[str, str]]:
    """(step, host) of every hand-over and restart that changed something,
    in order (tasks that a handler includes show as RUNNING HANDLER)."""
    steps = []
    for block in re.split(r"^(?:TASK|RUNNING HANDLER) \[", output, flags=re.MULTILINE)[1:]:
        title, _, body = block.partition("]")
        step = re.fullmatch(r"consul : (Hand raft leadership over before restarting|"
                            r"Restart Consul on) (\S+)", title)
        if step and re.search(r"^changed: \[", body, flags=re.MULTILINE):
            steps.append((step[1], step[2]))
    return steps


def changed_in(output: str) -> set[tuple[str, str]]:
    """(task, host) of every task and handler that reported a change."""
    steps = set()
    for block in re.split(r"^(?:TASK|RUNNING HANDLER) \[", output, flags=re.MULTILINE)[1:]:
        title, _, body = block.partition("]")
        for host in re.findall(r"^changed: \[([^\]\s]+)", body, flags=re.MULTILINE):
            steps.add((title, host))
    return steps


class KVLedger:
    """A ledger of acknowledged KV writes: every 50 ms a new key
    <prefix>/<n> through the agent in `container` (the token goes in on
    stdin, never on a command line). Keeps the numbers Consul acknowledged
    and every failure's words; lost() reads the keys back and names the
    acknowledged ones that are missing."""

    def __init__(self, container: str, token: str, prefix: str):
        self.container, self.token, self.prefix = container, token, prefix
        self.acknowledged: list[int] = []
        self.failed: list[str] = []
        # When each failure was answered (epoch seconds), in step with `failed`.
        self.failed_at: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def ok(self) -> int:
        return len(self.acknowledged)

    def _shell(self, script: str, **popen):
        return subprocess.Popen(["docker", "exec", "-i", self.container, "sh", "-c", script],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, **popen)

    def _run(self):
        proc = self._shell(
            'read -r t; while read -r i; do '
            'code=$(curl -sS -o /tmp/ledger.body -w "%{http_code}" -X PUT -H "X-Consul-Token: $t" '
            f'--data "$i" "localhost:8500/v1/kv/{self.prefix}/$i" 2>/tmp/ledger.err); '
            'echo "$code $(cat /tmp/ledger.body /tmp/ledger.err 2>/dev/null | tr "\\n" " ")"; done')
        proc.stdin.write(self.token + "\n")
        n = 0
        while not self._stop.is_set():
            n += 1
            proc.stdin.write(f"{n}\n")
            proc.stdin.flush()
            line = proc.stdout.readline().strip()
            if line.startswith("200 ") and "true" in line:
                self.acknowledged.append(n)
            else:
                self.failed.append(line)
                self.failed_at.append(time.time())
            time.sleep(0.05)
        proc.stdin.close()
        proc.wait(timeout=10)

    def lost(self) -> list[int]:
        """Acknowledged writes that the cluster no longer holds; then the keys are removed."""
        reader = self._shell('read -r t; curl -sS -H "X-Consul-Token: $t" '
                             f'"localhost:8500/v1/kv/{self.prefix}/?keys"; '
                             f'curl -sS -o /dev/null -X DELETE -H "X-Consul-Token: $t" '
                             f'"localhost:8500/v1/kv/{self.prefix}/?recurse"')
        out, _ = reader.communicate(self.token + "\n", timeout=60)
        held = {int(key.rsplit("/", 1)[1]) for key in json.loads(out or "[]")}
        return [n for n in self.acknowledged if n not in held]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the host name of the URL (certificate check, SNI, Host
    header) on a given address, like curl's --resolve."""

    def __init__(self, host: str, port: int, address: str, **kwargs) -> None:
        super().__init__(host, port, **kwargs)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def edge_connection(base_url: str, timeout: float = 15, ca: Path = CA,
                    address: str | None = None) -> http.client.HTTPSConnection:
    """A new connection to the edge's published port (or to `address`),
    trusting the lab CA."""
    parts = urlsplit(base_url)
    context = ssl.create_default_context(cafile=str(ca))
    if address:
        return _PinnedHTTPSConnection(parts.hostname, parts.port or 443, address, context=context,
                                      timeout=timeout)
    return http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=context, timeout=timeout)


def edge_request(base_url: str, method: str, target: str, headers: list[tuple[str, str]],
                 body: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
    """One request with the target and headers exactly as given (requests
    would normalise the one and merge the other); a new connection each.
    Returns the status, the body and the headers (names in lower case, a
    repeated one's values joined by newlines)."""
    conn = edge_connection(base_url)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in [*headers, ("Connection", "close")]:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        answer: dict[str, str] = {}
        for name, value in response.getheaders():
            answer[name.lower()] = f"{answer[name.lower()]}\n{value}" if name.lower() in answer else value
        return response.status, response.read(), answer
    finally:
        conn.close()


@pytest.fixture(scope="module")
def edge():
    return get_host(group("edge")[0])


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium (Playwright), trusting the lab's web CA."""
    from lab_browser import trusted_browser

    with trusted_browser(CA) as chromium:
        yield chromium


class EdgeLoad(SteadyGets):
    """Steady GETs of the URL's path through the edge over one keep-alive
    connection, as a browser sends them (tools/bench/probes/keepalive.py): a
    reused connection that nginx closed at a reload before any response byte
    is retried once (RFC 9112 section 9.3.1) and counted apart; every other
    failure, and every non-200, is a failure."""

    def __init__(self, url: str, ca: Path = CA, address: str | None = None) -> None:
        super().__init__(lambda: edge_connection(url, timeout=5, ca=ca, address=address),
                         path=urlsplit(url).path or "/", pause=0.02)
