"""Delegated access tokens: what Entra issues to a signed-in user of a customer tenant for our app's API, with the
v1 and v2 claim sets of entra/access-tokens.md (protocol §6). Issuers, built in sandbox.entra.issuers:

- v2 (`ver` "2.0"): `iss` = `{authority_host}/{tid}/v2.0`, as `https://login.microsoftonline.com/{tid}/v2.0`;
- v1 (`ver` "1.0"): `iss` = `{authority_host}/{tid}/`, the sandbox's stand-in for `https://sts.windows.net/{tid}/`.

A validator substitutes the token's `tid` into `{authority_host}/{tenantid}/v2.0` (or `{authority_host}/{tenantid}/`
for v1): the template in the common metadata and in the `issuer` of every shared JWKS key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sandbox.net.pki import base64url


@dataclass(frozen=True)
class SandboxUser:
    """A member of a tenant's directory who signs in to our app."""

    object_id: str
    tenant_id: str
    display_name: str
    upn: str
    directory_roles: tuple[str, ...] = ()  # role template ids, as the `wids` claim lists them


def default_upn(display_name: str, object_id: str, domain: str) -> str:
    """`ada.lovelace@<domain>` from the display name (or `user-<oid prefix>` when nothing usable is left)."""
    local = re.sub(r"[^a-z0-9._-]", "", re.sub(r"\s+", ".", display_name.strip().lower())).strip(".")
    return f"{local or 'user-' + object_id[:8]}@{domain}"


def pairwise_subject(secret: bytes, user: SandboxUser, audience: str) -> str:
    """`sub`: opaque and pairwise, one value per user and token recipient (entra/access-tokens.md), so it is
    only unique within a tenant and an app must key its data on `tid` + `oid` instead.
    """
    message = f"{user.tenant_id}|{user.object_id}|{audience}".encode()
    return base64url(hmac.new(secret, message, hashlib.sha256).digest())


def user_token_claims(
    user: SandboxUser,
    *,
    issuer: str,
    version: str,
    audience: str,
    subject: str,
    client_id: str,
    scopes: tuple[str, ...],
    roles: tuple[str, ...],
    issued_at: int,
    not_before: int,
    expires: int,
) -> dict[str, Any]:
    """The claims of a delegated access token; `scp` only when there are scopes, `roles` only when given.

    v2 names the client `azp` and the user `preferred_username`; v1 names them `appid` and `upn`/`unique_name`.
    Both authenticate a public client (`azpacr`/`appidacr` "0") with a password (`amr` in v1).
    """
    claims: dict[str, Any] = {
        "aud": audience,
        "iss": issuer,
        "iat": issued_at,
        "nbf": not_before,
        "exp": expires,
        "aio": base64url(secrets.token_bytes(48)),
        "name": user.display_name,
        "oid": user.object_id,
        "rh": base64url(secrets.token_bytes(24)),
        "sub": subject,
        "tid": user.tenant_id,
        "uti": base64url(uuid.uuid4().bytes),
        "ver": version,
    }
    if version == "2.0":
        claims |= {"azp": client_id, "azpacr": "0", "preferred_username": user.upn}
    else:
        claims |= {
            "acr": "1",
            "amr": ["pwd"],
            "appid": client_id,
            "appidacr": "0",
            "unique_name": user.upn,
            "upn": user.upn,
        }
    if scopes:
        claims["scp"] = " ".join(scopes)
    if roles:
        claims["roles"] = list(roles)
    return claims


def id_token_claims(
    user: SandboxUser,
    *,
    issuer: str,
    client_id: str,
    subject: str,
    nonce: str | None,
    issued_at: int,
    expires: int,
    include_wids: bool,
) -> dict[str, Any]:
    """A v2 ID token (entra/id-token-claims-reference.md): audience our client id, the request's `nonce`,
    `tid`/`oid` for who signed in and where, `preferred_username`/`name` to show; `wids` (directory role template
    ids) only when the app registration asks for that optional claim.
    """
    claims: dict[str, Any] = {
        "aud": client_id,
        "iss": issuer,
        "iat": issued_at,
        "nbf": issued_at,
        "exp": expires,
        "aio": base64url(secrets.token_bytes(48)),
        "name": user.display_name,
        "oid": user.object_id,
        "preferred_username": user.upn,
        "rh": base64url(secrets.token_bytes(24)),
        "sub": subject,
        "tid": user.tenant_id,
        "uti": base64url(uuid.uuid4().bytes),
        "ver": "2.0",
    }
    if nonce is not None:
        claims["nonce"] = nonce
    if include_wids and user.directory_roles:
        claims["wids"] = list(user.directory_roles)
    return claims
