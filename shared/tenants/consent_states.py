"""Onboarding sign-in states: single-use, expiring, bound to the browser that started onboarding.

A state row holds what the administrator's sign-in must find again when Entra sends the browser back: the org
they named, the contact they typed, and MSAL's auth code flow (its ``state``, ``nonce`` and PKCE
``code_verifier``). The ``state`` that travels through Entra and the browser cookie are random secrets; the row is
keyed by the state's SHA-256, holds only the cookie's hash, and the flow is sealed (AES-GCM) with a key derived from
the cookie, so a reader of the table (``consentstates``) can neither complete nor replay anyone's sign-in.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.errors import S2SError

CONSENT_STATES_TABLE = "consentstates"
_PARTITION = "state"
_SEAL_INFO = b"dataverse-s2s onboarding flow v1"


class ConsentStateError(S2SError):
    """The callback's state cannot be used; ``reason`` is one of missing, unknown, expired, replayed,
    other_browser."""

    code = "invalid_consent_state"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ConsentState:
    org_url: str
    contact: str | None
    flow: dict[str, Any] = field(repr=False)  # MSAL's auth code flow: holds the PKCE verifier
    expires_at: float


@dataclass(frozen=True)
class IssuedState:
    state: str  # goes to Entra and comes back in the callback
    browser_nonce: str  # goes in the HttpOnly cookie
    expires_at: float


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _key(browser_nonce: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(browser_nonce.encode())


def _seal(flow: dict[str, Any], browser_nonce: str, state_hash: str) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    iv = os.urandom(12)
    sealed = AESGCM(_key(browser_nonce)).encrypt(iv, json.dumps(flow).encode(), state_hash.encode())
    return base64.b64encode(iv + sealed).decode("ascii")


def _unseal(value: str, browser_nonce: str, state_hash: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    raw = base64.b64decode(value)
    flow: dict[str, Any] = json.loads(AESGCM(_key(browser_nonce)).decrypt(raw[:12], raw[12:], state_hash.encode()))
    return flow


class ConsentStateStore:
    def __init__(self, table: Any, ttl_seconds: int, clock: Callable[[], float] = time.time) -> None:
        self._table = table
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def create_table(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._table.create_table()

    def issue(self, flow: dict[str, Any], org_url: str, contact: str | None) -> IssuedState:
        """Keep ``flow`` (MSAL's, its ``state`` is the key) for this browser: one bounded, expiring row."""
        state = str(flow["state"])
        nonce = secrets.token_urlsafe(32)
        expires = self._clock() + self.ttl_seconds
        key = _hash(state)
        self._table.create_entity(
            {
                "PartitionKey": _PARTITION,
                "RowKey": key,
                "BrowserHash": _hash(nonce),
                "OrgUrl": org_url,
                "Contact": contact or "",
                "Flow": _seal(flow, nonce, key),
                "ExpiresAt": expires,
                "Used": False,
            }
        )
        return IssuedState(state, nonce, expires)

    def redeem(self, state: str | None, browser_nonce: str | None) -> ConsentState:
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
        try:
            flow = _unseal(entity.get("Flow") or "", browser_nonce, entity["RowKey"])
        except Exception as exc:  # a row from before sign-ins, or tampered with: either way unusable
            raise ConsentStateError("unknown", "The sign-in answer's state is not one we issued.") from exc
        return ConsentState(entity["OrgUrl"], entity.get("Contact") or None, flow, float(entity["ExpiresAt"]))

    def purge_expired(self, *, limit: int = 5000) -> int:
        """Delete states that expired (used or not); returns how many. Bounded per call (the health sweep
        calls it every run)."""
        from azure.core.exceptions import ResourceNotFoundError

        cutoff = self._clock()
        rows = self._table.query_entities(
            "PartitionKey eq @pk and ExpiresAt lt @cutoff",
            parameters={"pk": _PARTITION, "cutoff": cutoff},
            select=["PartitionKey", "RowKey", "ExpiresAt"],
        )
        deleted = 0
        for row in rows:
            if float(row.get("ExpiresAt", 0)) >= cutoff:  # the service filtered already; a cheap second look
                continue
            with contextlib.suppress(ResourceNotFoundError):
                self._table.delete_entity(_PARTITION, row["RowKey"])
            deleted += 1
            if deleted >= limit:
                break
        return deleted
