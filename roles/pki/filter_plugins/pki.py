"""pki_to_issue: which of a host's certificates need (re)issuing.

Read on the controller with the cryptography library, so that a re-run that
has nothing to issue costs one skipped include instead of three task rounds.
A certificate is (re)issued when its file or key is missing, when it does
not belong to its key, when the CA that signed it is not the current CA, or
when its common name, SANs or extended key usage differ from the request.
Dates are not compared: an existing certificate is kept until pki_reissue,
as before (ignore_timestamps).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

USAGES = {"serverAuth": ExtendedKeyUsageOID.SERVER_AUTH, "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH}


def _sans(names: list[str]) -> set[tuple[str, str]]:
    wanted = set()
    for name in names:
        kind, _, value = name.partition(":")
        if kind == "IP":
            value = str(ipaddress.ip_address(value))
        wanted.add((kind, value))
    return wanted


def _cert_sans(cert: x509.Certificate) -> set[tuple[str, str]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {("DNS", n) for n in ext.get_values_for_type(x509.DNSName)} | \
        {("IP", str(a)) for a in ext.get_values_for_type(x509.IPAddress)}


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _current(spec: dict[str, Any], folder: Path, ca: x509.Certificate | None) -> bool:
    cert_path, key_path = folder / f"{spec['name']}.pem", folder / f"{spec['name']}-key.pem"
    if not cert_path.is_file() or not key_path.is_file() or ca is None:
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if _spki(cert.public_key()) != _spki(key.public_key()):
        return False
    try:
        cert.verify_directly_issued_by(ca)  # issuer name and signature, any key type
    except (ValueError, TypeError, InvalidSignature):
        return False
    common_name = spec.get("common_name") or spec["sans"][0].split(":", 1)[1]
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != common_name:
        return False
    if _cert_sans(cert) != _sans(spec["sans"]):
        return False
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = set()
    return usages == {USAGES[u] for u in spec.get("extended_key_usage", ["serverAuth"])}


def pki_to_issue(certificates: list[dict[str, Any]], folder: str, ca_name: str,
                 reissue: bool = False) -> list[dict[str, Any]]:
    """The entries of certificates that must be (re)issued now."""
    if reissue:
        return list(certificates)
    base = Path(folder)
    ca_path = base / f"{ca_name}.pem"
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes()) if ca_path.is_file() else None
    return [spec for spec in certificates if not _current(spec, base, ca)]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"pki_to_issue": pki_to_issue}
