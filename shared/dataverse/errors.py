"""Typed errors at the Dataverse boundary, and the mapping from a Web API error response to them.

Every error carries the HTTP status, the Dataverse error code (``0x…``), the message, our client request id and
the service's request id, ``retry_after`` and ``is_transient`` — never the token or the request body.
"""

from __future__ import annotations

import json
import re
from typing import Any

from shared.errors import S2SError

APPLICATION_USER_MISSING = "0x80072560"  # "The user is not a member of the organization." (protocol.md §4)
USER_DISABLED = "0x80040225"
ACCESS_DENIED = "0x80040220"  # SecLib::AccessDenied, e.g. missing prvActOnBehalfOfAnotherUser
ROW_NOT_FOUND = "0x80040217"
# 404 "Resource not found for the segment '<name>'.": no entity set, function or action of that (case-sensitive)
# name (Microsoft's "Troubleshoot Dataverse Web API client errors").
RESOURCE_NOT_FOUND = "0x8006088a"
# Not a Dataverse code: what the client reports when the org's host name does not exist (see
# OrganizationNotFoundError); troubleshooting entries are keyed by it.
ORGANIZATION_NOT_FOUND = "organization_not_found"
DUPLICATE_RECORD = "0x80040237"
EXPIRED_VERSION_STAMP = "0x80044352"  # "Version stamp associated with the client has expired."
THROTTLE_REQUESTS = "0x80072322"
THROTTLE_EXECUTION_TIME = "0x80072321"
THROTTLE_CONCURRENCY = "0x80072326"
THROTTLING_CODES = frozenset({THROTTLE_REQUESTS, THROTTLE_EXECUTION_TIME, THROTTLE_CONCURRENCY})


class DataverseError(S2SError):
    code = "dataverse_error"

    def __init__(
        self,
        message: str,
        *,
        org_url: str,
        status_code: int | None = None,
        error_code: str | None = None,
        client_request_id: str | None = None,
        service_request_id: str | None = None,
        retry_after: float | None = None,
        is_transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.org_url = org_url
        self.status_code = status_code
        self.error_code = error_code
        self.client_request_id = client_request_id
        self.service_request_id = service_request_id
        self.retry_after = retry_after
        self.is_transient = is_transient

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "org_url": self.org_url,
            "status_code": self.status_code,
            "error_code": self.error_code,
            "message": self.message,
            "client_request_id": self.client_request_id,
            "service_request_id": self.service_request_id,
            "retry_after": self.retry_after,
            "is_transient": self.is_transient,
        }


class DataverseUnreachableError(DataverseError):
    code = "dataverse_unreachable"


class DataverseAuthenticationError(DataverseError):
    """401: the org did not accept the token (wrong audience or tenant, or expired)."""

    code = "dataverse_unauthenticated"


class ApplicationUserMissingError(DataverseError):
    """403 0x80072560: consent exists but no application user was created for our app in this org."""

    code = "application_user_missing"


class ApplicationUserDisabledError(DataverseError):
    code = "application_user_disabled"


class ImpersonationNotAllowedError(DataverseError):
    """The application user lacks prvActOnBehalfOfAnotherUser (Delegate role), so CallerObjectId is refused."""

    code = "impersonation_not_allowed"


class AccessDeniedError(DataverseError):
    code = "access_denied"


class RowNotFoundError(DataverseError):
    code = "row_not_found"


class UnknownTableError(DataverseError):
    """404 0x8006088a: the org has no entity set (or function, action, property) of that name. Names are
    case-sensitive: `accounts`, never `Account`. Not a RowNotFoundError: deleting from a misspelled table is a
    mistake to report, not a row that is already gone."""

    code = "unknown_table"


class OrganizationNotFoundError(DataverseUnreachableError):
    """No organisation answers at the org URL: its host name does not exist. Raised at once, never retried."""

    code = "organization_not_found"

    @classmethod
    def at(cls, org_url: str, client_request_id: str) -> OrganizationNotFoundError:
        return cls(
            f"No Dataverse organisation at {org_url}: its host name does not exist. Check the org URL (Power "
            "Platform admin center > Environments > the environment's Environment URL).",
            org_url=org_url,
            client_request_id=client_request_id,
        )


class PreconditionFailedError(DataverseError):
    """412: the row changed since the ETag was read (If-Match), or exists already (If-None-Match)."""

    code = "precondition_failed"


class ThrottledError(DataverseError):
    """429 service protection: wait ``retry_after`` seconds before calling this org again."""

    code = "throttled"


class DeltaTokenExpiredError(DataverseError):
    """The change-tracking delta token expired or is invalid: the caller must resynchronise from scratch."""

    code = "delta_token_expired"


class BadRequestError(DataverseError):
    code = "bad_request"


_MESSAGE_LIMIT = 500
_HEX_CODE = re.compile(r"0x[0-9a-fA-F]{8}")


def error_from_response(
    *,
    org_url: str,
    status_code: int,
    body: bytes,
    headers: Any,
    client_request_id: str,
    retry_after: float | None = None,
) -> DataverseError:
    """Build the most specific error for a Web API error response."""
    code, message = _parse_error_body(body)
    service_request_id = headers.get("x-ms-service-request-id") if headers is not None else None
    kwargs: dict[str, Any] = {
        "org_url": org_url,
        "status_code": status_code,
        "error_code": code,
        "client_request_id": client_request_id,
        "service_request_id": service_request_id,
        "retry_after": retry_after,
    }
    lowered = message.lower()
    text = message or f"Dataverse answered HTTP {status_code}."
    if code == EXPIRED_VERSION_STAMP or "version stamp" in lowered:
        return DeltaTokenExpiredError(f"The change-tracking token is no longer valid: {text}", **kwargs)
    if status_code == 429 or code in THROTTLING_CODES:
        return ThrottledError(f"Dataverse service protection limit reached: {text}", is_transient=True, **kwargs)
    if status_code == 401:
        return DataverseAuthenticationError(f"Dataverse did not accept the app's token: {text}", **kwargs)
    if code == APPLICATION_USER_MISSING:
        return ApplicationUserMissingError(
            "There is no application user for this app in the organisation: an administrator must create it "
            "(Power Platform admin center > Environments > Settings > Application users) with the app's custom "
            "security role.",
            **kwargs,
        )
    if code == USER_DISABLED or "is disabled" in lowered:
        return ApplicationUserDisabledError(
            f"The application user (or the impersonated user) is disabled in the organisation: {text}", **kwargs
        )
    if "prvactonbehalfofanotheruser" in lowered:
        return ImpersonationNotAllowedError(
            "The application user may not impersonate users: give its security role the 'Act on Behalf of "
            "Another User' privilege (prvActOnBehalfOfAnotherUser, part of the Delegate role).",
            **kwargs,
        )
    if status_code == 403:
        return AccessDeniedError(f"Dataverse refused the operation: {text}", **kwargs)
    if code == RESOURCE_NOT_FOUND:
        return UnknownTableError(
            f"The organisation has no table (entity set) or resource of this name; names are case-sensitive, "
            f"e.g. 'accounts': {text}",
            **kwargs,
        )
    if status_code == 404 or code == ROW_NOT_FOUND:
        return RowNotFoundError(text, **kwargs)
    if status_code == 412:
        return PreconditionFailedError(text, **kwargs)
    if status_code in (400, 405, 409, 413, 414, 415):
        return BadRequestError(text, **kwargs)
    transient = status_code >= 500
    return DataverseError(text, is_transient=transient, **kwargs)


_RATE_MESSAGE = re.compile(r"limit of (\d{1,9}) over time window of (\d{1,7}(?:\.\d{1,3})?) seconds", re.IGNORECASE)


def rate_limit_named(body: bytes) -> tuple[int, float] | None:
    """The (requests, window seconds) a request-rate 429 names in its documented message, e.g. "Number of
    requests exceeded the limit of 6000 over time window of 300 seconds." (api-limits); None for any other body.
    """
    code, message = _parse_error_body(body)
    if code != THROTTLE_REQUESTS:
        return None
    match = _RATE_MESSAGE.search(message)
    if match is None:
        return None
    return int(match.group(1)), float(match.group(2))


def _parse_error_body(body: bytes) -> tuple[str | None, str]:
    try:
        payload = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None, ""
    if not isinstance(payload, dict) or not isinstance(payload.get("error"), dict):
        return None, ""
    error = payload["error"]
    code = error.get("code")
    message = error.get("message")
    return (
        code if isinstance(code, str) and _HEX_CODE.fullmatch(code) else None,
        message[:_MESSAGE_LIMIT] if isinstance(message, str) else "",
    )
