#!/usr/bin/env python3
"""Build the wheelhouse the python_web_service role installs from.

The hosts install the web service offline, with `pip --no-index`, from the
wheels in this folder: the service's own wheel (built from
files/python-web-service) and the pinned wheels of its requirements.txt for
the hosts' Python. The build is reproducible (SOURCE_DATE_EPOCH), and a wheel
whose bytes did not change is not rewritten, so the role's copy stays
`changed=0` from one run to the next.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from release_mirror import TAR_EPOCH, cache_root

REPO = Path(__file__).resolve().parents[2]
SERVICE = REPO / "files" / "python-web-service"
# Same fixed timestamp as the release mirror's archives.
SOURCE_DATE_EPOCH = str(TAR_EPOCH)


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                    "--quiet", *args], check=True, env=env)


def build_service_wheel(scratch: Path) -> Path:
    """Build from a copy of the sources: pip builds in-tree and would leave
    build/ and *.egg-info folders in the repository."""
    source = scratch / "src"
    shutil.copytree(SERVICE, source, ignore=shutil.ignore_patterns(
        "tests", "__pycache__", "*.egg-info", "build", ".pytest_cache"))
    out = scratch / "wheel"
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
    pip("wheel", "--no-deps", "--wheel-dir", str(out), str(source), env=env)
    (wheel,) = out.glob("*.whl")
    return wheel


def download_requirements(dest: Path, python_version: str) -> None:
    pip("download", "--only-binary=:all:", "--implementation", "cp",
        "--python-version", python_version, "--platform", "manylinux2014_x86_64",
        "--requirement", str(SERVICE / "requirements.txt"), "--dest", str(dest))


def install_if_different(wheel: Path, dest: Path) -> str:
    target = dest / wheel.name
    if target.exists() and target.read_bytes() == wheel.read_bytes():
        return "unchanged"
    shutil.copyfile(wheel, target)
    return "written"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=cache_root() / "wheelhouse")
    parser.add_argument("--python-version", default="3.11",
                        help="Python of the hosts (Debian bookworm: 3.11)")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    download_requirements(args.dest, args.python_version)
    with tempfile.TemporaryDirectory() as scratch:
        wheel = build_service_wheel(Path(scratch))
        for stale in args.dest.glob("python_web_service-*.whl"):
            if stale.name != wheel.name:
                stale.unlink()
        state = install_if_different(wheel, args.dest)
    print(f"wheelhouse {args.dest}: {wheel.name} {state}; "
          f"{len(list(args.dest.glob('*.whl')))} wheels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
