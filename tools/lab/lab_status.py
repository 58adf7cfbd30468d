#!/usr/bin/env python3
"""Print the lab's cluster state (members, raft peers and leader) and how to reach things.

The CLI needs a token under deny-by-default ACLs: the management token is read
from the lab's secrets folder and handed to `consul` on standard input, so it
never shows in a process list or a shell history.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lab_inventory

SERVER = lab_inventory.first("consul_servers")
TOKEN_FILE = Path(__file__).resolve().parents[2] / "inventories/lab/.secrets/consul_acl_bootstrap_token"


def consul(*args: str) -> str:
    token = TOKEN_FILE.read_text(encoding="utf-8").strip() if TOKEN_FILE.is_file() else ""
    script = 'CONSUL_HTTP_TOKEN=$(cat) exec consul "$@"'
    result = subprocess.run(["docker", "exec", "-i", SERVER, "sh", "-c", script, "consul", *args],
                            input=token, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"lab-status: `consul {' '.join(args)}` on {SERVER} failed: "
                         f"{result.stderr.strip() or result.stdout.strip()}\n"
                         "Is the lab up? Run `make lab`.")
    return result.stdout.rstrip()


def main() -> int:
    print("\n== Consul members")
    print(consul("members"))
    print("\n== Raft peers")
    print(consul("operator", "raft", "list-peers"))
    print("\n== The WAN pool (the servers of every datacenter)")
    print(consul("members", "-wan"))
    print(f"""
== How to reach the lab
  A shell on a node:        docker exec -it {SERVER} bash
  The CLI with the management token (ACLs deny by default):
    docker exec -i {SERVER} sh -c 'CONSUL_HTTP_TOKEN=$(cat) consul members' \\
      < inventories/lab/.secrets/consul_acl_bootstrap_token
  The HTTP API (loopback):  docker exec app-1 curl -s http://127.0.0.1:8500/v1/status/leader
  Secrets of the lab:       inventories/lab/.secrets/ (git-ignored, mode 0600)
  Run the main job again:   .venv/bin/ansible-playbook -i inventories/lab site.yml
  Remove the lab:           make lab-destroy

== The Consul UI in a browser on this machine
  Open https://consul.localhost:8443/ui/ and sign in at the lab IdP (idp.localhost:9443/9444).
  Trust the lab's web CA first (or accept the warning):
    inventories/lab/.secrets/web-ca/web-ca.pem
  Users (password files, one per user):
    admin     (consul-admins: operator token)   inventories/lab/.secrets/lab_idp/users/admin
    reader    (consul-readers: read-only token) inventories/lab/.secrets/lab_idp/users/reader
    outsider  (no group: 403)                   inventories/lab/.secrets/lab_idp/users/outsider
  The public web service: https://localhost:8443/""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
