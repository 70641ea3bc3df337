"""The client certificate: parsing PEM and PKCS#12 content into a key, a leaf certificate and its thumbprints.

Key Vault keeps a certificate's private key in the certificate's backing secret, as PEM (key then certificates)
or as base64 passwordless PFX (azdocs: key-vault/certificates/about-certificates). Both land here.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from shared.errors import CertificateError

PEM_CONTENT_TYPE = "application/x-pem-file"
PKCS12_CONTENT_TYPE = "application/x-pkcs12"

# Matches PKCS#8 ("PRIVATE KEY"), PKCS#1 ("RSA PRIVATE KEY") and encrypted PKCS#8 blocks.
_PRIVATE_KEY_BLOCK = re.compile(rb"-----BEGIN ((?:RSA |ENCRYPTED )?PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class ClientCertificate:
    """A private key with its certificate chain (leaf first). ``repr`` never shows key material."""

    private_key: rsa.RSAPrivateKey = field(repr=False)
    certificate: x509.Certificate = field(repr=False)
    chain: tuple[x509.Certificate, ...] = field(repr=False)
    source: str
    version: str | None = None

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def sha1_thumbprint(self) -> str:
        """Upper-case hex SHA-1 thumbprint, as the Entra portal and Key Vault show it."""
        return self.certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - an identifier, not security

    @property
    def sha256_thumbprint(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex().upper()

    @property
    def x5t_s256(self) -> str:
        """``x5t#S256`` header value: base64url SHA-256 of the DER (entra: certificate-credentials)."""
        return _b64url(hashlib.sha256(self.der).digest())

    @property
    def x5c(self) -> list[str]:
        """``x5c`` header value: standard base64 DER, leaf first (RFC 7515 §4.1.6)."""
        return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode("ascii") for c in self.chain]

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def days_left(self, now: datetime | None = None) -> float:
        current = now or datetime.now(UTC)
        return (self.not_after - current).total_seconds() / 86400

    def describe(self) -> dict[str, object]:
        """Non-secret facts for operators: never the key."""
        return {
            "source": self.source,
            "version": self.version,
            "subject": self.subject,
            "sha1_thumbprint": self.sha1_thumbprint,
            "sha256_thumbprint": self.sha256_thumbprint,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "days_left": round(self.days_left(), 1),
        }


def parse_pem(
    content: str | bytes, *, source: str, version: str | None = None, password: bytes | None = None
) -> ClientCertificate:
    """Parse PEM holding one private key and one or more certificates, in any order.

    Raises CertificateError when the key or a certificate is missing, or the key does not match the leaf.
    """
    data = content.encode("ascii") if isinstance(content, str) else content
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"The {source} certificate has no readable PEM certificate.", source=source) from exc
    match = _PRIVATE_KEY_BLOCK.search(data)
    key = None
    if match:
        try:
            key = serialization.load_pem_private_key(match.group(0), password=password)
        except (ValueError, TypeError) as exc:
            raise CertificateError(
                f"The {source} certificate's private key cannot be read (wrong or missing password?).",
                source=source,
            ) from exc
    if key is None:
        raise CertificateError(
            f"The {source} certificate holds no private key: the Key Vault certificate policy must mark the key "
            "exportable, and a file must contain the key.",
            source=source,
        )
    return _assemble(key, certificates, source=source, version=version)


def parse_pkcs12(
    data: bytes, *, source: str, version: str | None = None, password: bytes | None = None
) -> ClientCertificate:
    """Parse a PFX. Key Vault's are passwordless; files may carry a password."""
    try:
        key, leaf, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError as exc:
        raise CertificateError(
            f"The {source} PFX cannot be read (corrupt, or wrong or missing password).", source=source
        ) from exc
    if key is None or leaf is None:
        raise CertificateError(f"The {source} PFX must hold a private key and its certificate.", source=source)
    return _assemble(key, [leaf, *extra], source=source, version=version)


def _assemble(
    key: object, certificates: list[x509.Certificate], *, source: str, version: str | None
) -> ClientCertificate:
    if not isinstance(key, rsa.RSAPrivateKey):
        # Entra client assertions use RS256/PS256; azure-identity also supports RSA keys only.
        raise CertificateError(f"The {source} certificate's key must be RSA.", source=source)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    public_der = key.public_key().public_bytes(serialization.Encoding.DER, spki)
    leaf = next(
        (c for c in certificates if c.public_key().public_bytes(serialization.Encoding.DER, spki) == public_der),
        None,
    )
    if leaf is None:
        raise CertificateError(f"The {source} content has no certificate matching its private key.", source=source)
    # Send the leaf first: a chain in the wrong order makes Entra answer AADSTS700027 (protocol.md §2).
    chain = (leaf, *(c for c in certificates if c is not leaf))
    return ClientCertificate(private_key=key, certificate=leaf, chain=chain, source=source, version=version)
