"""The sandbox's token-signing keys, published like Entra's JWKS: minting and verifying RS256 JWTs.

Keys are RSA certificates whose `kid` equals their SHA-1 `x5t`, as Entra's keys are; rotation keeps old keys.
Besides the shared keys (published with the `{tenantid}` issuer template) a key can belong to one tenant: Entra
publishes such keys with that tenant's GUID issuer, and they sign only for it (protocol §6).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from sandbox.net.pki import CertificateBundle, make_certificate

logger = logging.getLogger(__name__)

_SIGNING_KEY_DAYS = 30


class UnknownSigningKeyError(jwt.InvalidSignatureError):
    """The JWT names a `kid` that the sandbox never published."""


@dataclass(frozen=True)
class SigningKey:
    """One published signing key; `tenant_id` is set for a key that belongs to one tenant's issuer."""

    kid: str
    bundle: CertificateBundle
    tenant_id: str | None = None

    def jwk(self, issuer: str) -> dict[str, Any]:
        """The key as a JWKS entry; Entra adds `issuer` and `cloud_instance_name` (protocol §6)."""
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.bundle.public_key, as_dict=True)
        der = self.bundle.certificate.public_bytes(serialization.Encoding.DER)
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.bundle.sha1_x5t,
            "n": public["n"],
            "e": public["e"],
            "x5c": [base64.b64encode(der).decode("ascii")],  # x5c is standard base64 (RFC 7517 §4.7)
            "cloud_instance_name": "microsoftonline.com",
            "issuer": issuer,
        }


class SigningKeyRing:
    """The current signing key plus every key it replaced, and tenant keys; thread-safe through the caller's lock."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._keys: list[SigningKey] = []  # shared keys, newest first
        self._tenant_keys: list[SigningKey] = []  # newest first
        self.rotate()

    def rotate(self) -> SigningKey:
        """Make a new key current. Older keys stay published so tokens they signed still verify."""
        bundle = make_certificate("sandbox-token-signing", days=_SIGNING_KEY_DAYS)
        key = SigningKey(kid=bundle.sha1_x5t, bundle=bundle)
        with self._lock:
            self._keys.insert(0, key)
        logger.debug("signing key %s is now current", key.kid)
        return key

    def add_tenant_key(self, tenant_id: str) -> SigningKey:
        """Publish a key that belongs to `tenant_id` alone. It never becomes current: only an explicit
        `sign(..., key=...)` uses it.
        """
        bundle = make_certificate(f"sandbox-token-signing-{tenant_id}", days=_SIGNING_KEY_DAYS)
        key = SigningKey(kid=bundle.sha1_x5t, bundle=bundle, tenant_id=tenant_id)
        with self._lock:
            self._tenant_keys.insert(0, key)
        logger.debug("signing key %s published for tenant %s", key.kid, tenant_id)
        return key

    @property
    def current(self) -> SigningKey:
        with self._lock:
            return self._keys[0]

    def published(self) -> list[SigningKey]:
        """All published keys: the shared ones newest first (the current key leads), then the tenant keys."""
        with self._lock:
            return [*self._keys, *self._tenant_keys]

    def find(self, kid: str) -> SigningKey | None:
        with self._lock:
            return next((key for key in (*self._keys, *self._tenant_keys) if key.kid == kid), None)

    def sign(self, claims: Mapping[str, Any], *, key: SigningKey | None = None) -> str:
        """An RS256 JWT over `claims`, with `kid` and `x5t` headers like Entra's tokens; signed by the current
        key unless `key` names another published one.
        """
        key = key or self.current
        return jwt.encode(
            dict(claims),
            key.bundle.private_key,
            algorithm="RS256",
            headers={"typ": "JWT", "kid": key.kid, "x5t": key.bundle.sha1_x5t},
        )

    def verify(self, token: str, *, leeway: float = 0) -> dict[str, Any]:
        """Check the signature and lifetime of a sandbox-issued JWT and return its claims.

        Audience and issuer are left to the caller, which knows which error to report.
        Raises UnknownSigningKeyError, jwt.ExpiredSignatureError or another jwt.InvalidTokenError.
        """
        header = jwt.get_unverified_header(token)
        key = self.find(str(header.get("kid", "")))
        if key is None:
            raise UnknownSigningKeyError(f"no published signing key has kid {header.get('kid')!r}")
        claims: dict[str, Any] = jwt.decode(
            token,
            key.bundle.public_key,
            algorithms=["RS256"],
            leeway=leeway,
            options={"verify_aud": False, "verify_iss": False, "require": ["exp"]},
        )
        return claims
