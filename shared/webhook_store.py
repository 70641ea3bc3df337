"""Durable storage of webhook events: the work queue, payload blobs for large events, the event table that makes
delivery idempotent, and the poison queue with each failure's reason.

One row per event identity in ``webhookevents``: written ``queued`` by the receiver after the queue accepted the
message, moved to ``processing`` and ``done`` by the processor under the row's ETag, so a duplicate delivery is
acknowledged without new work and a duplicate message is skipped.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.errors import S2SError

EVENTS_QUEUE = "webhook-events"
POISON_QUEUE = "webhook-events-poison"
EVENTS_TABLE = "webhookevents"
PAYLOAD_CONTAINER = "webhook-payloads"
# Queue messages hold 64 KB after base64; larger payloads go to a blob with a pointer in the message.
INLINE_LIMIT = 40 * 1024
PROCESSING_LEASE_SECONDS = 300


class StorageUnavailableError(S2SError):
    """Storage did not accept the write: nothing was stored, the caller must not acknowledge."""

    code = "storage_unavailable"


@dataclass(frozen=True)
class Claim:
    granted: bool
    reason: str  # "new", "retry", "done", "busy"


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
        dedupe_ttl_seconds: int = 7 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._poison = poison_queue
        self._table = table
        self._container = container
        self._ttl = dedupe_ttl_seconds
        self._clock = clock

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

        try:
            entity = self._table.get_entity(key[:3], key)
        except ResourceNotFoundError:
            return False
        except AzureError as exc:
            raise StorageUnavailableError("The event table could not be read.") from exc
        return float(entity.get("ExpiresAt", 0)) > self._clock()

    def enqueue(self, key: str, envelope: dict[str, Any], payload: bytes) -> None:
        """Store the event durably (queue message, plus a blob if large), then record its identity.

        Raises StorageUnavailableError when the queue or blob write fails; the identity is recorded only after
        the queue accepted the message, so a failure never marks an event seen.
        """
        from azure.core.exceptions import AzureError

        message = dict(envelope)
        try:
            if len(payload) > INLINE_LIMIT:
                self._container.upload_blob(name=f"{key}.json", data=payload, overwrite=True)
                message["payload_blob"] = f"{key}.json"
            else:
                message["payload"] = payload.decode("utf-8")
            self._queue.send_message(json.dumps(message, separators=(",", ":")))
        except AzureError as exc:
            raise StorageUnavailableError("The event could not be queued.") from exc
        # Once queued, the event is safe; if this record cannot be written, a duplicate delivery is queued again
        # and the processor's claim still keeps it from being processed twice.
        with contextlib.suppress(AzureError):
            self._table.upsert_entity(
                {
                    "PartitionKey": key[:3],
                    "RowKey": key,
                    "Status": "queued",
                    "ReceivedAt": _now_iso(),
                    "ExpiresAt": self._clock() + self._ttl,
                    "Attempts": 0,
                    "LastError": "",
                }
            )

    # -- processor side ------------------------------------------------------------------------------------

    def load_payload(self, message: dict[str, Any]) -> bytes:
        if "payload" in message:
            return str(message["payload"]).encode("utf-8")
        return bytes(self._container.download_blob(message["payload_blob"]).readall())

    def claim(self, key: str) -> Claim:
        """Take the event for processing. Not granted when it is done, or another worker holds a fresh lease."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        now = self._clock()
        try:
            entity = self._table.get_entity(key[:3], key)
        except ResourceNotFoundError:
            try:
                self._table.create_entity(
                    {
                        "PartitionKey": key[:3],
                        "RowKey": key,
                        "Status": "processing",
                        "ReceivedAt": _now_iso(),
                        "ExpiresAt": now + self._ttl,
                        "LeaseUntil": now + PROCESSING_LEASE_SECONDS,
                        "Attempts": 1,
                        "LastError": "",
                    }
                )
                return Claim(True, "new")
            except ResourceExistsError:
                return Claim(False, "busy")
        status = entity.get("Status")
        if status == "done":
            return Claim(False, "done")
        if status == "processing" and float(entity.get("LeaseUntil", 0)) > now:
            return Claim(False, "busy")
        try:
            self._table.update_entity(
                {
                    "PartitionKey": key[:3],
                    "RowKey": key,
                    "Status": "processing",
                    "LeaseUntil": now + PROCESSING_LEASE_SECONDS,
                    "Attempts": int(entity.get("Attempts", 0)) + 1,
                },
                mode=UpdateMode.MERGE,
                etag=entity.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            return Claim(False, "busy")
        return Claim(True, "retry")

    def complete(self, key: str) -> None:
        from azure.data.tables import UpdateMode

        self._table.update_entity(
            {"PartitionKey": key[:3], "RowKey": key, "Status": "done", "DoneAt": _now_iso(), "LeaseUntil": 0},
            mode=UpdateMode.MERGE,
        )

    def release(self, key: str, error: str) -> None:
        """Processing failed: free the lease so the retry can claim it, keep the reason."""
        from azure.data.tables import UpdateMode

        with contextlib.suppress(Exception):
            self._table.update_entity(
                {
                    "PartitionKey": key[:3],
                    "RowKey": key,
                    "Status": "failed",
                    "LeaseUntil": 0,
                    "LastError": error[:1000],
                },
                mode=UpdateMode.MERGE,
            )

    def to_poison(self, message: dict[str, Any], reason: str, dequeue_count: int) -> None:
        poisoned = {
            **message,
            "poison_reason": reason[:2000],
            "poisoned_at": _now_iso(),
            "dequeue_count": dequeue_count,
        }
        self._poison.send_message(json.dumps(poisoned, separators=(",", ":")))

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
        """Move one poison message back to the work queue (its event record is reset so it is processed)."""
        from azure.data.tables import UpdateMode

        for item in self._poison.receive_messages(max_messages=32, visibility_timeout=30):
            body = _decode(item.content)
            if item.id != message_id:
                continue
            for field_name in ("poison_reason", "poisoned_at", "dequeue_count"):
                body.pop(field_name, None)
            key = body["key"]
            with contextlib.suppress(Exception):
                self._table.update_entity(
                    {"PartitionKey": key[:3], "RowKey": key, "Status": "queued", "LeaseUntil": 0},
                    mode=UpdateMode.MERGE,
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
