"""Issuer strings of the sandbox's Entra (protocol §6): the v2 issuer `{authority_host}/{tid}/v2.0`, the v1 issuer
`{authority_host}/{tid}/` (standing in for `https://sts.windows.net/{tid}/`, so one host serves the tokens and the
metadata that validates them) and the `{tenantid}` template that multi-tenant metadata and JWKS keys carry.
"""

from __future__ import annotations

TENANT_TEMPLATE = "{tenantid}"
TOKEN_VERSIONS = ("1.0", "2.0")


def v2_issuer(authority_host: str, tenant: str) -> str:
    """`tenant` is a tenant GUID, or TENANT_TEMPLATE for the multi-tenant template."""
    return f"{authority_host.rstrip('/')}/{tenant}/v2.0"


def v1_issuer(authority_host: str, tenant: str) -> str:
    return f"{authority_host.rstrip('/')}/{tenant}/"


def issuer(authority_host: str, tenant: str, version: str) -> str:
    """The issuer of a `version` ("1.0" or "2.0") token. Raises ValueError for another version."""
    if version == "2.0":
        return v2_issuer(authority_host, tenant)
    if version == "1.0":
        return v1_issuer(authority_host, tenant)
    raise ValueError(f"token version must be one of {TOKEN_VERSIONS}, not {version!r}")
