"""Onboarding consent states: single-use, expiring, bound to the browser that started onboarding.

The ``state`` sent through Entra and the browser cookie are random secrets; only their SHA-256 hashes are
stored (Table Storage, ``consentstates``), so a reader of the table cannot complete anyone's onboarding.
Entra warns never to trust the callback's ``tenant`` alone (protocol.md §1): the state also pins the tenant
that owns the org the administrator named.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.errors import S2SError

CONSENT_STATES_TABLE = "consentstates"
_PARTITION = "state"


class ConsentStateError(S2SError):
    """The callback's state cannot be used; ``reason`` is one of missing, unknown, expired, replayed,
    other_browser, tenant_mismatch."""

    code = "invalid_consent_state"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ConsentState:
    org_url: str
    expected_tenant: str
    onboarded_by: str | None
    expires_at: float


@dataclass(frozen=True)
class IssuedState:
    state: str  # goes to Entra and comes back in the callback
    browser_nonce: str  # goes in the HttpOnly cookie
    expires_at: float


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class ConsentStateStore:
    def __init__(self, table: Any, ttl_seconds: int, clock: Callable[[], float] = time.time) -> None:
        self._table = table
        self._ttl = ttl_seconds
        self._clock = clock

    def create_table(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._table.create_table()

    def issue(self, org_url: str, expected_tenant: str, onboarded_by: str | None) -> IssuedState:
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        expires = self._clock() + self._ttl
        self._table.create_entity(
            {
                "PartitionKey": _PARTITION,
                "RowKey": _hash(state),
                "BrowserHash": _hash(nonce),
                "OrgUrl": org_url,
                "ExpectedTenant": expected_tenant,
                "OnboardedBy": onboarded_by or "",
                "ExpiresAt": expires,
                "Used": False,
            }
        )
        return IssuedState(state, nonce, expires)

    def redeem(self, state: str | None, browser_nonce: str | None, tenant: str | None) -> ConsentState:
        """Check and consume a state. Raises ConsentStateError; a state is consumed only once the browser is
        proven to be the one that started, so a stranger cannot burn someone else's onboarding."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        if not state:
            raise ConsentStateError("missing", "The sign-in answer carried no state.")
        if len(state) > 200:
            raise ConsentStateError("unknown", "The sign-in answer's state is not one we issued.")
        try:
            entity = self._table.get_entity(_PARTITION, _hash(state))
        except ResourceNotFoundError:
            raise ConsentStateError("unknown", "The sign-in answer's state is not one we issued.") from None
        if entity.get("Used"):
            raise ConsentStateError("replayed", "This onboarding link was already used.")
        if float(entity["ExpiresAt"]) < self._clock():
            raise ConsentStateError("expired", "This onboarding attempt expired.")
        if not browser_nonce or not hmac.compare_digest(entity["BrowserHash"], _hash(browser_nonce)):
            raise ConsentStateError("other_browser", "This onboarding was started in another browser.")
        try:
            self._table.update_entity(
                {"PartitionKey": _PARTITION, "RowKey": entity["RowKey"], "Used": True},
                mode=UpdateMode.MERGE,
                etag=entity.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            raise ConsentStateError("replayed", "This onboarding link was already used.") from None
        expected = entity["ExpectedTenant"]
        if not tenant or tenant.lower() != expected.lower():
            raise ConsentStateError(
                "tenant_mismatch",
                "Consent was given in a different tenant from the one that owns the organisation you named.",
            )
        return ConsentState(entity["OrgUrl"], expected, entity.get("OnboardedBy") or None, float(entity["ExpiresAt"]))
