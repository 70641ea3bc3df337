"""Validating the bearer tokens Entra ID issues to the app's own signed-in users (OpenID Connect), on PyJWT.

The rules (protocol.md §6, entra: access-tokens): only RS256; the signing key chosen by ``kid`` from the
authority's JWKS (cached, refetched on an unknown ``kid`` at most once per interval); ``iss`` must equal the v2 or
v1 issuer template with the token's own GUID ``tid`` substituted; a key published with a tenant-specific issuer
signs only for that tenant; ``aud`` is our client id or App ID URI; ``exp``/``nbf`` with a small skew; the
required scope (delegated) or app role present.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from shared.errors import S2SError
from shared.settings import is_guid

logger = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 16 * 1024


class InvalidUserTokenError(S2SError):
    """401: the bearer token is missing, malformed, or fails a check; ``message`` says which, without echoing it."""

    code = "invalid_token"


class TenantNotActiveError(S2SError):
    """403: a valid token, but its tenant is not an active onboarded tenant of this app."""

    code = "tenant_not_active"


@dataclass(frozen=True)
class UserPrincipal:
    tenant_id: str
    object_id: str
    name: str | None
    username: str | None
    scopes: tuple[str, ...]
    roles: tuple[str, ...]
    token_version: str


class JwksCache:
    """The authority's signing keys by ``kid``. Refreshed every ``refresh_seconds``; an unknown ``kid`` triggers a
    refetch at most once per ``min_refetch_seconds``, so a flood of made-up kids cannot hammer the authority.

    A known key never waits on the network: lookups read the current key set without a lock (it is replaced
    whole, never changed in place), and the periodic refresh runs on a background thread while the old keys keep
    answering. Only a caller whose ``kid`` is unknown waits, and only for the fetch that may bring its key.
    """

    def __init__(
        self,
        fetch: Callable[[], dict[str, Any]],
        *,
        refresh_seconds: float = 24 * 3600,
        min_refetch_seconds: float = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._refresh = refresh_seconds
        self._min_refetch = min_refetch_seconds
        self._clock = clock
        # Held only around a fetch; lookups of known keys never take it.
        self._fetch_lock = threading.Lock()
        self._keys: dict[str, tuple[Any, str | None]] = {}
        self._fetched_at = float("-inf")
        self.fetches = 0

    def key(self, kid: str) -> tuple[Any, str | None] | None:
        """(public key, the key's ``issuer`` or None) or None when no such key exists."""
        keys = self._keys
        known = keys.get(kid)
        if known is not None:
            if self._clock() - self._fetched_at >= self._refresh:
                self._refresh_in_background()
            return known
        with self._fetch_lock:
            if (found := self._keys.get(kid)) is not None:  # a fetch that finished meanwhile brought it
                return found
            now = self._clock()
            if now - self._fetched_at >= self._min_refetch:
                self._load(now)
            return self._keys.get(kid)

    def _refresh_in_background(self) -> None:
        if not self._fetch_lock.acquire(blocking=False):
            return  # a fetch is already under way
        try:
            thread = threading.Thread(target=self._refresh_holding_lock, name="jwks-refresh", daemon=True)
            thread.start()
        except BaseException:
            self._fetch_lock.release()
            raise

    def _refresh_holding_lock(self) -> None:
        try:
            now = self._clock()
            if now - self._fetched_at >= self._refresh:
                self._load(now)
        finally:
            self._fetch_lock.release()

    def _load(self, now: float) -> None:
        """Fetch and replace the key set; the caller holds ``_fetch_lock``."""
        try:
            document = self._fetch()
        except Exception:  # keep the keys we have: an outage must not reject valid tokens
            logger.warning("Could not refresh the signing keys; keeping %d cached", len(self._keys), exc_info=True)
            self._fetched_at = now
            return
        keys: dict[str, tuple[Any, str | None]] = {}
        for jwk in document.get("keys", []):
            if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or "kid" not in jwk:
                continue
            try:
                keys[str(jwk["kid"])] = (jwt.PyJWK(jwk, algorithm="RS256").key, jwk.get("issuer"))
            except (jwt.PyJWKError, ValueError, TypeError):
                continue
        self._keys = keys
        self._fetched_at = now
        self.fetches += 1


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header. The scheme is matched case-insensitively and may
    be followed by several spaces. RFC 7235 section 2.1: the framework "uses a case-insensitive token as a means to
    identify the authentication scheme", and ``credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]``.
    Raises InvalidUserTokenError."""
    scheme, _, rest = (authorization or "").partition(" ")
    token = rest.strip(" ")
    if scheme.lower() != "bearer" or not token:
        raise InvalidUserTokenError("A bearer token is required.")
    return token


class UserTokenValidator:
    def __init__(
        self,
        *,
        jwks: JwksCache,
        v2_issuer_template: str,
        v1_issuer_template: str,
        audiences: tuple[str, ...],
        required_scope: str | None,
        required_role: str | None = None,
        leeway_seconds: int = 120,
    ) -> None:
        self._jwks = jwks
        self._v2 = v2_issuer_template
        self._v1 = v1_issuer_template
        self._audiences = list(audiences)
        self._scope = required_scope
        self._role = required_role
        self._leeway = leeway_seconds

    def validate(self, authorization: str | None) -> UserPrincipal:
        """Raises InvalidUserTokenError naming the failed check."""
        token = bearer_token(authorization)
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidUserTokenError("The token is too large.")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        # InvalidTokenError, not just DecodeError: PyJWT also checks header fields (a non-string kid, a malformed
        # crit) while reading the unverified header.
        except (jwt.InvalidTokenError, json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise InvalidUserTokenError("The token is not a well-formed JWT.") from exc
        if header.get("alg") != "RS256":
            raise InvalidUserTokenError("The token's algorithm is not allowed.")
        kid = header.get("kid")
        tid = unverified.get("tid")
        if not isinstance(kid, str) or not kid or len(kid) > 200:
            raise InvalidUserTokenError("The token names no signing key.")
        if not isinstance(tid, str) or not is_guid(tid):
            raise InvalidUserTokenError("The token has no valid tenant id (tid).")
        version = unverified.get("ver")
        template = self._v1 if version == "1.0" else self._v2
        expected_issuer = template.replace("{tenantid}", tid)
        found = self._jwks.key(kid)
        if found is None:
            raise InvalidUserTokenError("The token is signed by an unknown key.")
        key, key_issuer = found
        if key_issuer and key_issuer.replace("{tenantid}", tid) != self._v2.replace("{tenantid}", tid):
            # A key published for one tenant's issuer must not vouch for tokens of another tenant.
            raise InvalidUserTokenError("The token is signed by a key that does not belong to its issuer.")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self._audiences,
                issuer=expected_issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "tid"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidUserTokenError("The token has expired.") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidUserTokenError("The token is not valid yet.") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidUserTokenError("The token is not for this application (audience).") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidUserTokenError("The token's issuer does not match its tenant.") from exc
        except jwt.InvalidTokenError as exc:
            raise InvalidUserTokenError("The token's signature or claims are not valid.") from exc
        scopes = tuple(str(claims.get("scp", "")).split())
        raw_roles = claims.get("roles", [])
        roles = tuple(r for r in raw_roles if isinstance(r, str)) if isinstance(raw_roles, list) else ()
        if not ((self._scope and self._scope in scopes) or (self._role and self._role in roles)):
            raise InvalidUserTokenError("The token lacks the required scope or app role.")
        oid = claims.get("oid")
        if not isinstance(oid, str) or not is_guid(oid):
            raise InvalidUserTokenError("The token has no user object id (oid).")
        return UserPrincipal(
            tenant_id=tid.lower(),
            object_id=oid.lower(),
            name=_text(claims.get("name")),
            username=_text(claims.get("preferred_username") or claims.get("upn") or claims.get("unique_name")),
            scopes=scopes,
            roles=roles,
            token_version=str(version or "2.0"),
        )


def _text(value: Any) -> str | None:
    """A display claim as text, or None when the claim is missing or not a string."""
    return value if isinstance(value, str) else None
