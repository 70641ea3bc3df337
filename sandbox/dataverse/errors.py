"""Errors the Dataverse Web API stand-in answers with: `{"error":{"code":"0x…","message":"…"}}` (protocol §4).

Codes and messages follow Microsoft's documented ones where protocol.md names them; the rest say so.
"""

from __future__ import annotations

from typing import Any

NOT_MEMBER = "0x80072560"
USER_DISABLED = "0x80040225"
NOT_FOUND = "0x80040217"
DUPLICATE = "0x80040237"
MISSING_PRIVILEGE = "0x80040220"
NO_RECORD_ACCESS = "0x80048306"  # a privilege check passed, the access check on the record failed
BAD_QUERY = "0x80060888"
RESOURCE_NOT_FOUND = "0x8006088a"
BAD_PAYLOAD = "0x80048d19"
VALIDATION = "0x80044331"
VERSION_MISMATCH = "0x80060882"
DELTA_TOKEN_EXPIRED = "0x80044352"
RATE_LIMIT = "0x80072322"
EXECUTION_TIME_LIMIT = "0x80072321"
CONCURRENCY_LIMIT = "0x80072326"
UNEXPECTED = "0x80040216"  # "An unexpected error occurred." (Dataverse's generic failure; used for injected faults)


class DataverseError(Exception):
    """A Web API error response: HTTP status, service error code, message and any extra headers."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def bad_query(message: str) -> DataverseError:
    """Query syntax the service (or this sandbox) does not accept."""
    return DataverseError(400, BAD_QUERY, message)


def unknown_segment(segment: str) -> DataverseError:
    """An entity set, function or action the org does not have: 404 0x8006088a "Resource not found for the segment
    '<name>'." Names are case-sensitive, so `Account` is unknown where `accounts` exists (Microsoft's "Troubleshoot
    Dataverse Web API client errors", troubleshoot/power-platform/power-apps/dataverse/web-api-client-errors)."""
    return DataverseError(404, RESOURCE_NOT_FOUND, f"Resource not found for the segment '{segment}'.")


def no_http_resource(url: str) -> DataverseError:
    """A function called with the wrong method, e.g. POST WhoAmI: 404 with an empty code and "No HTTP resource was
    found that matches the request URI '<url>'." (same troubleshooting article)."""
    return DataverseError(404, "", f"No HTTP resource was found that matches the request URI '{url}'.")


def bad_payload(message: str) -> DataverseError:
    return DataverseError(400, BAD_PAYLOAD, message)


def not_found(logical_name: str, record_id: str) -> DataverseError:
    return DataverseError(404, NOT_FOUND, f"{logical_name} With Id = {record_id} Does Not Exist")


def duplicate_key() -> DataverseError:
    return DataverseError(412, DUPLICATE, "A record with matching key values already exists.")


def version_mismatch() -> DataverseError:
    return DataverseError(
        412, VERSION_MISMATCH, "The version of the existing record doesn't match the RowVersion property provided."
    )


def delta_token_expired() -> DataverseError:
    # The code and message are the documented ExpiredVersionStamp (0x80044352, data-service error codes), which
    # the SDK is seen to raise for an expired change-tracking token (MicrosoftDocs/powerapps-docs#3845). The
    # Web API status is not verified (protocol.md open item 6); 400 is the sandbox's choice, and clients are
    # expected to restart with a full sync whatever it is.
    return DataverseError(
        400, DELTA_TOKEN_EXPIRED, "Version stamp associated with the client has expired. Please perform a full sync."
    )


def unknown_property(name: str, logical_name: str) -> DataverseError:
    return bad_query(f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{logical_name}'.")


# A synchronous webhook that fails aborts the operation like a failing plug-in. The plug-in failure code is the
# sandbox's choice: the Web API's status and code for a failed synchronous webhook are not verified (protocol §5
# documents only that "the entire transaction" fails).
WEBHOOK_FAILED = "0x80040265"


def webhook_failed(url: str, outcome: str) -> DataverseError:
    return DataverseError(
        400,
        WEBHOOK_FAILED,
        f"The synchronous webhook step failed: {url} answered {outcome}. The operation was rolled back.",
    )
