#!/usr/bin/env python3
"""Make sure the controller has what the molecule tests drive: Debian's
chromium and certutil for the edge's browser test (certutil trusts the lab's
web CA in the browser's own NSS database), and the OpenSSH client for the
drill that reaches its hosts over SSH.

On Debian as root the packages are installed; anywhere else this only
checks, and stops with a message that says what to install. Playwright
drives this chromium; it never downloads a browser of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = {"chromium": "chromium", "certutil": "libnss3-tools",
            "ssh": "openssh-client", "ssh-keygen": "openssh-client"}


def missing() -> list[str]:
    return sorted({package for command, package in PACKAGES.items() if shutil.which(command) is None})


def main() -> int:
    needed = missing()
    if not needed:
        return 0
    if not (Path("/etc/debian_version").is_file() and os.geteuid() == 0):
        print(f"test tools: install {' '.join(needed)} (the molecule tests drive them)",
              file=sys.stderr)
        return 1
    print(f"test tools: installing Debian's {' '.join(needed)} ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *needed], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return 0 if not missing() else 1


if __name__ == "__main__":
    sys.exit(main())
