"""Controller side of release_binary: file names from the layout, controller downloads.

One task round per binary per host: the module alone when the host downloads
(remote) or already has the version; for the controller method the archive is
downloaded and verified once into the controller's cache and copied only to
hosts that lack the version. With signing_key_file, the sums file must carry a
good signature of that key (gpgv, on the host that reads the sums) before any
line of it is trusted.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import yaml
from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

ROLE = Path(__file__).resolve().parent.parent
LAYOUTS = ROLE / "files" / "layouts.yml"
KEYS = ROLE / "files" / "keys"
USER_OPTIONS = {"product", "version", "base_url", "layout", "install_method", "download_dir",
                "install_root", "bin_dir", "controller_cache_dir", "validate_certs", "signing_key_file"}

# The same signature check the module runs on the hosts (module_utils).
_spec = importlib.util.spec_from_file_location("release_signature",
                                               ROLE / "module_utils" / "release_signature.py")
release_signature = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(release_signature)


def release_files(product: str, version: str, layout: str, base_url: str) -> dict[str, str]:
    """url (the release's folder), archive, sums and member of one release."""
    layouts = yaml.safe_load(LAYOUTS.read_text(encoding="utf-8"))
    if layout not in layouts:
        raise AnsibleActionFail(f"release_binary: unknown layout {layout!r}; known: {sorted(layouts)}")
    names = {key: value.format(product=product, version=version)
             for key, value in layouts[layout].items()}
    return {"url": f"{base_url.rstrip('/')}/{names['dir']}", "archive": names["archive"],
            "sums": names["sums"], "member": names["member"], "signature": names.get("signature")}


def keyring(signing_key_file: str, layout: str, files: dict[str, str]) -> bytes:
    """The binary keyring of an armored key file (a bare name: files/keys/)."""
    if not files["signature"]:
        raise AnsibleActionFail(f"release_binary: the {layout} layout publishes no signature of its sums; "
                                "leave signing_key_file empty for this product")
    path = Path(signing_key_file) if os.sep in signing_key_file else KEYS / signing_key_file
    try:
        return release_signature.dearmor(path.expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise AnsibleActionFail(f"release_binary: cannot read the signing key {path}: {err}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def controller_archive(files: dict[str, str], cache_dir: Path, keys: bytes | None) -> tuple[Path, str]:
    """The verified archive in the controller's cache, downloaded when missing."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(f"{files['url']}/{files['sums']}", timeout=60) as response:
        sums_bytes = response.read()
    if keys is not None:
        signature_url = f"{files['url']}/{files['signature']}"
        try:
            with urllib.request.urlopen(signature_url, timeout=60) as response:
                signature = response.read()
        except OSError as err:
            raise AnsibleActionFail(f"release_binary: cannot read the sums' signature {signature_url}: "
                                    f"{err}; nothing was installed") from None
        refused = release_signature.verify_detached(keys, signature, sums_bytes)
        if refused:
            raise AnsibleActionFail(f"release_binary: {files['sums']} does not carry a good signature of the "
                                    f"configured release key ({refused}); nothing was installed")
    sums = sums_bytes.decode("utf-8", "replace")
    want = next((parts[0].lower() for parts in map(str.split, sums.splitlines())
                 if len(parts) == 2 and parts[1].lstrip("*") == files["archive"]), None)
    if want is None:
        raise AnsibleActionFail(f"release_binary: {files['sums']} has no line for {files['archive']}")
    path = cache_dir / files["archive"]
    if path.is_file() and sha256_of(path) == want:
        return path, want
    # Hosts of one play run in parallel: each writes its own temporary file.
    handle, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".download-")
    try:
        with os.fdopen(handle, "wb") as out, \
                urllib.request.urlopen(f"{files['url']}/{files['archive']}", timeout=60) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        got = sha256_of(Path(tmp))
        if got != want:
            raise AnsibleActionFail(f"release_binary: {files['archive']} has SHA256 {got}, the release's "
                                    f"sums say {want}; nothing was installed")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path, want


class ActionModule(ActionBase):
    # No remote temporary folder unless an archive has to be copied.
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        unknown = set(args) - USER_OPTIONS
        if unknown:
            raise AnsibleActionFail(f"release_binary: unknown options {sorted(unknown)}")
        for required in ("product", "version", "base_url"):
            if not args.get(required):
                raise AnsibleActionFail(f"release_binary: {required} is required")
        method = args.pop("install_method", "remote")
        if method not in ("remote", "controller"):
            raise AnsibleActionFail(f"release_binary: install_method {method!r} is not remote or controller")
        cache_dir = Path(os.path.expanduser(
            args.pop("controller_cache_dir", None) or "~/.cache/consul-platform/downloads"))
        layout = args.pop("layout", "hashicorp")
        files = release_files(str(args["product"]), str(args["version"]), layout, str(args.pop("base_url")))
        signing_key_file = args.pop("signing_key_file", None)
        keys = keyring(str(signing_key_file), layout, files) if signing_key_file else None
        module_args = {**args, **files}
        module_args.pop("signature")
        if keys is not None:
            module_args.update(signature=files["signature"], keyring=base64.b64encode(keys).decode())
        if method == "controller":
            module_args.pop("url")
            module_args.pop("signature", None)
            module_args.pop("keyring", None)
        result.update(self._execute_module("release_binary", module_args=module_args,
                                           task_vars=task_vars))
        if not result.pop("needs_archive", False):
            return result

        local, digest = controller_archive(files, cache_dir, keys)
        if self._connection._shell.tmpdir is None:
            self._make_tmp_path()
        remote = self._connection._shell.join_path(self._connection._shell.tmpdir, files["archive"])
        self._transfer_file(str(local), remote)
        self._fixup_perms2((self._connection._shell.tmpdir, remote))
        result.update(self._execute_module("release_binary", task_vars=task_vars,
                                           module_args={**module_args, "src": remote, "sha256": digest}))
        self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
