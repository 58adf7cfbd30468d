"""The resolver role's guard for the systemd-resolved path: which global
upstream servers resolved would use beside the agent (filter
consul_resolver_global_upstreams), from the probe tasks/resolved.yml prints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "consul_resolver", REPO / "roles/consul_resolver/filter_plugins/consul_resolver.py")
resolver = importlib.util.module_from_spec(spec)
spec.loader.exec_module(resolver)

OWN = "/etc/systemd/resolved.conf.d/consul.conf"
STUB = "/run/systemd/resolve/stub-resolv.conf"
STOCK = "# /etc/systemd/resolved.conf\n#  This file is part of systemd.\n[Resolve]\n#DNS=\n#FallbackDNS=\n"
MDNS = "# /usr/lib/systemd/resolved.conf.d/00-disable-mdns.conf\n[Resolve]\nMulticastDNS=no\n"
OURS = f"# {OWN}\n[Resolve]\nDNS=127.0.0.1:8600\nDNSSEC=false\nDomains=~consul\n"


def conf(path: str, body: str) -> str:
    return f"# {path}\n{body}"


MAIN = "/etc/systemd/resolved.conf"
DROP_INS = "/etc/systemd/resolved.conf.d"
STUB_ONLY = "nameserver 127.0.0.53\n"


def probe(target: str, resolv_conf: str, *configs: str) -> str:
    sep = resolver.PROBE_SEPARATOR
    return f"{target}\n{sep}\n{resolv_conf}\n{sep}\n" + "\n".join(configs)


@pytest.mark.parametrize(("case", "text", "expected"), [
    ("stub symlink, stock config", probe(STUB, "nameserver 127.0.0.53\n", STOCK, MDNS), []),
    ("stub symlink, our drop-in already there", probe(STUB, STUB_ONLY, STOCK, MDNS, OURS), []),
    ("uplink symlink lists the link's servers", probe("/run/systemd/resolve/resolv.conf",
                                                     "nameserver 10.0.0.2\n", STOCK), []),
    ("static file of resolved", probe("/usr/lib/systemd/resolv.conf", "nameserver 127.0.0.53\n", STOCK), []),
    ("foreign file naming the stub and 127.0.0.54 only",
     probe("/etc/resolv.conf", "nameserver 127.0.0.53\nnameserver 127.0.0.54\n", STOCK), []),
    ("foreign file from docker", probe("/etc/resolv.conf", "nameserver 127.0.0.11\noptions ndots:0\n", STOCK),
     ["127.0.0.11"]),
    ("foreign file, indented and repeated", probe("/etc/resolv.conf",
                                                 "  nameserver 10.0.0.2\nnameserver\t10.0.0.3\n", STOCK),
     ["10.0.0.2", "10.0.0.3"]),
    ("commented nameserver", probe("/etc/resolv.conf", "# nameserver 10.0.0.2\n", STOCK), []),
    ("global DNS= of the host", probe(STUB, STUB_ONLY,
                                      conf(MAIN, "[Resolve]\nDNS=10.0.0.2 10.0.0.3#dns.example\n")),
     ["10.0.0.2", "10.0.0.3#dns.example"]),
    ("DNS= in a drop-in of the host", probe(STUB, "", STOCK, "# /etc/systemd/resolved.conf.d/corp.conf\n"
                                            "[Resolve]\nDNS=10.0.0.2\n", OURS), ["10.0.0.2"]),
    ("an empty DNS= resets the list", probe(STUB, "", conf(MAIN, "[Resolve]\nDNS=10.0.0.2\n"),
                                            conf(f"{DROP_INS}/reset.conf", "[Resolve]\nDNS=\n")), []),
    ("repeated DNS= lines add up", probe(STUB, "", "# /etc/systemd/resolved.conf\n[Resolve]\n"
                                         "DNS=10.0.0.2\nDNS = 10.0.0.3\n"), ["10.0.0.2", "10.0.0.3"]),
    ("FallbackDNS= is not an upstream", probe(STUB, "", "# /etc/systemd/resolved.conf\n[Resolve]\n"
                                              "FallbackDNS=10.0.0.9\n"), []),
    ("DNS= outside [Resolve] is not resolved's", probe(STUB, "", "# /etc/systemd/resolved.conf\n[Other]\n"
                                                       "DNS=10.0.0.2\n"), []),
    ("only our own drop-in's DNS= is left out", probe(STUB, "", OURS.replace("8600", "8600 10.0.0.7"),
                                                      "# /etc/systemd/resolved.conf.d/zz.conf\n[Resolve]\n"
                                                      "DNS=10.0.0.8\n"), ["10.0.0.8"]),
    ("a look-alike of our path is not ours", probe(STUB, "", OURS.replace(OWN, OWN + ".d/x.conf")),
     ["127.0.0.1:8600"]),
])
def test_global_upstreams(case, text, expected):
    assert resolver.consul_resolver_global_upstreams(text, OWN) == expected, case


@pytest.mark.parametrize("text", ["", "no separators at all", f"a\n{resolver.PROBE_SEPARATOR}\nb"])
def test_a_probe_of_another_shape_is_refused(text):
    with pytest.raises(ValueError, match="expected 3 parts"):
        resolver.consul_resolver_global_upstreams(text, OWN)
