#!/usr/bin/env python3
"""Make sure a docker engine answers; on Debian as root, install and start one.

Machines without systemd as PID 1 (like this project's CI machines) have no
service manager to start dockerd, so it is started here in the background with
its log in /var/log/dockerd.log. Anywhere else this only checks, and stops
with a message that says what to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

WAIT_SECONDS = 60


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], check=False, capture_output=True).returncode == 0


def is_debian() -> bool:
    return Path("/etc/debian_version").is_file()


def install_engine() -> None:
    print("docker: installing Debian's docker.io ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "docker.io"], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def start_engine() -> None:
    if Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "start", "docker"], check=True)
    else:
        _start_in_background()
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if engine_answers():
            return
        time.sleep(1)
    raise SystemExit(f"docker: the engine did not answer within {WAIT_SECONDS} s; "
                     "see /var/log/dockerd.log or `journalctl -u docker`")


def _start_in_background() -> None:
    print("docker: starting dockerd in the background (log: /var/log/dockerd.log)", flush=True)
    with open("/var/log/dockerd.log", "ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                         start_new_session=True)


def main() -> int:
    if engine_answers():
        print("docker: engine answers")
        return 0
    if os.geteuid() != 0 or not is_debian():
        raise SystemExit(
            "docker: no docker engine answers. Install and start one (Debian: "
            "`apt-get install docker.io`, then start the docker service), make sure "
            "`docker info` works for this user, and run this again.")
    if shutil.which("dockerd") is None:
        install_engine()
    start_engine()
    print("docker: engine answers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
