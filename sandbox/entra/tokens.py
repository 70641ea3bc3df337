"""Claims of the access tokens the sandbox issues: v1 app-only tokens and managed identity tokens.

Issuers come from sandbox.entra.issuers (v1 `{authority_host}/{tid}/` stands in for `https://sts.windows.net/{tid}/`);
delegated user tokens are built in sandbox.entra.user_tokens.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sandbox.entra import issuers
from sandbox.entra.directory import TOKEN_EXCHANGE_AUDIENCE, ManagedIdentity
from sandbox.entra.signing import SigningKeyRing
from sandbox.net.pki import base64url

APP_TOKEN_LIFETIME = 3599  # protocol §2: expires_in 3599 in Entra's sample response
MANAGED_IDENTITY_TOKEN_LIFETIME = 86399  # App Service hands out managed identity tokens for about 24 h
# Entra back-dates iat/nbf by five minutes to tolerate clock skew at the resource.
_BACKDATE_SECONDS = 300


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    expires_on: int
    not_before: int
    claims: dict[str, Any]


class TokenMinter:
    """Builds and signs tokens for one authority host."""

    def __init__(self, keys: SigningKeyRing, authority_host: str) -> None:
        self._keys = keys
        self._host = authority_host.rstrip("/")

    def v1_issuer(self, tenant_id: str) -> str:
        return issuers.v1_issuer(self._host, tenant_id)

    def v2_issuer(self, tenant_id: str) -> str:
        return issuers.v2_issuer(self._host, tenant_id)

    def app_token(self, *, tenant_id: str, client_id: str, object_id: str, resource: str) -> IssuedToken:
        """A v1 app-only token, as Entra issues for client credentials against a v1 resource."""
        return self._issue(
            {
                "aud": resource,
                "iss": self.v1_issuer(tenant_id),
                "idp": self.v1_issuer(tenant_id),
                "appid": client_id,
                "appidacr": "2",  # 2 = certificate or federated assertion; 1 would be a secret
                "azp": client_id,
                "azpacr": "2",
                "idtyp": "app",
                "oid": object_id,
                "sub": object_id,
                "tid": tenant_id,
                "ver": "1.0",
            },
            APP_TOKEN_LIFETIME,
        )

    def managed_identity_token(self, identity: ManagedIdentity, resource: str) -> IssuedToken:
        """A managed identity token. For the token-exchange audience Entra issues a v2 token whose
        issuer and subject are what a federated identity credential matches on (protocol §2).
        """
        if resource.rstrip("/") == TOKEN_EXCHANGE_AUDIENCE:
            claims = {
                "aud": TOKEN_EXCHANGE_AUDIENCE,
                "iss": self.v2_issuer(identity.tenant_id),
                "azp": identity.client_id,
                "azpacr": "2",
                "oid": identity.principal_id,
                "sub": identity.principal_id,
                "tid": identity.tenant_id,
                "xms_mirid": identity.resource_id,
                "ver": "2.0",
            }
        else:
            claims = {
                "aud": resource,
                "iss": self.v1_issuer(identity.tenant_id),
                "idp": self.v1_issuer(identity.tenant_id),
                "appid": identity.client_id,
                "appidacr": "2",
                "idtyp": "app",
                "oid": identity.principal_id,
                "sub": identity.principal_id,
                "tid": identity.tenant_id,
                "xms_mirid": identity.resource_id,
                "ver": "1.0",
            }
        return self._issue(claims, MANAGED_IDENTITY_TOKEN_LIFETIME)

    def _issue(self, claims: dict[str, Any], lifetime: int) -> IssuedToken:
        now = int(time.time())
        full = {
            **claims,
            "iat": now - _BACKDATE_SECONDS,
            "nbf": now - _BACKDATE_SECONDS,
            "exp": now + lifetime,
            "aio": base64url(secrets.token_bytes(24)),
            "rh": base64url(secrets.token_bytes(24)),
            "uti": base64url(uuid.uuid4().bytes),
        }
        return IssuedToken(
            access_token=self._keys.sign(full),
            expires_in=lifetime,
            expires_on=now + lifetime,
            not_before=now - _BACKDATE_SECONDS,
            claims=full,
        )
