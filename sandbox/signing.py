"""The sandbox's token-signing keys, published like Entra's JWKS: minting and verifying RS256 JWTs.

Keys are RSA certificates whose `kid` equals their SHA-1 `x5t`, as Entra's keys are; rotation keeps old keys.
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

from sandbox.pki import CertificateBundle, make_certificate

logger = logging.getLogger(__name__)

_SIGNING_KEY_DAYS = 30


class UnknownSigningKeyError(jwt.InvalidSignatureError):
    """The JWT names a `kid` that the sandbox never published."""


@dataclass(frozen=True)
class SigningKey:
    """One published signing key."""

    kid: str
    bundle: CertificateBundle

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
    """The current signing key plus every key it replaced; thread-safe through the caller's lock."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._keys: list[SigningKey] = []  # newest first
        self.rotate()

    def rotate(self) -> SigningKey:
        """Make a new key current. Older keys stay published so tokens they signed still verify."""
        bundle = make_certificate("sandbox-token-signing", days=_SIGNING_KEY_DAYS)
        key = SigningKey(kid=bundle.sha1_x5t, bundle=bundle)
        with self._lock:
            self._keys.insert(0, key)
        logger.debug("signing key %s is now current", key.kid)
        return key

    @property
    def current(self) -> SigningKey:
        with self._lock:
            return self._keys[0]

    def published(self) -> list[SigningKey]:
        """All published keys, newest first."""
        with self._lock:
            return list(self._keys)

    def find(self, kid: str) -> SigningKey | None:
        with self._lock:
            return next((key for key in self._keys if key.kid == kid), None)

    def sign(self, claims: Mapping[str, Any]) -> str:
        """An RS256 JWT over `claims`, with `kid` and `x5t` headers like Entra's tokens."""
        key = self.current
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
