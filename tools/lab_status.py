#!/usr/bin/env python3
"""Print the lab's cluster state (members, raft peers and leader) and how to reach things."""

from __future__ import annotations

import subprocess
import sys

SERVER = "consul-server-1"


def consul(*args: str) -> str:
    result = subprocess.run(["docker", "exec", SERVER, "consul", *args],
                            check=False, capture_output=True, text=True)
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
    print(f"""
== How to reach the lab
  A shell on a node:        docker exec -it {SERVER} bash
  The CLI:                  docker exec {SERVER} consul members
  KV:                       docker exec app-1 consul kv put python-web-service/greeting 'Hello Consul'
  The HTTP API (loopback):  docker exec app-1 curl -s http://127.0.0.1:8500/v1/status/leader
  Run the main job again:   .venv/bin/ansible-playbook -i inventories/lab site.yml
  Remove the lab:           make lab-destroy""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
