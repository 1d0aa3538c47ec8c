"""Client-certificate facts for the SMT certificate lifecycle.

SMT registers one client certificate per account and rejects wildcard subjects; a
Let's Encrypt certificate is renewed every ~60 days.  :func:`inspect` reports what the
seed's ``openssl x509 -checkend`` script checked, and more: expiry, a specific domain,
whether the key matches, and the SHA-256 fingerprint that identifies "a new certificate".
:func:`rotate` copies the current pair over the previous one atomically (keys 0600).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from .errors import ConfigError


@dataclass
class CertInfo:
    path: str
    subject: str
    names: list[str]
    not_before: str
    not_after: str
    seconds_left: float
    expires_soon: bool
    wildcard: bool
    key_matches: bool | None
    fingerprint: str

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def problems(self) -> list[str]:
        out = []
        if self.seconds_left <= 0:
            out.append("expired")
        elif self.expires_soon:
            out.append(f"expires in {self.seconds_left / 86400:.1f} days")
        if self.wildcard:
            out.append("wildcard subject (SMT needs a specific domain)")
        if self.key_matches is False:
            out.append("the private key does not match the certificate")
        return out


def _read(path: str | os.PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None


def load_leaf(path: str | os.PathLike):
    from cryptography import x509

    data = _read(path, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate") from None
    if not certs:
        raise ConfigError(f"{path} holds no certificate")
    return certs[0]  # fullchain.pem: the leaf comes first


def fingerprint(path: str | os.PathLike) -> str:
    from cryptography.hazmat.primitives import hashes

    return load_leaf(path).fingerprint(hashes.SHA256()).hex()


def inspect(cert_path: str | os.PathLike, key_path: str | os.PathLike | None = None, *,
            within_days: float = 1.0, now: float | None = None) -> CertInfo:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    cert = load_leaf(cert_path)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    cn = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    names = list(dict.fromkeys([*cn, *names]))
    key_matches = None
    if key_path is not None:
        try:
            key = serialization.load_pem_private_key(_read(key_path, "private key"), password=None)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{key_path} is not a readable unencrypted PEM private key ({e})") from None
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        enc = serialization.Encoding.DER
        key_matches = key.public_key().public_bytes(enc, pub) == cert.public_key().public_bytes(enc, pub)
    now_dt = datetime.fromtimestamp(now, UTC) if now is not None else datetime.now(UTC)
    left = (cert.not_valid_after_utc - now_dt).total_seconds()
    return CertInfo(
        path=str(cert_path),
        subject=cert.subject.rfc4514_string(),
        names=names,
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        seconds_left=left,
        expires_soon=left < within_days * 86400,
        wildcard=any(n.startswith("*.") for n in names),
        key_matches=key_matches,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
    )


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike, mode: int) -> None:
    """Copy with a temp file in the destination directory, fsync and rename."""
    data = _read(src, "file")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dst.name, suffix=".tmp", dir=dst.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rotate(current_cert, current_key, previous_cert, previous_key) -> None:
    """Make the current pair the previous one (certificate 0644, key 0600)."""
    atomic_copy(current_key, previous_key, 0o600)
    atomic_copy(current_cert, previous_cert, 0o644)
