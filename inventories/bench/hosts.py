#!/usr/bin/env python3
"""The benchmark cluster (tools/bench/bench_converge.py): 3 servers and N clients.

An inventory script, so that one inventory covers every size the benchmarks
need: BENCH_CLIENTS (default 2) sets the number of client agents. Host names
are the container names that playbooks/lab/up.yml creates.
"""

import json
import os
import sys

SERVERS = 3


def inventory(clients: int) -> dict:
    return {
        "_meta": {"hostvars": {}},
        "all": {"children": ["consul_servers", "consul_clients"]},
        "consul_servers": {"hosts": [f"bench-server-{n}" for n in range(1, SERVERS + 1)]},
        "consul_clients": {"hosts": [f"bench-client-{n}" for n in range(1, clients + 1)]},
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--host"]:
        print("{}")
    else:
        print(json.dumps(inventory(int(os.environ.get("BENCH_CLIENTS", "2"))), indent=2))
