"""Durable storage of webhook events: the work queue, payload blobs for large events, the event table that makes
delivery idempotent, and the poison queue with each failure's reason.

One row per event identity in ``webhookevents``: created ``processing`` by the processor's claim (conditional
insert), moved to ``done`` under the row's ETag, so a duplicate message — a redelivery Dataverse made, or one an
attempt whose answer was lost queued twice — is skipped. The claim keeps the ETag of its own write (``renew``
returns one with the ETag of the renewal's write), and ``complete`` and ``release`` are made only under it: a
worker whose lease ran out and was taken over changes nothing. The receiver only writes the queue message.

The receiver's calls are bounded in time. Dataverse waits 60 s for the answer and does not retry a timeout
(protocol.md §5), while the storage SDKs' own retries wait 15 s, 18 s and 24 s between attempts on queues and blobs
(about 85 s against a refused connection). So those calls turn the SDK retries off, carry short connect and read
timeouts, and are retried here within RECEIVER_BUDGET_SECONDS: a blip is ridden out, an outage answers 503 in
seconds and Dataverse tries again.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from shared.errors import S2SError

EVENTS_QUEUE = "webhook-events"
POISON_QUEUE = "webhook-events-poison"
EVENTS_TABLE = "webhookevents"
PAYLOAD_CONTAINER = "webhook-payloads"
# A queue message holds 64 KiB, counted after the base64 encoding the app's queues use (4 bytes per 3), so the
# UTF-8 text of a message — envelope and payload, as JSON — may be 48 KiB. A larger one puts the payload in a
# blob and a pointer in the message. The size is measured on the encoded message, not the payload: JSON escapes
# and multi-byte characters can make a 40 KB payload a 100 KB message.
QUEUE_MESSAGE_LIMIT = 64 * 1024
INLINE_LIMIT = QUEUE_MESSAGE_LIMIT // 4 * 3
PROCESSING_LEASE_SECONDS = 300
# One attempt of a lease renewal (shared.webhooks.lease) may take this long: a renewal that fails is tried again at
# the next tick, a third of the lease later, so it must not hold the renewal (and the processor's completion, which
# waits for it) for the SDK's own retries.
RENEWAL_TIMEOUT_SECONDS = 10.0
# How long an event's identity makes a duplicate delivery a no-op (shared.settings.WEBHOOK_DEDUPE_DAYS says the
# same in days: WEBHOOK_EVENT_RETENTION_DAYS may not be shorter). Queue messages live 7 days unless sent with
# another time-to-live (Queue service REST API, Put Message: "the default time-to-live is 7 days").
DEDUPE_TTL_SECONDS = 7 * 86400
# Time the receiver gives one storage step (the dedupe read; the blob and queue writes together) before it answers
# 503, the pauses between its attempts, and the per-attempt connect and read timeouts.
RECEIVER_BUDGET_SECONDS = 3.0
RECEIVER_BACKOFF_SECONDS = (0.1, 0.25, 0.5, 1.0)
RECEIVER_CONNECT_TIMEOUT = 2.0
RECEIVER_READ_TIMEOUT = 5.0
# Answers worth another attempt: timeouts, throttling and server errors (anything else will not change on retry).
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

T = TypeVar("T")


class StorageUnavailableError(S2SError):
    """Storage did not accept the write: nothing was stored, the caller must not acknowledge."""

    code = "storage_unavailable"


class ClaimLostError(S2SError):
    """The event row changed since this claim wrote it (its lease ran out and another worker took the event, or an
    operator replayed it): the fenced write was not made, and the event is that holder's to settle."""

    code = "claim_lost"

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Claim:
    """The processor's hold on one event. ``etag`` is the row's ETag after the holder's latest write: ``complete``
    and ``release`` are made only while the row still carries it.

    A Claim never changes: ``WebhookStore.renew`` returns a new one with the ETag and lease of its own write, and
    the processor's renewal (shared.webhooks.lease.LeaseRenewal) is the one owner that replaces its claim with it,
    under its lock, so the final ``complete``/``release`` fence on the latest ETag. A renewal refused because the
    row changed leaves the claim as it was: the final write is then refused too (ClaimLostError)."""

    granted: bool
    reason: str  # "new", "retry", "done", "busy"
    key: str = ""
    etag: str | None = None  # set when granted
    lease_until: float = 0.0  # granted: this claim's lease; busy: the holder's, when it was read


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class WebhookStore:
    def __init__(
        self,
        *,
        queue: Any,
        poison_queue: Any,
        table: Any,
        container: Any,
        dedupe_ttl_seconds: int = DEDUPE_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
        receiver_budget_seconds: float = RECEIVER_BUDGET_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._queue = queue
        self._poison = poison_queue
        self._table = table
        self._container = container
        self._ttl = dedupe_ttl_seconds
        self._clock = clock
        self._budget = receiver_budget_seconds
        self._monotonic = monotonic
        self._sleep = sleep

    def create_resources(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        for create in (
            self._queue.create_queue,
            self._poison.create_queue,
            self._table.create_table,
            self._container.create_container,
        ):
            with contextlib.suppress(ResourceExistsError):
                create()

    # -- receiver side -------------------------------------------------------------------------------------

    def seen(self, key: str) -> bool:
        """True when this event identity was already stored and its record has not expired."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        deadline = self._monotonic() + self._budget
        try:
            entity = self._bounded(lambda **options: self._table.get_entity(key[:3], key, **options), deadline)
        except ResourceNotFoundError:
            return False
        except AzureError as exc:
            raise StorageUnavailableError("The event table could not be read.") from exc
        return float(entity.get("ExpiresAt", 0)) > self._clock()

    def enqueue(self, key: str, envelope: dict[str, Any], payload: bytes) -> None:
        """Store the event durably: one queue message (plus a blob first when the event is too large for one).
        Its identity is recorded by the processor's claim, so acknowledging costs one write and a redelivery is
        queued again and skipped there.

        Raises StorageUnavailableError when the queue or blob write fails.
        """
        from azure.core.exceptions import AzureError

        message = dict(envelope)
        deadline = self._monotonic() + self._budget
        try:
            text = json.dumps({**message, "payload": payload.decode("utf-8")}, separators=(",", ":"))
            if len(text.encode("utf-8")) > INLINE_LIMIT:
                name = f"{key}.json"
                self._bounded(
                    lambda **options: self._container.upload_blob(name=name, data=payload, overwrite=True, **options),
                    deadline,
                )
                text = json.dumps({**message, "payload_blob": name}, separators=(",", ":"))
            # An attempt whose answer was lost may have queued the message: the copy is skipped by the claim.
            self._bounded(lambda **options: self._queue.send_message(text, **options), deadline)
        except AzureError as exc:
            raise StorageUnavailableError("The event could not be queued.") from exc

    def _bounded(self, call: Callable[..., T], deadline: float) -> T:
        """`call(**options)` with the SDK's retries off, retried here on a transient failure until `deadline`
        (monotonic); raises the last error once the next attempt would start past it."""
        from azure.core.exceptions import AzureError, HttpResponseError

        attempt = 0
        while True:
            try:
                return call(**self._call_options(deadline - self._monotonic()))
            except AzureError as exc:
                # An answer other than a timeout, throttling or server error will not change on retry; no answer
                # at all (refused, reset, timed out) may.
                if isinstance(exc, HttpResponseError) and exc.status_code not in _TRANSIENT_STATUSES:
                    raise
                pause = RECEIVER_BACKOFF_SECONDS[min(attempt, len(RECEIVER_BACKOFF_SECONDS) - 1)]
                if self._monotonic() + pause >= deadline:
                    raise
            self._sleep(pause)
            attempt += 1

    @staticmethod
    def _call_options(remaining: float) -> dict[str, Any]:
        remaining = max(remaining, 0.5)
        return {
            "retry_total": 0,
            "connection_timeout": min(RECEIVER_CONNECT_TIMEOUT, remaining),
            "read_timeout": min(RECEIVER_READ_TIMEOUT, remaining),
        }

    # -- processor side ------------------------------------------------------------------------------------

    def load_payload(self, message: dict[str, Any]) -> bytes:
        if "payload" in message:
            return str(message["payload"]).encode("utf-8")
        return bytes(self._container.download_blob(message["payload_blob"]).readall())

    def claim(self, key: str, owner: str | None = None) -> Claim:
        """Take the event for processing. Not granted when it is done, or another worker holds a fresh lease.

        ``owner`` is the queue message's id. The host shows a message again only once the invocation holding it
        has ended (failed, or past its visibility timeout), so a fresh lease held by the *same* message belongs to
        an attempt that is over — for example one whose handlers ran but whose ``complete`` could not be written —
        and is taken over instead of waiting out the lease until the host gives up on the message.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        now = self._clock()
        lease_until = now + PROCESSING_LEASE_SECONDS
        try:
            entity = self._table.get_entity(key[:3], key)
        except ResourceNotFoundError:
            try:
                created = self._table.create_entity(
                    {
                        "PartitionKey": key[:3],
                        "RowKey": key,
                        "Status": "processing",
                        "ReceivedAt": _now_iso(),
                        "ExpiresAt": now + self._ttl,
                        "LeaseUntil": lease_until,
                        "Attempts": 1,
                        "LastError": "",
                        "Owner": owner or "",
                    }
                )
                return Claim(True, "new", key, created["etag"], lease_until)
            except ResourceExistsError:
                return Claim(False, "busy", key)
        status = entity.get("Status")
        if status == "done":
            return Claim(False, "done", key)
        own_earlier_attempt = bool(owner) and entity.get("Owner") == owner
        held_until = float(entity.get("LeaseUntil") or 0)
        if status == "processing" and held_until > now and not own_earlier_attempt:
            return Claim(False, "busy", key, lease_until=held_until)
        try:
            written = self._table.update_entity(
                {
                    "PartitionKey": key[:3],
                    "RowKey": key,
                    "Status": "processing",
                    "LeaseUntil": lease_until,
                    "Attempts": int(entity.get("Attempts", 0)) + 1,
                    "Owner": owner or "",
                },
                mode=UpdateMode.MERGE,
                etag=entity.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            return Claim(False, "busy", key)
        return Claim(True, "retry", key, written["etag"], lease_until)

    def now(self) -> float:
        """The store's clock (epoch seconds): the one leases are written and compared on."""
        return self._clock()

    def renew(self, claim: Claim, until: float) -> Claim:
        """Extend the claimed event's lease to ``until`` (epoch seconds), only while the row is still this claim's;
        returns the claim with the ETag of this write, the one later fenced writes must use.

        One attempt with short timeouts (the caller tries again at its next tick). Raises ClaimLostError when the
        row changed since the claim's last write (nothing written), and the SDK's error when storage fails — the
        write may then have been made or not: ``confirm_renewal`` tells which."""
        written = self._fenced(claim, {"LeaseUntil": until}, **self._call_options(RENEWAL_TIMEOUT_SECONDS))
        return replace(claim, etag=written["etag"], lease_until=until)

    def confirm_renewal(self, claim: Claim, until: float) -> Claim:
        """After a renewal to ``until`` that failed without a clear answer: the claim with the row's ETag when the
        row shows that write, otherwise the claim unchanged (its next fenced write then tells whether the row is
        still its own). Every write to an event row sets ``LeaseUntil`` (claim, renewal, complete, release, replay),
        so a processing row whose lease is exactly ``until`` was last written by this renewal.

        Raises the SDK's error when storage fails."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(claim.key[:3], claim.key, **self._call_options(RENEWAL_TIMEOUT_SECONDS))
        except ResourceNotFoundError:
            return claim
        if entity.get("Status") == "processing" and float(entity.get("LeaseUntil") or 0) == until:
            return replace(claim, etag=entity.metadata["etag"], lease_until=until)
        return claim

    def complete(self, claim: Claim) -> None:
        """Mark the claimed event done, only while the row is still this claim's.

        Raises ClaimLostError when it is not (nothing written), and the SDK's error when storage fails."""
        self._fenced(claim, {"Status": "done", "DoneAt": _now_iso(), "LeaseUntil": 0})

    def release(self, claim: Claim, error: str) -> None:
        """Processing failed: free the lease so the retry can claim it, keep the reason — only while the row is
        still this claim's. Raises ClaimLostError when it is not (nothing written); a storage failure is not
        raised: the lease then runs out, or the same message's redelivery takes it over."""
        from azure.core.exceptions import AzureError

        try:
            self._fenced(claim, {"Status": "failed", "LeaseUntil": 0, "LastError": error[:1000]})
        except (AzureError, OSError):
            return

    def _fenced(self, claim: Claim, fields: dict[str, Any], **options: Any) -> dict[str, Any]:
        """Merge ``fields`` into the claimed row under the claim's ETag. The table service makes a Merge Entity
        with ``If-Match: <etag>`` only when the row's ETag still matches, and answers 412 otherwise
        (learn.microsoft.com/rest/api/storageservices/merge-entity, request headers): a worker whose lease
        expired and was taken over, or whose row an operator reset, cannot overwrite what the new holder wrote."""
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        if not claim.granted or not claim.etag:
            raise ValueError(f"Only a granted claim can be completed or released (this one was {claim.reason!r}).")
        try:
            written: dict[str, Any] = self._table.update_entity(
                {"PartitionKey": claim.key[:3], "RowKey": claim.key, **fields},
                mode=UpdateMode.MERGE,
                etag=claim.etag,
                match_condition=MatchConditions.IfNotModified,
                **options,
            )
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise ClaimLostError("The event was taken over since this worker claimed it.", claim.key) from exc
        except HttpResponseError as exc:
            if exc.status_code == 412:
                raise ClaimLostError("The event was taken over since this worker claimed it.", claim.key) from exc
            raise
        return written

    def to_poison(self, message: dict[str, Any], reason: str, dequeue_count: int) -> None:
        poisoned = {
            **message,
            "poison_reason": reason[:2000],
            "poisoned_at": _now_iso(),
            "dequeue_count": dequeue_count,
        }
        self._poison.send_message(json.dumps(poisoned, separators=(",", ":")))

    # -- housekeeping --------------------------------------------------------------------------------------

    def purge_older_than(self, retention_seconds: float, *, limit: int = 5000) -> int:
        """Delete event records received more than ``retention_seconds`` ago (never sooner than the dedupe window,
        and never one a processor holds a live lease on); returns how many. Bounded per call, idempotent."""
        from azure.core.exceptions import ResourceNotFoundError

        now = self._clock()
        # ExpiresAt = receipt + dedupe window, so "received before now - retention" is this one numeric filter.
        cutoff = now - max(retention_seconds, self._ttl) + self._ttl
        rows = self._table.query_entities(
            "ExpiresAt lt @cutoff",
            parameters={"cutoff": cutoff},
            select=["PartitionKey", "RowKey", "ExpiresAt", "Status", "LeaseUntil"],
        )
        deleted = 0
        for row in rows:
            if deleted >= limit:
                break
            if float(row.get("ExpiresAt", 0)) >= cutoff:
                continue
            if row.get("Status") == "processing" and float(row.get("LeaseUntil") or 0) > now:
                continue  # a processor is at work on it right now: leave it to a later run
            with contextlib.suppress(ResourceNotFoundError):
                self._table.delete_entity(row["PartitionKey"], row["RowKey"])
            deleted += 1
        return deleted

    # -- operators -----------------------------------------------------------------------------------------

    def list_poison(self, limit: int = 32) -> list[dict[str, Any]]:
        """Peek (without taking) up to 32 poison messages, newest last."""
        out = []
        for item in self._poison.peek_messages(max_messages=min(limit, 32)):
            body = _decode(item.content)
            out.append({"id": item.id, "inserted_on": str(item.inserted_on), **_summary(body)})
        return out

    def show_poison(self, message_id: str) -> dict[str, Any]:
        for item in self._poison.peek_messages(max_messages=32):
            if item.id == message_id:
                return {"id": item.id, **_decode(item.content)}
        raise KeyError(message_id)

    def replay_poison(self, message_id: str) -> dict[str, Any]:
        """Move one poison message back to the work queue (its event record is reset so it is processed, unless it
        is done or another worker holds it)."""
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        for item in self._poison.receive_messages(max_messages=32, visibility_timeout=30):
            body = _decode(item.content)
            if item.id != message_id:
                continue
            for field_name in ("poison_reason", "poisoned_at", "dequeue_count"):
                body.pop(field_name, None)
            key = body["key"]
            with contextlib.suppress(Exception):
                entity = self._table.get_entity(key[:3], key)
                # A done event stays done: the replayed message is then skipped by the claim, never run twice. One
                # another worker holds under a live lease (a busy duplicate was poisoned) is left to that worker:
                # freeing its lease would let the replayed copy run beside it. Either way the replay is queued.
                held = entity.get("Status") == "processing" and float(entity.get("LeaseUntil") or 0) > self._clock()
                if entity.get("Status") != "done" and not held:
                    self._table.update_entity(
                        {"PartitionKey": key[:3], "RowKey": key, "Status": "queued", "LeaseUntil": 0},
                        mode=UpdateMode.MERGE,
                        etag=entity.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
            self._queue.send_message(json.dumps(body, separators=(",", ":")))
            self._poison.delete_message(item.id, item.pop_receipt)
            return _summary(body)
        raise KeyError(message_id)


def _decode(content: Any) -> dict[str, Any]:
    text = content if isinstance(content, str) else bytes(content).decode("utf-8")
    try:
        decoded: dict[str, Any] = json.loads(text)
        return decoded
    except ValueError:
        decoded = json.loads(base64.b64decode(text))
        return decoded


def _summary(body: dict[str, Any]) -> dict[str, Any]:
    return {
        k: body.get(k)
        for k in (
            "key",
            "tenant_id",
            "org_url",
            "message",
            "entity",
            "row_id",
            "correlation_id",
            "operation_id",
            "poison_reason",
            "poisoned_at",
        )
        if k in body
    }
