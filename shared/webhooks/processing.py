"""Processing queued webhook events: claim once, dispatch by (table, message) to handlers, retry what is
transient, and send what cannot succeed to the poison queue with its reason.

While the handlers run, the claim's lease is renewed (shared.webhooks.lease), so a second worker finds the event
busy rather than running it again. A claim whose lease was lost anyway (renewal failing, a run past
MAX_HOLD_SECONDS, an operator's replay) settles nothing: its ``complete``/``release`` are fenced by the latest ETag,
and the outcome is ``superseded`` (the new holder's message settles the event). A duplicate message
that keeps finding the event busy is retried by the host and, on its last allowed attempt, dropped when the event is
done by then or poisoned with the reason — never left for the host to poison without one.

Handlers are plain functions registered in code::

    @handlers.on("account", "Update")
    def push_account_to_erp(event: WebhookEvent, tools: HandlerTools) -> None: ...

``"*"`` matches any table or message. Handlers run in registration order and must be idempotent: an event is
processed once in the normal course, but a crash after a handler's side effect and before completion means the
retry runs the handlers again.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.dataverse.client import DataverseClient
from shared.dataverse.clients import DataverseClients
from shared.dataverse.errors import DataverseError
from shared.errors import CredentialError, S2SError, TokenAcquisitionError
from shared.telemetry import dims
from shared.tenants.orgs import OrgRecord
from shared.webhooks.intake import envelope_from_message
from shared.webhooks.lease import MAX_HOLD_SECONDS, RENEW_EVERY_SECONDS, LeaseRenewal, Schedule, timer_schedule
from shared.webhooks.remote_context import ExecutionContext, InvalidContextError, parse_context
from shared.webhooks.store import Claim, ClaimLostError, StorageUnavailableError, WebhookStore

logger = logging.getLogger(__name__)

CHANGES_TABLE = "processedchanges"
# Entity set names of the tables the shipped handlers know; others fall back to the logical name + "s".
ENTITY_SETS = {"account": "accounts", "contact": "contacts", "opportunity": "opportunities", "lead": "leads"}


class OrgNoLongerActiveError(S2SError):
    """The event's org was offboarded or removed after the event was accepted: it goes to poison, unprocessed."""

    code = "org_not_active"


class TransientProcessingError(S2SError):
    code = "transient_processing_error"


@dataclass
class WebhookEvent:
    tenant_id: str
    org_url: str
    key: str
    context: ExecutionContext
    truncated: bool
    row: dict[str, Any] | None = None  # the full row, when a handler re-read it
    notes: dict[str, Any] = field(default_factory=dict)
    received_us: int | None = None  # when the receiver accepted it (µs since the epoch); None in older messages


@dataclass
class HandlerTools:
    """What handlers may use: a Dataverse client for the event's org (impersonating the initiating user when
    configured) and the table for processed-change records."""

    dataverse: DataverseClient
    caller_object_id: str | None
    changes_table: Any


Handler = Callable[[WebhookEvent, HandlerTools], None]


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: list[tuple[str, str, Handler]] = []

    def on(self, table: str, message: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._handlers.append((table.lower(), message.lower(), handler))
            return handler

        return register

    def for_event(self, table: str, message: str) -> list[Handler]:
        t, m = table.lower(), message.lower()
        return [h for ht, hm, h in self._handlers if ht in ("*", t) and hm in ("*", m)]


handlers = HandlerRegistry()


@handlers.on("*", "*")
def reread_truncated_row(event: WebhookEvent, tools: HandlerTools) -> None:
    """Over 256 KB Dataverse strips parameters and images (protocol.md §5): read the row itself instead."""
    if not event.truncated or event.context.message_name.lower() == "delete":
        return
    entity_set = ENTITY_SETS.get(event.context.primary_entity_name, event.context.primary_entity_name + "s")
    event.row = tools.dataverse.get_row(
        entity_set, event.context.primary_entity_id, caller_object_id=tools.caller_object_id
    )
    event.notes["reread"] = True


@handlers.on("*", "*")
def record_processed_change(event: WebhookEvent, tools: HandlerTools) -> None:
    """Keep a per-tenant record of every processed change (the feed an integration builds on)."""
    context = event.context
    changed = sorted(event.row) if event.row is not None else context.changed_attributes
    # Newest first, and keyed on when the event was *received*, not processed: a message processed again (its
    # earlier attempt ended before it was marked done) overwrites its own record instead of adding a second.
    inverted = 10**17 - (event.received_us if event.received_us is not None else int(time.time() * 1_000_000))
    tools.changes_table.upsert_entity(
        {
            "PartitionKey": event.tenant_id,
            "RowKey": f"{inverted:017d}-{event.key[:16]}",
            "EventKey": event.key,
            "OrgUrl": event.org_url,
            "Entity": context.primary_entity_name,
            "Message": context.message_name,
            "RowId": context.primary_entity_id,
            "ChangedAttributes": json.dumps(changed)[:30000],
            "CorrelationId": context.correlation_id or "",
            "OperationId": context.operation_id or "",
            "InitiatingUserObjectId": context.initiating_user_object_id or "",
            "Truncated": event.truncated,
            "ReRead": bool(event.notes.get("reread")),
        }
    )


class WebhookProcessor:
    def __init__(
        self,
        *,
        store: WebhookStore,
        dataverse: DataverseClients,
        changes_table: Any,
        registry: HandlerRegistry = handlers,
        impersonate_initiating_user: bool = False,
        max_dequeue_count: int = 5,
        active_org: Callable[[str, str], OrgRecord | None] | None = None,
        renew_every: float = RENEW_EVERY_SECONDS,
        max_hold: float = MAX_HOLD_SECONDS,
        schedule: Schedule = timer_schedule,
    ) -> None:
        self._store = store
        # The lease renewal while handlers run: every ``renew_every`` seconds, for at most ``max_hold`` after the
        # claim, on ticks from ``schedule`` (daemon timers; tests pass ticks driven by a fake clock).
        self._renew_every = renew_every
        self._max_hold = max_hold
        self._schedule = schedule
        # (tenant id, org URL) -> its record while it is an active org of an active tenant, else None. Asked again
        # here because an event may wait in the queue while its org is offboarded or removed (or the receiver's lookup
        # was cached), and it is processed only under the connection that accepted it.
        self._active_org = active_org
        self._dataverse = dataverse
        self._changes = changes_table
        self._registry = registry
        self._impersonate = impersonate_initiating_user
        self._max_dequeue = max_dequeue_count

    def process(self, text: str, dequeue_count: int, message_id: str | None = None) -> str:
        """Returns "done", "duplicate", "poisoned" or "superseded" (this worker's claim was taken over before it
        could settle the event: nothing written, the new holder settles it); raises TransientProcessingError to
        have the host retry.

        ``dequeue_count`` is the queue message's (the host's count, compared with ``max_dequeue_count``, which must
        equal host.json ``maxDequeueCount``). ``message_id`` (the queue message's id) lets a redelivery of the same
        message take over the lease its own earlier, ended attempt left behind."""
        try:
            envelope = envelope_from_message(text)
        except ValueError:
            self._store.to_poison(
                {"key": f"malformed-{uuid.uuid4()}", "raw": text[:4000]},
                "The message is not a webhook event envelope.",
                dequeue_count,
            )
            return "poisoned"
        key = envelope["key"]
        fields = (
            envelope.get("tenant_id"),
            envelope.get("org_url"),
            envelope.get("correlation_id"),
            envelope.get("operation_id"),
        )
        received = envelope.get("received_us")

        def outcome(event: str, **measures: str | int | None) -> dict[str, str | int | float | bool]:
            age = time.time() * 1000 - received / 1000 if isinstance(received, int) else None
            return dims(
                event,
                tenant_id=envelope.get("tenant_id"),
                org=envelope.get("org_url"),
                correlation_id=envelope.get("correlation_id"),
                operation_id=envelope.get("operation_id"),
                message_name=envelope.get("message"),
                entity=envelope.get("entity"),
                attempt=dequeue_count,
                age_ms=round(age, 1) if age is not None else None,  # since the receiver stored it
                measures=measures,
            )

        claim = self._store.claim(key, owner=message_id)
        if not claim.granted:
            if claim.reason == "done":
                logger.info(
                    "Webhook event already processed: tenant %s org %s correlation %s operation %s",
                    *fields,
                    extra=outcome("webhook.processed", outcome="duplicate"),
                )
                return "duplicate"
            if dequeue_count < self._max_dequeue:
                raise TransientProcessingError("Another worker is processing this event.")
            # The last attempt the host allows: raising now would have the host poison the message without a
            # reason. The claim just re-read the row, so the event is neither done nor free: this copy goes to
            # poison with the reason, unprocessed. Nothing is lost — the worker holding the lease holds its own
            # message of the same event, which settles it (done, retried, or poisoned with its own reason).
            reason = _busy_reason(claim, dequeue_count)
            self._store.to_poison(envelope, reason, dequeue_count)
            logger.error(
                "Webhook event busy in another worker at the last attempt (%d), copy poisoned: "
                "tenant %s org %s correlation %s operation %s",
                dequeue_count,
                *fields,
                extra=outcome("webhook.processed", outcome="poisoned", reason=reason, event_key=key),
            )
            return "poisoned"

        def superseded(lost: ClaimLostError, write: str) -> str:
            # The key and dimensions only: never the payload.
            logger.warning(
                "Webhook event %s taken over by another worker before this one's %s: nothing written "
                "(tenant %s org %s correlation %s operation %s)",
                lost.key,
                write,
                *fields,
                extra=outcome("webhook.processed", outcome="superseded", lost_write=write, event_key=lost.key),
            )
            return "superseded"

        # Renewed until the handlers are done, whichever way they end; ``renewal.claim`` is then the latest hold.
        renewal = LeaseRenewal(
            self._store, claim, every=self._renew_every, max_hold=self._max_hold, schedule=self._schedule
        )
        try:
            with renewal:
                self._run_handlers(envelope)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"[:1000]
            try:
                self._store.release(renewal.claim, reason)
            except ClaimLostError as lost:
                # Not this worker's failure to retry or poison any more: the holder runs the event again.
                return superseded(lost, "release")
            if _is_transient(exc) and dequeue_count < self._max_dequeue:
                logger.warning(
                    "Webhook event failed (attempt %d, will retry): tenant %s org %s correlation %s operation %s: %s",
                    dequeue_count,
                    *fields,
                    reason,
                    extra=outcome("webhook.processed", outcome="retry", reason=reason),
                )
                raise TransientProcessingError(reason) from exc
            self._store.to_poison(envelope, reason, dequeue_count)
            logger.error(
                "Webhook event poisoned after %d attempt(s): tenant %s org %s correlation %s operation %s: %s",
                dequeue_count,
                *fields,
                reason,
                extra=outcome("webhook.processed", outcome="poisoned", reason=reason),
            )
            return "poisoned"
        try:
            self._store.complete(renewal.claim)
        except ClaimLostError as lost:
            # The handlers ran (they are idempotent), but the event is not this worker's to mark done.
            return superseded(lost, "complete")
        logger.info(
            "Webhook event processed: tenant %s org %s correlation %s operation %s",
            *fields,
            extra=outcome("webhook.processed", outcome="done"),
        )
        return "done"

    def _run_handlers(self, envelope: dict[str, Any]) -> None:
        """Build the event, check its org, and run its handlers in registration order; raises what they raise."""
        event = self._event(envelope)
        if self._active_org is not None:
            org = self._active_org(event.tenant_id, event.org_url)
            if org is None:
                raise OrgNoLongerActiveError(
                    f"{event.org_url} is no longer an active org of tenant {event.tenant_id}: not processed."
                )
            if _accepted_under_another_connection(envelope, org):
                # Offboarded (or removed) and onboarded again since: the receiver's cached lookup may have let in a
                # secret that ended with the old connection, so the event is not believed under the new one.
                raise OrgNoLongerActiveError(
                    f"{event.org_url} was disconnected and connected again after the event was accepted: the "
                    f"connection it was accepted under is no longer one of tenant {event.tenant_id}'s. Not processed."
                )
        client = self._dataverse.for_org(event.tenant_id, event.org_url)
        # The initiating user comes from the body: believed only when the delivery was authenticated with the
        # org's own secret (shared.webhooks.intake), never on the function key alone.
        trusted = envelope.get("authenticated") is True
        caller = event.context.initiating_user_object_id if self._impersonate and trusted else None
        tools = HandlerTools(client, caller, self._changes)
        for handler in self._registry.for_event(event.context.primary_entity_name, event.context.message_name):
            handler(event, tools)

    def _event(self, envelope: dict[str, Any]) -> WebhookEvent:
        payload = self._store.load_payload(envelope)
        try:
            context = parse_context(json.loads(payload))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidContextError("The stored payload is not JSON.") from exc
        received = envelope.get("received_us")
        return WebhookEvent(
            envelope["tenant_id"],
            envelope["org_url"],
            envelope["key"],
            context,
            bool(envelope.get("truncated")),
            received_us=received if isinstance(received, int) and not isinstance(received, bool) else None,
        )


def _accepted_under_another_connection(envelope: dict[str, Any], org: OrgRecord) -> bool:
    """Whether the envelope names a connection of the org other than its current one: its count (a disconnected org
    connected again) or its id (also an org removed and added again, whose count starts over). Envelopes queued
    before the receiver wrote one of them are not compared on it. A rotation changes neither."""
    count = envelope.get("connection")
    identity = envelope.get("connection_id")
    return (count is not None and count != org.reconnections) or (
        identity is not None and identity != org.connection_id
    )


def _busy_reason(claim: Claim, dequeue_count: int) -> str:
    held = (
        f" (its lease runs until {datetime.fromtimestamp(claim.lease_until, UTC).isoformat(timespec='seconds')})"
        if claim.lease_until
        else ""
    )
    return (
        f"Event busy in another worker past {dequeue_count} attempts{held}: this copy was not processed; the "
        "holder's own message settles the event. Check the event record before replaying."
    )


def _is_transient(exc: BaseException) -> bool:
    from azure.core.exceptions import AzureError

    if isinstance(exc, DataverseError | TokenAcquisitionError | CredentialError):
        return bool(exc.is_transient)
    return isinstance(exc, StorageUnavailableError | AzureError | TransientProcessingError | ConnectionError)
