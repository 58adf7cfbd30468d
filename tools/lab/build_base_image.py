#!/usr/bin/env python3
"""Build the lab's systemd base image with debootstrap and `docker import`.

No container registry is reachable, so the image is made from Debian's own
packages. The mirror is read from this machine's apt sources rather than
written down here, and the result is cached by tag: a second run is a no-op.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TAG_PREFIX = "consul-platform/debian-systemd"
SUITES = ("bookworm", "trixie")
# python3-apt: Ansible's apt module would otherwise install it on first use;
# sudo: `become` needs it.
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-apt",
    "sudo",
    "iproute2",
    "ca-certificates",
    "procps",
    "curl",
    "unzip",
]
# Debian 13 is built the way its cloud images come: systemd-resolved with its
# NSS module (the consul_resolver role's resolved path) and sshd (the hosts
# the SSH drill reaches as an unprivileged user with sudo).
SUITE_PACKAGES = {
    "bookworm": [],
    "trixie": ["systemd-resolved", "libnss-resolve", "openssh-server"],
}
# Host keys are made per container at sshd's first start, never baked into
# the image (every container would share them).
SSH_HOST_KEYS_DROP_IN = """[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
"""
# On a real Debian 13 host with systemd-resolved, the network manager
# (networkd, NetworkManager) gives resolved the upstream servers per link and
# /etc/resolv.conf points at resolved's stub. Docker instead writes its own
# resolv.conf (a bind mount, rewritable only in place). This unit does at
# boot what the network manager would: docker's nameservers become eth0's,
# as the default route, and resolv.conf the stub's.
LINK_DNS_UNIT = """[Unit]
Description=Hand docker's nameservers to systemd-resolved as eth0's (stands in for networkd)
Requires=systemd-resolved.service
After=systemd-resolved.service
Before=network-online.target nss-lookup.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -euc 'servers=$$(sed -n "s/^nameserver[[:space:]]*//p" /etc/resolv.conf \
  | grep -vx 127.0.0.53 || true); \
  [ -z "$$servers" ] || resolvectl dns eth0 $$servers; resolvectl default-route eth0 yes; \
  printf "nameserver 127.0.0.53\\noptions edns0 trust-ad\\n" > /etc/resolv.conf'

[Install]
WantedBy=multi-user.target
"""


def apt_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """Return the first Debian (non-security) mirror URI from apt's sources.

    Reads both the one-line format (sources.list) and deb822 (*.sources).
    """
    files = [sources_dir / "sources.list"]
    files += sorted((sources_dir / "sources.list.d").glob("*.list"))
    files += sorted((sources_dir / "sources.list.d").glob("*.sources"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for uri in _uris(text, deb822=path.suffix == ".sources"):
            if "security" not in uri and uri.startswith(("http://", "https://")):
                return uri
    raise SystemExit(
        "build_base_image: no Debian mirror found in /etc/apt/sources.list{,.d}; "
        "pass one with --mirror"
    )


def _uris(text: str, deb822: bool) -> list[str]:
    if deb822:
        return [u for line in text.splitlines()
                if (m := re.match(r"^URIs:\s*(.+)$", line.strip()))
                for u in m.group(1).split()]
    uris = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if parts and parts[0] == "deb":
            rest = [p for p in parts[1:] if not p.startswith("[")]
            if rest:
                uris.append(rest[0])
    return uris


RECIPE_LABEL = "org.consul-platform.recipe"


def recipe_digest(suite: str) -> str:
    """This file's digest with the suite: an image built by another version of it is rebuilt."""
    return hashlib.sha256(Path(__file__).read_bytes() + suite.encode()).hexdigest()[:16]


def image_recipe(tag: str) -> str | None:
    """The recipe label of the image with this tag; None when there is no such image."""
    result = subprocess.run(
        ["docker", "image", "inspect", "--format",
         f'{{{{index .Config.Labels "{RECIPE_LABEL}"}}}}', tag],
        check=False, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def install_debootstrap() -> None:
    if os.geteuid() != 0 or not Path("/etc/debian_version").is_file():
        raise SystemExit("build_base_image: debootstrap is missing; install it "
                         "(Debian: `apt-get install -y debootstrap`) and run this again")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def build(tag: str, suite: str, mirror: str) -> None:
    if shutil.which("debootstrap") is None:
        install_debootstrap()
    with tempfile.TemporaryDirectory(prefix="consul-platform-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase",
             f"--include={','.join(PACKAGES + SUITE_PACKAGES[suite])}",
             suite, str(rootfs), mirror],
            check=True, stdout=subprocess.DEVNULL)
        # apt's binary caches, as on any host that has run apt: without them
        # every container builds its own (~0.5 s of CPU and 70 MB written
        # on the first package install).
        subprocess.run(["chroot", str(rootfs), "apt-cache", "gencaches"], check=True,
                       stdout=subprocess.DEVNULL)
        # Containers need no getty, and a fresh machine-id per container.
        (rootfs / "etc/machine-id").write_text("")
        for unit in ("getty@tty1.service", "console-getty.service"):
            link = rootfs / "etc/systemd/system" / unit
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
        for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        if (rootfs / "usr/lib/systemd/systemd-resolved").exists():
            (rootfs / "etc/systemd/system/lab-link-dns.service").write_text(LINK_DNS_UNIT)
            wants = rootfs / "etc/systemd/system/multi-user.target.wants"
            wants.mkdir(parents=True, exist_ok=True)
            (wants / "lab-link-dns.service").symlink_to("/etc/systemd/system/lab-link-dns.service")
        if (rootfs / "usr/sbin/sshd").exists():
            drop_in = rootfs / "etc/systemd/system/ssh.service.d"
            drop_in.mkdir(parents=True, exist_ok=True)
            (drop_in / "host-keys.conf").write_text(SSH_HOST_KEYS_DROP_IN)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."],
                               stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-c", 'CMD ["/lib/systemd/systemd"]',
                        "-c", f"LABEL {RECIPE_LABEL}={recipe_digest(suite)}",
                        "-", tag], stdin=tar.stdout, check=True,
                       stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise SystemExit("build_base_image: tar of the root filesystem failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suite", choices=SUITES, default=SUITES[0])
    parser.add_argument("--tag", help=f"image tag (default: {TAG_PREFIX}:<suite>)")
    parser.add_argument("--mirror", help="Debian mirror (default: from apt sources)")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    args.tag = args.tag or f"{TAG_PREFIX}:{args.suite}"
    found = image_recipe(args.tag)
    if found == recipe_digest(args.suite) and not args.force:
        print(f"base image {args.tag}: cached")
        return 0
    if found is not None:
        print(f"base image {args.tag}: built by another recipe ({found or 'unlabelled'}), rebuilding")
    mirror = args.mirror or apt_mirror()
    print(f"base image {args.tag}: debootstrap {args.suite} from {mirror} ...", flush=True)
    build(args.tag, args.suite, mirror)
    print(f"base image {args.tag}: built")
    return 0


if __name__ == "__main__":
    sys.exit(main())
