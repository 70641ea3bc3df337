"""Client authentication at the token endpoint: certificate-signed assertions (RS256 + x5t, PS256 + x5t#S256)
and federated assertions (a sandbox managed identity token matched against the app's federated credentials).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.types import Options

from sandbox.entra import errors as entra_errors
from sandbox.entra.directory import Application, RegisteredCertificate
from sandbox.entra.signing import SigningKeyRing

logger = logging.getLogger(__name__)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_SKEW_SECONDS = 300
_ALGORITHMS = ("RS256", "PS256")  # what MSAL emits (protocol §2); Entra refuses others
_SIGNATURE_ONLY: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}


@dataclass(frozen=True)
class ValidatedAssertion:
    kind: Literal["certificate", "federated"]
    jti: str | None
    expires: float
    algorithm: str
    thumbprint_header: str | None = None  # "x5t#S256" or "x5t" for certificate assertions


def _audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [str(a) for a in aud]
    return []


def _hex_thumbprint(x5t: str) -> str:
    try:
        return base64.urlsafe_b64decode(x5t + "=" * (-len(x5t) % 4)).hex().upper()
    except ValueError:
        return x5t


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


class ClientAssertionValidator:
    """Checks a `client_assertion` for one app at one tenant's token endpoint; raises EntraError."""

    def __init__(self, keys: SigningKeyRing) -> None:
        self._keys = keys

    def validate(self, assertion: str, app: Application, token_endpoints: Collection[str]) -> ValidatedAssertion:
        try:
            header = jwt.get_unverified_header(assertion)
            claims: dict[str, Any] = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise entra_errors.malformed_assertion() from exc
        client_id = app.client_id.lower()
        # Entra tells the two kinds apart by the claims: a certificate assertion is issued by the app itself,
        # a federated one by an external issuer about some other subject.
        if str(claims.get("iss", "")).lower() == client_id or str(claims.get("sub", "")).lower() == client_id:
            return self._certificate_assertion(assertion, header, claims, app, token_endpoints)
        return self._federated_assertion(assertion, claims, app)

    def _certificate_assertion(
        self,
        assertion: str,
        header: dict[str, Any],
        claims: dict[str, Any],
        app: Application,
        token_endpoints: Collection[str],
    ) -> ValidatedAssertion:
        algorithm = str(header.get("alg"))
        if algorithm not in _ALGORITHMS:
            raise entra_errors.unsupported_algorithm(algorithm)
        registered = self._find_certificate(header, app)
        now = time.time()
        if not registered.not_before.timestamp() <= now <= registered.not_after.timestamp():
            raise entra_errors.certificate_not_registered(
                app.client_id, registered.sha1_thumbprint_hex, reason="The key used is expired."
            )
        public_key = registered.certificate.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):  # RS256 and PS256 need an RSA key
            raise entra_errors.certificate_not_registered(
                app.client_id, registered.sha1_thumbprint_hex, reason="The key is not an RSA key."
            )
        try:
            jwt.decode(
                assertion,
                public_key,
                algorithms=[algorithm],
                options=_SIGNATURE_ONLY,
            )
        except jwt.InvalidSignatureError as exc:
            raise entra_errors.signature_invalid(
                registered.sha1_thumbprint_hex,
                registered.not_before.timestamp(),
                registered.not_after.timestamp(),
            ) from exc
        except jwt.InvalidTokenError as exc:
            raise entra_errors.malformed_assertion() from exc
        client_id = app.client_id.lower()
        if str(claims.get("iss", "")).lower() != client_id or str(claims.get("sub", "")).lower() != client_id:
            raise entra_errors.assertion_issuer_mismatch()
        accepted = {endpoint.lower() for endpoint in token_endpoints}
        if not any(aud.lower() in accepted for aud in _audiences(claims)):
            raise entra_errors.assertion_audience_mismatch()
        expires = self._check_time_range(claims, now)
        jti = claims.get("jti")
        return ValidatedAssertion(
            "certificate",
            str(jti) if jti is not None else None,
            expires,
            algorithm,
            "x5t#S256" if "x5t#S256" in header else "x5t",
        )

    @staticmethod
    def _find_certificate(header: dict[str, Any], app: Application) -> RegisteredCertificate:
        # MSAL keeps the base64 padding on thumbprints (RFC 7515 says none); compare without it.
        if "x5t#S256" in header:
            x5t = str(header["x5t#S256"]).rstrip("=")
            found = next((c for c in app.certificates if c.sha256_x5t == x5t), None)
        elif "x5t" in header:
            x5t = str(header["x5t"]).rstrip("=")
            found = next((c for c in app.certificates if c.sha1_x5t == x5t), None)
        else:
            raise entra_errors.certificate_not_registered(
                app.client_id, "", reason="The assertion header names no certificate (x5t or x5t#S256)."
            )
        if found is None:
            raise entra_errors.certificate_not_registered(app.client_id, _hex_thumbprint(x5t))
        return found

    @staticmethod
    def _check_time_range(claims: dict[str, Any], now: float) -> float:
        expires = _number(claims.get("exp"))
        not_before = _number(claims.get("nbf"))
        if expires is None or now > expires + CLOCK_SKEW_SECONDS:
            raise entra_errors.assertion_out_of_time_range(now, not_before, expires)
        if not_before is not None and not_before > now + CLOCK_SKEW_SECONDS:
            raise entra_errors.assertion_out_of_time_range(now, not_before, expires)
        return expires

    def _federated_assertion(self, assertion: str, claims: dict[str, Any], app: Application) -> ValidatedAssertion:
        issuer = str(claims.get("iss", ""))
        subject = str(claims.get("sub", ""))
        audiences = _audiences(claims)
        # Entra matches the federated credential first, then validates the token with the issuer's keys.
        matched = any(
            fic.issuer == issuer and fic.subject == subject and any(a in fic.audiences for a in audiences)
            for fic in app.federated_credentials
        )
        if not matched:
            raise entra_errors.no_matching_federated_credential(issuer, subject, ",".join(audiences))
        now = time.time()
        try:
            verified = self._keys.verify(assertion, leeway=CLOCK_SKEW_SECONDS)
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError) as exc:
            raise entra_errors.assertion_out_of_time_range(
                now, _number(claims.get("nbf")), _number(claims.get("exp"))
            ) from exc
        except jwt.InvalidSignatureError as exc:
            raise entra_errors.assertion_signature_failed() from exc
        except jwt.InvalidTokenError as exc:
            raise entra_errors.malformed_assertion() from exc
        jti = verified.get("uti") or verified.get("jti")
        return ValidatedAssertion("federated", str(jti) if jti else None, float(verified["exp"]), "RS256")
