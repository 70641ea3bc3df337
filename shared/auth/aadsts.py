"""What the AADSTS codes the app can meet mean, and what an operator does about each.

Entra documents that codes and texts may change (entra: reference-error-codes), so unknown codes fall back to
Entra's own ``error`` value; callers act on ``category``, never on the text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_CODE_IN_TEXT = re.compile(r"AADSTS(\d+)")


@dataclass(frozen=True)
class AadstsInfo:
    category: str
    meaning: str
    fix: str
    # A rejection of our credential: re-reading the certificate (it may have rotated) can cure it.
    credential_rejected: bool = False
    is_transient: bool = False


CONSENT_MISSING = "consent_missing"
CONSENT_REQUIRED = "consent_required"
CREDENTIAL_REJECTED = "credential_rejected"
ASSERTION_TIME = "assertion_time"
TENANT_NOT_FOUND = "tenant_not_found"
APP_DISABLED = "app_disabled"
BAD_REQUEST = "bad_request"
SERVICE_UNAVAILABLE = "service_unavailable"
UNKNOWN = "unknown"

CATALOG: dict[int, AadstsInfo] = {
    700016: AadstsInfo(
        CONSENT_MISSING,
        "The application has no service principal in this tenant: its administrator never consented, or "
        "removed the app.",
        "Ask the tenant's administrator to grant admin consent again (onboarding page), then retry.",
    ),
    65001: AadstsInfo(
        CONSENT_REQUIRED,
        "The tenant has not consented (or withdrew consent) for the permissions the app asks for.",
        "Ask the tenant's administrator to grant admin consent again (onboarding page).",
    ),
    700027: AadstsInfo(
        CREDENTIAL_REJECTED,
        "The certificate that signed the client assertion is not registered on the application, or the "
        "assertion failed signature validation.",
        "Upload the current certificate (Key Vault's latest version) to the app registration's certificates; "
        "keep the old one until every worker has rotated.",
        credential_rejected=True,
    ),
    7000274: AadstsInfo(
        CREDENTIAL_REJECTED,
        "The client assertion's signature could not be verified with the registered certificate.",
        "Check that the private key in Key Vault matches the certificate registered on the app.",
        credential_rejected=True,
    ),
    7000215: AadstsInfo(
        CREDENTIAL_REJECTED,
        "Entra rejected the client credential.",
        "Check the credential configured for the app registration.",
        credential_rejected=True,
    ),
    70021: AadstsInfo(
        CREDENTIAL_REJECTED,
        "No federated identity credential on the app matches the managed identity's token.",
        "Add a federated credential to the app with issuer https://login.microsoftonline.com/<tenant>/v2.0, "
        "subject = the managed identity's principal id, audience api://AzureADTokenExchange.",
        credential_rejected=True,
    ),
    700024: AadstsInfo(
        ASSERTION_TIME,
        "The client assertion is not within its valid time range (the worker's clock or the assertion's "
        "nbf/exp is off).",
        "Check the worker's clock; assertions are signed fresh for each request.",
        credential_rejected=True,
    ),
    90002: AadstsInfo(
        TENANT_NOT_FOUND,
        "The tenant does not exist in this cloud (wrong id, deleted tenant, or another sovereign cloud).",
        "Check the tenant id and AZURE_CLOUD; offboard the tenant if it was deleted.",
    ),
    7000112: AadstsInfo(
        APP_DISABLED,
        "The application is disabled (in the publisher tenant or by the customer's administrator).",
        "Re-enable the application or its service principal in Entra ID.",
    ),
    1002012: AadstsInfo(
        BAD_REQUEST,
        "The scope is not valid for the client credentials flow (it must end with /.default).",
        "This is a bug in the app: report it.",
    ),
    500011: AadstsInfo(
        BAD_REQUEST,
        "The resource (Dataverse organisation) was not found in the tenant.",
        "Check the organisation URL registered for this tenant.",
    ),
    90033: AadstsInfo(
        SERVICE_UNAVAILABLE,
        "Entra ID had a transient failure (HTTP 503, temporarily_unavailable).",
        "Nothing to change: the next run asks again. If it lasts, check the Azure status page.",
        is_transient=True,
    ),
    50000: AadstsInfo(
        SERVICE_UNAVAILABLE,
        "Entra ID failed to issue the token: an error in its sign-in service (HTTP 500, server_error).",
        "Nothing to change: the next run asks again. If it lasts, open a support case with the correlation id.",
        is_transient=True,
    ),
}

# Failures that carry no AADSTS code: ``TokenAcquisitionError.error`` holds one of these names instead.
ENTRA_UNREACHABLE = "entra_unreachable"
ENTRA_UNAVAILABLE = "entra_unavailable"
CONDITIONS: dict[str, AadstsInfo] = {
    ENTRA_UNREACHABLE: AadstsInfo(
        SERVICE_UNAVAILABLE,
        "Entra ID did not answer: the connection failed or the answer took longer than HTTP_TIMEOUT_SECONDS.",
        "Nothing to change if it is brief: the next run asks again. If it lasts, check the worker's outbound "
        "network access to the authority host (DNS, firewall, proxy).",
        is_transient=True,
    ),
    ENTRA_UNAVAILABLE: AadstsInfo(
        SERVICE_UNAVAILABLE,
        "Entra ID answered with a server error (HTTP 5xx) and no AADSTS code, or answered so recently that the "
        "worker is still holding back new requests for that tenant until its Retry-After has passed.",
        "Nothing to change: the next run asks again. If it lasts, check the Azure status page.",
        is_transient=True,
    ),
}

# Entra-side failures worth retrying later (AADSTS90033 / 50196 / 5000 series are service-side, not ours).
_TRANSIENT_ERRORS = {"temporarily_unavailable", "server_error"}


def code_of(result: Mapping[str, Any]) -> int | None:
    """The AADSTS code of an error answer (MSAL's result dict or Entra's JSON body): its first ``error_codes``
    entry, else the first ``AADSTS<n>`` in its ``error_description``."""
    codes = result.get("error_codes") or []
    if codes:
        return int(codes[0])
    match = _CODE_IN_TEXT.search(str(result.get("error_description") or ""))
    return int(match.group(1)) if match else None


def describe(code: int | None, error: str | None) -> AadstsInfo:
    """Plain-words description for an AADSTS code, falling back on the OAuth ``error`` value."""
    if code is not None and code in CATALOG:
        return CATALOG[code]
    if error in _TRANSIENT_ERRORS:
        return AadstsInfo(
            SERVICE_UNAVAILABLE,
            "Entra ID could not serve the request right now.",
            "Nothing to change: the request is retried later.",
            is_transient=True,
        )
    if error == "invalid_client":
        return AadstsInfo(
            CREDENTIAL_REJECTED,
            "Entra rejected the client credential.",
            "Check the certificate or federated credential registered on the app.",
            credential_rejected=True,
        )
    return AadstsInfo(UNKNOWN, "Entra ID refused the token request.", "See error_description and the AADSTS code.")
