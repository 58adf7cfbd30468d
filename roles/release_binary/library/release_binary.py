#!/usr/bin/python
"""Install one released binary on a host, verified against its SHA256 sums."""

from __future__ import annotations

DOCUMENTATION = r"""
module: release_binary
short_description: Install one released binary, verified against its SHA256 sums, in one task
description:
  - Downloads a release archive (or takes the one the action copied from the controller),
    checks it against the release's SHA256 sums, unpacks the binary into a versioned folder
    and points a link on PATH at it. A host that already has that version and link is left
    alone without any network call.
  - The action plugin of the same name works out the file names from the release site's
    layout (files/layouts.yml of this role) and, for I(install_method=controller), downloads
    and verifies on the controller and copies the archive to hosts that need it.
options:
  product:
    description: Product name as on the release site (consul, consul-template).
    type: str
    required: true
  version:
    description: Release version without a leading "v".
    type: str
    required: true
  base_url:
    description: The product's release base URL, or a mirror laid out like it.
    type: str
    required: true
  layout:
    description: How the release site names its folders and files.
    type: str
    choices: [hashicorp, github, ory]
    default: hashicorp
  install_method:
    description: Hosts download themselves (remote) or get the archive from the controller.
    type: str
    choices: [remote, controller]
    default: remote
  download_dir:
    description: Where hosts keep the verified archives.
    type: path
    default: /var/cache/release-binaries
  install_root:
    description: Versioned folders the binaries are unpacked into.
    type: path
    default: /usr/local/lib/release-binaries
  bin_dir:
    description: Folder on PATH that gets a link to the installed binary.
    type: path
    default: /usr/local/bin
  controller_cache_dir:
    description: Controller-side cache of verified archives (controller method).
    type: path
    default: ~/.cache/consul-platform/downloads
  validate_certs:
    description: Check the TLS certificate of the release site.
    type: bool
    default: true
  signing_key_file:
    description:
      - ASCII-armored OpenPGP public key (a file on the controller) whose signature the release's
        sums file must carry, checked with gpgv before the sums are trusted. A bare file name is
        looked up in this role's files/keys (hashicorp.asc is HashiCorp's release key).
      - Only for layouts whose site signs its sums (hashicorp). Empty: no signature check.
    type: str
"""

RETURN = r"""
binary:
  description: Path of the installed binary.
  type: str
  returned: always
link:
  description: The link on PATH.
  type: str
  returned: always
previous:
  description: What the link pointed at before this task, or null.
  type: str
  returned: always
"""

import base64
import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.release_signature import verify_detached
from ansible.module_utils.urls import open_url

CHUNK = 1 << 20


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_sum(sums_text: str, archive: str) -> str | None:
    for line in sums_text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == archive:
            return parts[0].lower()
    return None


def fetch(url: str, validate_certs: bool) -> bytes:
    with open_url(url, validate_certs=validate_certs, timeout=60) as response:
        return response.read()


def write_atomically(dest: str, mode: int, fill) -> None:
    """Call fill(file) on a temporary file next to dest, then rename it to dest."""
    os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".release-binary-")
    try:
        with os.fdopen(handle, "wb") as out:
            fill(out)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def download(url: str, dest: str, validate_certs: bool) -> None:
    def fill(out):
        with open_url(url, validate_certs=validate_certs, timeout=60) as response:
            shutil.copyfileobj(response, out, CHUNK)

    write_atomically(dest, 0o644, fill)


def extract_member(archive: str, member: str, dest: str) -> None:
    """Write one member of a zip or tar.gz archive to dest, mode 0755."""
    def fill(out):
        if archive.endswith(".zip"):
            with zipfile.ZipFile(archive) as bundle, bundle.open(member) as source:
                shutil.copyfileobj(source, out, CHUNK)
            return
        with tarfile.open(archive, "r:*") as bundle:
            info = bundle.getmember(member)
            if not info.isfile():
                raise ValueError(f"{member} in {archive} is not a regular file")
            shutil.copyfileobj(bundle.extractfile(info), out, CHUNK)

    write_atomically(dest, 0o755, fill)


def point_link(link: str, target: str) -> None:
    tmp = f"{link}.release-binary-tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "product": {"type": "str", "required": True},
            "version": {"type": "str", "required": True},
            # Set by the action plugin from the layout:
            "url": {"type": "str"},
            "archive": {"type": "str", "required": True},
            "sums": {"type": "str"},
            "member": {"type": "str", "required": True},
            "src": {"type": "path"},
            "sha256": {"type": "str"},
            "download_dir": {"type": "path", "default": "/var/cache/release-binaries"},
            "install_root": {"type": "path", "default": "/usr/local/lib/release-binaries"},
            "bin_dir": {"type": "path", "default": "/usr/local/bin"},
            "validate_certs": {"type": "bool", "default": True},
            # Set by the action plugin: the sums' signature file and the
            # binary keyring (base64) it must verify with.
            "signature": {"type": "str"},
            "keyring": {"type": "str"},
        },
        required_together=[["signature", "keyring"]],
        required_by={"src": ["sha256"]},
        supports_check_mode=True,
    )
    p = module.params
    target_dir = os.path.join(p["install_root"], f"{p['product']}_{p['version']}")
    binary = os.path.join(target_dir, p["member"])
    link = os.path.join(p["bin_dir"], p["product"])
    previous = os.readlink(link) if os.path.islink(link) else None
    installed = os.path.isfile(binary)
    result = {"binary": binary, "link": link, "previous": previous, "changed": False}

    if installed and previous == binary:
        module.exit_json(**result)
    result["changed"] = True
    result["diff"] = {"before": {"link": previous, "installed": installed},
                      "after": {"link": binary, "installed": True},
                      "before_header": link, "after_header": link}
    if module.check_mode:
        module.exit_json(**result)

    if not installed:
        if p["src"]:
            # Kept in download_dir like a downloaded archive, once it is verified.
            want = p["sha256"].lower()
            if sha256_of(p["src"]) != want:
                module.fail_json(msg=f"{p['archive']} copied from the controller does not match "
                                     f"SHA256 {want}; nothing was installed", **result)
            os.makedirs(p["download_dir"], mode=0o755, exist_ok=True)
            archive_path = os.path.join(p["download_dir"], p["archive"])
            shutil.copyfile(p["src"], archive_path)
            os.chmod(archive_path, 0o644)
        elif p["url"]:
            base = p["url"].rstrip("/")
            try:
                sums_bytes = fetch(f"{base}/{p['sums']}", p["validate_certs"])
            except Exception as err:
                module.fail_json(msg=f"cannot read the sums file {base}/{p['sums']}: {err}", **result)
            if p["signature"]:
                try:
                    signature = fetch(f"{base}/{p['signature']}", p["validate_certs"])
                except Exception as err:
                    module.fail_json(msg=f"cannot read the sums' signature {base}/{p['signature']}: {err}; "
                                         "nothing was installed", **result)
                refused = verify_detached(base64.b64decode(p["keyring"]), signature, sums_bytes)
                if refused:
                    module.fail_json(msg=f"{p['sums']} does not carry a good signature of the configured "
                                         f"release key ({refused}); nothing was installed", **result)
            sums = sums_bytes.decode("utf-8", "replace")
            want = expected_sum(sums, p["archive"])
            if want is None:
                module.fail_json(msg=f"{p['sums']} has no line for {p['archive']}", **result)
            os.makedirs(p["download_dir"], mode=0o755, exist_ok=True)
            archive_path = os.path.join(p["download_dir"], p["archive"])
            if not (os.path.isfile(archive_path) and sha256_of(archive_path) == want):
                try:
                    download(f"{base}/{p['archive']}", archive_path, p["validate_certs"])
                except Exception as err:
                    module.fail_json(msg=f"cannot download {base}/{p['archive']}: {err}", **result)
        else:
            # The controller method: the action copies the archive and calls again.
            result.update(changed=False, needs_archive=True)
            result.pop("diff")
            module.exit_json(**result)
        got = sha256_of(archive_path)
        if got != want:
            os.unlink(archive_path)
            module.fail_json(msg=f"{p['archive']} has SHA256 {got}, the release's sums say {want}; "
                                 "the archive was removed and nothing was installed", **result)
        try:
            extract_member(archive_path, p["member"], binary)
        except (KeyError, ValueError, OSError, zipfile.BadZipFile, tarfile.TarError) as err:
            module.fail_json(msg=f"cannot unpack {p['member']} from {p['archive']}: {err}", **result)

    os.makedirs(p["bin_dir"], mode=0o755, exist_ok=True)
    point_link(link, binary)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
