"""Certificates for the sandbox: its TLS CA and server certificate, app client certificates, PFX export.

RSA 2048 throughout, because azure-identity's CertificateCredential accepts RSA keys only (protocol §2).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Certificates start a little in the past so a client whose clock runs behind still accepts them.
_BACKDATE = dt.timedelta(minutes=5)
_KEY_SIZE = 2048
_PUBLIC_EXPONENT = 65537


def base64url(data: bytes) -> str:
    """Base64url without padding, the encoding JOSE uses for thumbprints (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class CertificateThumbprints:
    """The three ways Entra and MSAL name one certificate."""

    sha1_hex: str  # upper hex, as the portal and keyCredentials show it
    sha1_x5t: str  # JOSE `x5t`, used by RS256 assertions
    sha256_x5t: str  # JOSE `x5t#S256`, used by PS256 assertions (protocol §2)


def certificate_thumbprints(certificate: x509.Certificate) -> CertificateThumbprints:
    """Thumbprints of the DER encoding of `certificate`."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    sha1 = hashlib.sha1(der, usedforsecurity=False).digest()
    sha256 = hashlib.sha256(der).digest()
    return CertificateThumbprints(sha1.hex().upper(), base64url(sha1), base64url(sha256))


@dataclass(frozen=True)
class CertificateBundle:
    """An RSA private key with its certificate, both PEM, plus the thumbprints clients need."""

    key_pem: str  # PKCS#8, unencrypted
    cert_pem: str
    sha1_thumbprint_hex: str
    sha256_x5t: str
    sha1_x5t: str
    not_after: dt.datetime
    not_before: dt.datetime
    subject_cn: str

    @property
    def combined_pem(self) -> str:
        """Key first, then certificate: the layout of a Key Vault PEM certificate secret (protocol §3)."""
        return self.key_pem + self.cert_pem

    # Parsed forms are cached: loading a PEM RSA key runs its consistency checks (tens of milliseconds), and
    # the token-signing keys are read on every token issued or verified.
    @functools.cached_property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.encode("ascii"))

    @functools.cached_property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    @functools.cached_property
    def private_key(self) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.key_pem.encode("ascii"), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError("sandbox bundles hold RSA keys only")
        return key

    @classmethod
    def from_key_and_certificate(cls, key: rsa.RSAPrivateKey, certificate: x509.Certificate) -> CertificateBundle:
        thumbprints = certificate_thumbprints(certificate)
        common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return cls(
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode("ascii"),
            cert_pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            sha1_thumbprint_hex=thumbprints.sha1_hex,
            sha256_x5t=thumbprints.sha256_x5t,
            sha1_x5t=thumbprints.sha1_x5t,
            not_after=certificate.not_valid_after_utc,
            not_before=certificate.not_valid_before_utc,
            subject_cn=str(common_names[0].value) if common_names else "",
        )

    @classmethod
    def from_pem(cls, pem: str | bytes) -> CertificateBundle:
        """Parse a combined PEM (private key and certificate in any order), e.g. a Key Vault secret value.

        Raises ValueError when the text lacks an RSA key or a certificate.
        """
        data = pem.encode("ascii") if isinstance(pem, str) else pem
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the PEM does not hold an RSA private key")
        return cls.from_key_and_certificate(key, x509.load_pem_x509_certificate(data))


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=_PUBLIC_EXPONENT, key_size=_KEY_SIZE)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject_cn: str,
    key: rsa.RSAPrivateKey,
    days: float,
    not_before: dt.datetime | None,
    issuer: CertificateBundle | None,
) -> tuple[x509.CertificateBuilder, rsa.RSAPrivateKey]:
    start = not_before or (dt.datetime.now(dt.UTC) - _BACKDATE)
    signer = issuer.private_key if issuer else key
    issuer_name = issuer.certificate.subject if issuer else _name(subject_cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )
    return builder, signer


def make_certificate(
    subject_cn: str,
    days: float = 365,
    not_before: dt.datetime | None = None,
    issuer: CertificateBundle | None = None,
) -> CertificateBundle:
    """A new RSA 2048 leaf certificate for client authentication; self-signed unless `issuer` is given.

    `not_before` defaults to five minutes ago; pass a past date with small `days` for an expired cert.
    """
    key = _new_key()
    builder, signer = _builder(subject_cn, key, days, not_before, issuer)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=True,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return CertificateBundle.from_key_and_certificate(key, builder.sign(signer, hashes.SHA256()))


def make_certificate_authority(common_name: str, days: float = 3) -> CertificateBundle:
    """A short-lived self-signed CA that only ever signs the sandbox's server certificate."""
    key = _new_key()
    builder, signer = _builder(common_name, key, days, None, None)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    return CertificateBundle.from_key_and_certificate(key, builder.sign(signer, hashes.SHA256()))


def make_server_certificate(
    authority: CertificateBundle, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: float = 3
) -> CertificateBundle:
    """A TLS server certificate for `hosts` (IP addresses and DNS names) signed by `authority`."""
    key = _new_key()
    builder, signer = _builder(hosts[0], key, days, None, authority)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return CertificateBundle.from_key_and_certificate(key, builder.sign(signer, hashes.SHA256()))


def pem_to_pfx(bundle: CertificateBundle, password: bytes | None = None) -> bytes:
    """PKCS#12 holding the bundle's key and certificate.

    Key Vault exports certificate secrets as PFX with an empty password (protocol §3), hence the default.
    """
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return pkcs12.serialize_key_and_certificates(
        name=bundle.subject_cn.encode("utf-8") or None,
        key=bundle.private_key,
        cert=bundle.certificate,
        cas=None,
        encryption_algorithm=encryption,
    )
