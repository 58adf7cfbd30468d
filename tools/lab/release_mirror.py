#!/usr/bin/env python3
"""Fill a local release mirror with the binaries of files/releases.yml, at the
versions the roles pin (their defaults).

The mirror is laid out exactly like the official download sites, so the roles
use one download-and-verify path and only the base URL differs. The file
names of each site come from roles/release_binary/files/layouts.yml, which the
release_binary action reads too.

For each release: keep it when the cached archive matches its sums file;
otherwise download and verify it when the official site is reachable;
otherwise build the same pinned version from its Go module. Modules whose
go.mod carries `replace` directives (Consul, Hydra) cannot be
`go install`ed, so every build goes through a small wrapper module that
requires the release and the released versions of its local sub-modules, and
repeats the release's replacements that point at other modules.

Sites that sign their sums (layout field `signature`: HashiCorp's) get the
mirror's own signature: a lab signing key is made once with gpg under the
cache (never in the repository), every such sums file is signed with it, and
its public half is written to the mirror's root (lab-release-key.asc), the
key the lab inventories give release_binary instead of HashiCorp's.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "files" / "releases.yml"
# The release sites' file names, shared with the release_binary action.
LAYOUTS = yaml.safe_load((REPO / "roles" / "release_binary" / "files" / "layouts.yml")
                         .read_text(encoding="utf-8"))
# The signature check release_binary runs, for the mirror's own signatures.
_spec = importlib.util.spec_from_file_location(
    "release_signature", REPO / "roles" / "release_binary" / "module_utils" / "release_signature.py")
release_signature = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(release_signature)
# Fixed archive timestamps keep rebuilt archives byte-identical.
ZIP_EPOCH = (2020, 1, 1, 0, 0, 0)
TAR_EPOCH = 1577836800


def cache_root() -> Path:
    default = Path.home() / ".cache" / "consul-platform"
    return Path(os.environ.get("CONSUL_PLATFORM_CACHE", default))


@dataclass(frozen=True)
class Release:
    product: str
    version: str
    official_base: str
    layout: str
    go_module: str
    go_package: str
    binary: str
    ldflags: str
    # Hydra's SQLite store needs cgo and build tags; the others build static.
    cgo: str = "false"
    tags: str = ""

    def _name(self, field: str) -> str:
        return LAYOUTS[self.layout][field].format(product=self.product, version=self.version)

    @property
    def rel_dir(self) -> str:
        return self._name("mirror_dir")

    @property
    def archive(self) -> str:
        return self._name("archive")

    @property
    def sums(self) -> str:
        return self._name("sums")

    @property
    def signature(self) -> str | None:
        """The sums file's detached signature, for sites that sign."""
        return self._name("signature") if "signature" in LAYOUTS[self.layout] else None

    @property
    def member(self) -> str:
        """The binary's path inside the archive."""
        return self._name("member")

    @property
    def official_dir_url(self) -> str:
        return f"{self.official_base}/{self._name('dir')}"


class _DefaultsLoader(yaml.SafeLoader):
    """Reads role defaults, where Ansible's !unsafe strings are plain strings."""


_DefaultsLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def pinned_version(reference: str) -> str:
    """The version a role pins: `roles/<role>/defaults/main.yml:<variable>`."""
    file, _, variable = reference.partition(":")
    defaults = yaml.load((REPO / file).read_text(encoding="utf-8"), Loader=_DefaultsLoader)
    if variable not in (defaults or {}):
        raise SystemExit(f"release_mirror: {file} has no {variable} (files/releases.yml version_from)")
    return str(defaults[variable])


def load_manifest(path: Path = MANIFEST, upgrade_from: bool = False) -> list[Release]:
    """Every release of the manifest, its version read from the role that pins
    it; with upgrade_from, the older releases kept for the upgrade drill too."""
    releases = []
    for name, spec in yaml.safe_load(path.read_text(encoding="utf-8")).items():
        fields = {k: str(v) for k, v in spec.items() if k not in ("version_from", "upgrade_from")}
        version = pinned_version(spec["version_from"])
        fields["ldflags"] = fields.get("ldflags", "").replace("{version}", version)
        releases.append(Release(product=name, version=version, **fields))
        for older in spec.get("upgrade_from", []) if upgrade_from else []:
            releases.append(Release(product=name, **{**fields, "version": str(older["version"]),
                                                     "ldflags": str(older.get("ldflags", ""))}))
    return releases


def upgrade_from(product: str) -> list[str]:
    """The older versions of `product` that the mirror holds for the upgrade
    drill (load_manifest lists each product's pinned release first)."""
    return [r.version for r in load_manifest(upgrade_from=True) if r.product == product][1:]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_sum(sums_file: Path, archive: str) -> str | None:
    if not sums_file.is_file():
        return None
    for line in sums_file.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == archive:
            return parts[0]
    return None


def is_cached(rel: Release, mirror: Path) -> bool:
    folder = mirror / rel.rel_dir
    want = expected_sum(folder / rel.sums, rel.archive)
    return want is not None and (folder / rel.archive).is_file() \
        and sha256(folder / rel.archive) == want


def official_reachable(rel: Release) -> bool:
    host = urllib.parse.urlparse(rel.official_base).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def download_official(rel: Release, folder: Path) -> bool:
    """Fetch archive and sums from the official site; True when verified."""
    try:
        for name in (rel.sums, rel.archive):
            with urllib.request.urlopen(f"{rel.official_dir_url}/{name}", timeout=30) as resp:
                (folder / f".{name}.part").write_bytes(resp.read())
    except OSError as exc:
        print(f"  official download failed ({exc}); building from source", flush=True)
        return False
    want = expected_sum(folder / f".{rel.sums}.part", rel.archive)
    if want != sha256(folder / f".{rel.archive}.part"):
        raise SystemExit(f"release_mirror: {rel.archive} from the official site "
                         "does not match its SHA256SUMS")
    for name in (rel.sums, rel.archive):
        (folder / f".{name}.part").replace(folder / name)
    return True


def go(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(["go", *args], check=False, cwd=cwd, env={**os.environ, **(env or {})},
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"release_mirror: go {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def local_submodules(gomod: str) -> dict[str, str]:
    """Modules that a go.mod replaces with local paths, at their required versions."""
    local = set(re.findall(r"^(?:replace)?\s*(\S+)(?:\s+v\S+)?\s+=>\s+\.{1,2}/", gomod,
                           re.MULTILINE))
    required = dict(re.findall(r"^(?:require)?\s*(\S+)\s+(v\S+)(?:\s+//.*)?$", gomod,
                               re.MULTILINE))
    return {mod: required[mod] for mod in sorted(local) if mod in required}


def module_replacements(gomod: str) -> list[str]:
    """`replace` lines of a go.mod that point at other modules, not local paths."""
    lines = []
    for match in re.finditer(r"^(?:replace\s+|\t)(\S+(?:\s+v\S+)?\s+=>\s+(\S+)\s+(v\S+))\s*$",
                             gomod, re.MULTILINE):
        if not match.group(2).startswith("."):
            lines.append(f"replace {match.group(1)}")
    return lines


def build_from_source(rel: Release, build_dir: Path) -> bytes:
    """Build the release's binary through a wrapper module; return its bytes."""
    build_dir.mkdir(parents=True, exist_ok=True)
    version = f"v{rel.version}"
    info = json.loads(go(["mod", "download", "-json", f"{rel.go_module}@{version}"], build_dir))
    upstream_gomod = Path(info["GoMod"]).read_text(encoding="utf-8")
    requires = {rel.go_module: version, **local_submodules(upstream_gomod)}
    go_line = re.search(r"^go (\S+)", upstream_gomod, re.MULTILINE)
    lines = ["module consulplatform.local/build/" + rel.product, "",
             f"go {go_line.group(1) if go_line else '1.22'}", "", "require ("]
    lines += [f"\t{mod} {ver}" for mod, ver in requires.items()]
    lines += [")", "", *module_replacements(upstream_gomod), ""]
    (build_dir / "go.mod").write_text("\n".join(lines), encoding="utf-8")
    # The wrapper has no code of its own; this file only pins the main package.
    (build_dir / "tools.go").write_text(
        f'//go:build tools\n\npackage tools\n\nimport _ "{rel.go_package}"\n', encoding="utf-8")
    go(["mod", "tidy"], build_dir)
    out = build_dir / "out" / rel.binary
    started = time.monotonic()
    tags = ["-tags", rel.tags] if rel.tags else []
    go(["build", "-trimpath", *tags, "-ldflags", f"-s -w {rel.ldflags}".strip(), "-o", str(out),
        rel.go_package], build_dir, env={"CGO_ENABLED": "1" if rel.cgo == "true" else "0"})
    print(f"  built {rel.binary} in {time.monotonic() - started:.0f} s", flush=True)
    return out.read_bytes()


def pack(rel: Release, binary: bytes, folder: Path) -> None:
    buffer = io.BytesIO()
    if rel.layout == "hashicorp":
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            entry = zipfile.ZipInfo(rel.binary, date_time=ZIP_EPOCH)
            entry.external_attr = 0o100755 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, binary)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            entry = tarfile.TarInfo(rel.member)
            entry.size, entry.mode, entry.mtime = len(binary), 0o755, TAR_EPOCH
            archive.addfile(entry, io.BytesIO(binary))
    (folder / rel.archive).write_bytes(buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    (folder / rel.sums).write_text(f"{digest}  {rel.archive}\n", encoding="utf-8")


def ensure(rel: Release, mirror: Path, build_root: Path, offline: bool) -> str:
    folder = mirror / rel.rel_dir
    if is_cached(rel, mirror):
        return "cached"
    folder.mkdir(parents=True, exist_ok=True)
    if not offline and official_reachable(rel) and download_official(rel, folder):
        return "downloaded"
    pack(rel, build_from_source(rel, build_root / f"{rel.product}-{rel.version}"), folder)
    return "built"


LAB_KEY_NAME = "consul-platform lab release mirror"
LAB_KEY_FILE = "lab-release-key.asc"


def gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", *args], input=data,
                          check=True, capture_output=True).stdout


def lab_signing_key(mirror: Path) -> Path:
    """The lab key's gpg home, made once; its public key in the mirror's root."""
    home = cache_root() / "signing" / "gnupg"
    if not home.is_dir():
        home.mkdir(parents=True, mode=0o700)
        gpg(home, "--passphrase", "", "--pinentry-mode", "loopback",
            "--quick-gen-key", LAB_KEY_NAME, "ed25519", "sign", "never")
    mirror.mkdir(parents=True, exist_ok=True)
    (mirror / LAB_KEY_FILE).write_bytes(gpg(home, "--armor", "--export", LAB_KEY_NAME))
    return home


def sign_sums(rel: Release, mirror: Path, home: Path) -> str:
    """Sign the release's sums with the lab key unless that signature is there."""
    folder = mirror / rel.rel_dir
    sums, signature = folder / rel.sums, folder / rel.signature
    keyring = gpg(home, "--export", LAB_KEY_NAME)
    if signature.is_file() and release_signature.verify_detached(
            keyring, signature.read_bytes(), sums.read_bytes()) is None:
        return "signed"
    signature.write_bytes(gpg(home, "--detach-sign", "--local-user", LAB_KEY_NAME, "--output", "-",
                              str(sums)))
    return "signed now"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", type=Path, default=cache_root() / "releases",
                        help="mirror folder (default: %(default)s)")
    parser.add_argument("--offline", action="store_true",
                        help="never try the official sites; build from source")
    parser.add_argument("products", nargs="*", help="only these products")
    args = parser.parse_args(argv)
    releases = [r for r in load_manifest(upgrade_from=True)
                if not args.products or r.product in args.products]
    home = lab_signing_key(args.mirror)
    for rel in releases:
        print(f"{rel.product} {rel.version}: ...", flush=True)
        state = ensure(rel, args.mirror, cache_root() / "build", args.offline)
        if rel.signature:
            state += ", " + sign_sums(rel, args.mirror, home)
        print(f"{rel.product} {rel.version}: {state} in {args.mirror / rel.rel_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
