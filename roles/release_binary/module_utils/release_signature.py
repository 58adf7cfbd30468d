"""OpenPGP detached signatures of release sums files, checked with gpgv.

gpgv (in every Debian host's base system, for apt) reads binary keyrings
only, so an armored public key is decoded here first. Used by the module on
the hosts and by the action plugin on the controller (controller method).
"""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile


def dearmor(text: str) -> bytes:
    """The binary packets of an ASCII-armored OpenPGP public key block."""
    lines = [line.strip() for line in text.strip().splitlines()]
    try:
        start = lines.index("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        end = lines.index("-----END PGP PUBLIC KEY BLOCK-----", start)
    except ValueError:
        raise ValueError("not an ASCII-armored OpenPGP public key block") from None
    block = lines[start + 1:end]
    # Armor headers ("Comment: ...") end at the first empty line, if any.
    if "" in block:
        block = block[block.index("") + 1:]
    body = [line for line in block if line and not line.startswith("=")]
    if not body:
        raise ValueError("the OpenPGP public key block is empty")
    return base64.b64decode("".join(body), validate=True)


def verify_detached(keyring: bytes, signature: bytes, data: bytes) -> str | None:
    """None when `signature` is a good signature of `data` by a key of
    `keyring` (binary), otherwise gpgv's explanation."""
    with tempfile.TemporaryDirectory(prefix="release-signature-") as home:
        paths = {name: os.path.join(home, name) for name in ("keyring.gpg", "data", "data.sig")}
        for name, content in (("keyring.gpg", keyring), ("data", data), ("data.sig", signature)):
            with open(paths[name], "wb") as handle:
                handle.write(content)
        try:
            proc = subprocess.run(
                ["gpgv", "--keyring", paths["keyring.gpg"], paths["data.sig"], paths["data"]],
                capture_output=True, text=True, check=False, timeout=60,
                env={**os.environ, "GNUPGHOME": home, "LC_ALL": "C"})
        except FileNotFoundError:
            return "gpgv is not installed (Debian: package gpgv)"
        if proc.returncode == 0:
            return None
        return " ".join(proc.stderr.split()) or f"gpgv exited with {proc.returncode}"
