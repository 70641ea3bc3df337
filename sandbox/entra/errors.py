"""Entra ID's OAuth error responses: the AADSTS catalogue the token stand-in raises, and their JSON shape.

Texts follow the errors Entra returns (protocol §1-2); where the exact wording was not verified the message
says the same thing in plain words. Each factory names the HTTP status and OAuth `error` Entra pairs it with.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

_CERT_DOCS = "Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials ."
_FIC_DOCS = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation"


class EntraError(Exception):
    """An OAuth error response from the token endpoint (or discovery, for AADSTS90002)."""

    def __init__(self, status: int, error: str, code: int, message: str) -> None:
        super().__init__(f"AADSTS{code}: {message}")
        self.status = status
        self.error = error
        self.code = code
        self.message = message

    def body(self, authority_host: str, trace_id: str, correlation_id: str | None) -> dict[str, Any]:
        """Entra's error JSON; the trace/correlation/timestamp trailer is part of the description."""
        correlation = correlation_id or str(uuid.uuid4())
        timestamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return {
            "error": self.error,
            "error_description": (
                f"AADSTS{self.code}: {self.message} Trace ID: {trace_id} "
                f"Correlation ID: {correlation} Timestamp: {timestamp}"
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation,
            "error_uri": f"{authority_host}/error?code={self.code}",
        }


def _utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%m/%d/%Y %H:%M:%S")


def tenant_not_found(tenant: str) -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        90002,
        f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing "
        "into the correct cloud. Check with your subscription administrator, this may happen if there are "
        "no active subscriptions for the tenant.",
    )


def no_tenant_in_request() -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        50059,
        "No tenant-identifying information found in either the request or implied by any provided credentials.",
    )


def unsupported_grant_type(grant_type: str) -> EntraError:
    return EntraError(
        400,
        "unsupported_grant_type",
        70003,
        f"The app requested an unsupported grant type '{grant_type}'.",
    )


def missing_parameter(name: str) -> EntraError:
    return EntraError(
        400, "invalid_request", 900144, f"The request body must contain the following parameter: '{name}'."
    )


def invalid_scope(scope: str) -> EntraError:
    return EntraError(
        400,
        "invalid_scope",
        1002012,
        f"The provided value for scope {scope} is not valid. Client credential flows must have a scope "
        "value with /.default suffixed to the resource identifier (application ID URI).",
    )


def application_not_found(client_id: str, directory: str) -> EntraError:
    return EntraError(
        400,
        "unauthorized_client",
        700016,
        f"Application with identifier '{client_id}' was not found in the directory '{directory}'. This can "
        "happen if the application has not been installed by the administrator of the tenant or consented "
        "to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
    )


def consent_required(client_id: str, display_name: str) -> EntraError:
    return EntraError(
        400,
        "invalid_grant",
        65001,
        f"The user or administrator has not consented to use the application with ID '{client_id}' named "
        f"'{display_name}'. Send an interactive authorization request for this user and resource.",
    )


def application_disabled(client_id: str, display_name: str) -> EntraError:
    return EntraError(400, "unauthorized_client", 7000112, f"Application '{client_id}'({display_name}) is disabled.")


def client_secret_not_accepted(client_id: str) -> EntraError:
    # The sandbox registers certificates and federated credentials only, so every secret is wrong.
    return EntraError(
        401,
        "invalid_client",
        7000215,
        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
        f"value, not the client secret ID, for a secret added to app '{client_id}'.",
    )


def credential_missing() -> EntraError:
    return EntraError(
        401,
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    )


def wrong_assertion_type(assertion_type: str) -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        90014,
        f"The client_assertion_type '{assertion_type}' is not supported; expected "
        "'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'.",
    )


def malformed_assertion() -> EntraError:
    return EntraError(400, "invalid_request", 50027, "JWT token is invalid or malformed.")


def unsupported_algorithm(algorithm: str) -> EntraError:
    return EntraError(
        401,
        "invalid_client",
        5002738,
        f"Invalid JWT token. '{algorithm}' is not a supported signature algorithm. Supported signing "
        "algorithms are: 'RS256, PS256'.",
    )


def certificate_not_registered(client_id: str, thumbprint: str, reason: str = "The key was not found.") -> EntraError:
    return EntraError(
        401,
        "invalid_client",
        700027,
        "The certificate with identifier used to sign the client assertion is not registered on "
        f"application. [Reason - {reason}, Thumbprint of key used by client: '{thumbprint}', Please visit "
        f"the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id "
        f"'{client_id}'.]",
    )


def signature_invalid(thumbprint: str, not_before: float, not_after: float) -> EntraError:
    return EntraError(
        401,
        "invalid_client",
        7000274,
        "Key was found, but use of the key to verify the signature failed. [Thumbprint of key used by "
        f"client: '{thumbprint}', Found key 'Start={_utc(not_before)}, End={_utc(not_after)}']",
    )


def assertion_issuer_mismatch() -> EntraError:
    return EntraError(
        401,
        "invalid_client",
        700021,
        "Client assertion application identifier doesn't match 'client_id' parameter. " + _CERT_DOCS,
    )


def assertion_audience_mismatch() -> EntraError:
    # Entra calls this AADSTS700023 ("...does not match Realm issuer"); the wording is Entra's own.
    return EntraError(
        401, "invalid_client", 700023, "Client assertion audience claim does not match Realm issuer. " + _CERT_DOCS
    )


def assertion_out_of_time_range(now: float, not_before: float | None, expires: float | None) -> EntraError:
    valid_from = _utc(not_before) if not_before is not None else "(not set)"
    expiry = _utc(expires) if expires is not None else "(not set)"
    return EntraError(
        401,
        "invalid_client",
        700024,
        f"Client assertion is not within its valid time range. Current time: {_utc(now)}, assertion valid "
        f"from {valid_from}, expiry time of assertion {expiry}. " + _CERT_DOCS,
    )


def assertion_replayed(jti: str) -> EntraError:
    # Code chosen by the sandbox (AADSTS50013 is Entra's generic "assertion is invalid").
    return EntraError(
        401,
        "invalid_client",
        50013,
        f"Assertion is invalid: the client assertion with jti '{jti}' has already been used to obtain a "
        "token for this tenant and resource. Create a new assertion.",
    )


def assertion_signature_failed() -> EntraError:
    return EntraError(
        401,
        "invalid_client",
        50013,
        "Assertion failed signature validation. [Reason - The key was not found or the signature did not "
        "match the issuer's published signing keys.]",
    )


def no_matching_federated_credential(issuer: str, subject: str, audience: str) -> EntraError:
    return EntraError(
        401,
        "invalid_client",
        70021,
        f"No matching federated identity record found for presented assertion. Assertion Issuer: '{issuer}'. "
        f"Assertion Subject: '{subject}'. Assertion Audience: '{audience}'. {_FIC_DOCS}",
    )


# -- admin consent (protocol §1): shown on an error page, never sent to a redirect URI -------------------


def redirect_uri_mismatch(redirect_uri: str, client_id: str) -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        50011,
        f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs "
        f"configured for the application '{client_id}'. Make sure the redirect URI sent in the request matches "
        "one added to your application in the Azure portal.",
    )


def admin_consent_common_not_allowed() -> EntraError:
    # protocol §1: the v2 endpoint takes a GUID, a domain or `organizations` ("Do not use 'common'"). Entra's
    # exact answer is not verified; 50059 is its code for a request that names no usable tenant.
    return EntraError(
        400,
        "invalid_request",
        50059,
        "The v2.0 admin consent endpoint does not accept the tenant 'common': personal accounts cannot give "
        "admin consent. Use 'organizations', the tenant ID or one of its domains.",
    )


# -- authorization code flow (protocol §6; entra/v2-oauth2-auth-code-flow.md) ----------------------------


def unsupported_response_type(response_type: str) -> EntraError:
    return EntraError(
        400,
        "unsupported_response_type",
        700054,
        f"response_type '{response_type}' is not enabled for the application. This sign-in issues codes only.",
    )


def openid_scope_missing() -> EntraError:
    return EntraError(400, "invalid_request", 900144, "The request body must contain the 'openid' scope.")


def pkce_method_not_supported(method: str) -> EntraError:
    return EntraError(400, "invalid_request", 501491, f"Invalid code_challenge_method '{method}': use S256 (or plain).")


def admin_approval_required(app_name: str) -> EntraError:
    # Entra's "Need admin approval" page: the user may not consent to this app for the organisation.
    return EntraError(
        403,
        "access_denied",
        90094,
        f"{app_name} needs permission to access resources in your organization that only an admin can grant. "
        "Please ask an admin to grant permission to this app before you can use it.",
    )


def user_declined() -> EntraError:
    return EntraError(400, "access_denied", 65004, "User declined to consent to access the app.")


def authorization_code_invalid() -> EntraError:
    return EntraError(
        400,
        "invalid_grant",
        70008,
        "The provided authorization code or refresh token has expired due to inactivity, or was never issued "
        "to this client. Send a new interactive authorization request for this user and resource.",
    )


def authorization_code_redeemed() -> EntraError:
    return EntraError(
        400,
        "invalid_grant",
        54005,
        "OAuth2 Authorization code was already redeemed, please retry "
        "with a new valid code or use an existing refresh token.",
    )


def code_verifier_mismatch() -> EntraError:
    return EntraError(
        400,
        "invalid_grant",
        501481,
        "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
    )


def code_redirect_uri_mismatch() -> EntraError:
    return EntraError(
        400,
        "invalid_grant",
        500112,
        "The reply address does not match the reply address provided when requesting the authorization code.",
    )


def multiple_resources(scopes: str) -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        28000,
        f"Provided value for the input parameter scope is not valid because it contains more than one resource. "
        f"Scope {scopes} is not valid.",
    )
