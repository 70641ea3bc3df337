"""The Dataverse stand-in's webhook sender (protocol §5): registrations per org, the journal each Web API
request writes its changes to, synchronous delivery inside the request, asynchronous delivery on a worker pool
once the response is sent (in order per org), and the record of every attempt.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable

from sandbox.counters import Counters
from sandbox.dataverse import errors
from sandbox.dataverse.events import RowChange
from sandbox.dataverse.org import OrgStore
from sandbox.dataverse.schema import TABLES, Column, Table
from sandbox.dataverse.webhooks.context import (
    MODE_SYNC,
    ContextBuilder,
    ContextUser,
    LookupResolver,
    PipelineEvent,
)
from sandbox.dataverse.webhooks.delivery import DeliveryJob, WebhookDelivery, WebhookSender
from sandbox.dataverse.webhooks.keyed_workers import KeyedWorkers
from sandbox.dataverse.webhooks.registration import WebhookRegistration

logger = logging.getLogger(__name__)

MAX_RECORDED_DELIVERIES = 100_000  # a benchmark's flood must not grow the log without bound
_STOP_GRACE_SECONDS = 5.0
_USER_LOOKUPS = frozenset({"ownerid", "createdby", "modifiedby", "createdonbehalfby", "modifiedonbehalfby"})


def lookup_resolver(store: OrgStore) -> LookupResolver:
    """Names the table a lookup points to; a customer lookup (account or contact) by where the id lives."""

    def resolve(column: Column, value: str) -> str:
        if column.attribute in _USER_LOOKUPS or not column.navigation:
            return "systemuser"
        targets = [target for _, target in column.navigation]
        found = next((target for target in targets if store.get(target, value) is not None), targets[0])
        return TABLES[found].logical_name

    return resolve


def _outcome(delivery: WebhookDelivery) -> str:
    return str(delivery.status) if delivery.status is not None else (delivery.error or "no response")


class WebhookHub:
    """Every org's webhooks and deliveries. Thread-safe."""

    def __init__(self, counters: Counters, workers: int = 4) -> None:
        self._counters = counters
        self._lock = threading.Lock()
        self._webhooks: dict[str, dict[str, WebhookRegistration]] = {}  # org URL -> webhook id -> registration
        self._deliveries: deque[WebhookDelivery] = deque(maxlen=MAX_RECORDED_DELIVERIES)
        self._sender = WebhookSender()
        self._workers = KeyedWorkers(workers, "webhooks")

    # -- registrations --------------------------------------------------------------------------

    def register(self, registration: WebhookRegistration) -> None:
        """Add a webhook built by sandbox.dataverse.webhooks.registration.new_registration (which validates it)."""
        with self._lock:
            self._webhooks.setdefault(registration.org_url, {})[registration.webhook_id] = registration
        logger.debug(
            "webhook %s registered on %s for %s", registration.webhook_id, registration.org_url, registration.entity
        )

    def unregister(self, org_url: str, webhook_id: str) -> WebhookRegistration | None:
        """The removed registration, or None when the org has no such webhook."""
        with self._lock:
            return self._webhooks.get(org_url, {}).pop(webhook_id.lower(), None)

    def find(self, org_url: str, webhook_id: str) -> WebhookRegistration | None:
        with self._lock:
            return self._webhooks.get(org_url, {}).get(webhook_id.lower())

    def _registrations(self, org_url: str) -> list[WebhookRegistration]:
        with self._lock:
            return list(self._webhooks.get(org_url, {}).values())

    def has_sync_steps(self, org_url: str) -> bool:
        return any(registration.mode == MODE_SYNC for registration in self._registrations(org_url))

    def matching(self, org_url: str, change: RowChange, *, every_attribute: bool = False) -> list[WebhookRegistration]:
        return [r for r in self._registrations(org_url) if r.takes(change, every_attribute=every_attribute)]

    # -- settings and records -------------------------------------------------------------------

    @property
    def timeout_seconds(self) -> float:
        return self._sender.timeout_seconds

    def set_timeout(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("the webhook timeout must be positive")
        self._sender.timeout_seconds = float(seconds)

    def deliveries(self, org_url: str | None = None) -> list[WebhookDelivery]:
        with self._lock:
            return [d for d in self._deliveries if org_url is None or d.org_url == org_url]

    def wait(self, timeout: float) -> None:
        """Block until every queued or announced asynchronous delivery is done. Raises TimeoutError."""
        if not self._workers.wait_idle(timeout):
            raise TimeoutError(f"webhook deliveries still outstanding after {timeout} s")

    def stop(self) -> None:
        """Let queued deliveries finish for a few seconds, then drop the rest and end the workers."""
        self._workers.stop(_STOP_GRACE_SECONDS)

    # -- building and delivering ----------------------------------------------------------------

    def jobs(
        self, store: OrgStore, event: PipelineEvent, registrations: list[WebhookRegistration]
    ) -> list[DeliveryJob]:
        """One job per webhook, its context built now: images show the row as the change left it."""
        builder = ContextBuilder(event, lookup_resolver(store))
        change = event.change
        return [
            DeliveryJob(
                webhook=registration,
                org_url=event.org.url,
                org_host=event.org.host,
                message=change.message,
                entity=change.table.logical_name,
                row_id=change.record_id,
                correlation_id=event.correlation_id,
                request_id=str(uuid.uuid4()),
                context=builder.build(registration.step(change.message), str(uuid.uuid4())),
            )
            for registration in registrations
        ]

    def deliver(self, job: DeliveryJob) -> list[WebhookDelivery]:
        """Send now, in this thread, and record every attempt."""
        self._counters.bump("webhook_event", org=job.org_url, entity=job.entity, message=job.message)
        attempts = self._sender.send(job)
        with self._lock:
            self._deliveries.extend(attempts)
        for attempt in attempts:
            # status: the HTTP status, or "timeout" / "connection_error" when no response came
            label = attempt.status if attempt.status is not None else (attempt.error or "connection_error")
            self._counters.bump("webhook_delivery", org=job.org_url, status=str(label).split(":")[0])
        last = attempts[-1]
        if not last.succeeded:
            # A failed asynchronous step is a System Job with statuscode 31 in Dataverse (protocol §5).
            logger.info(
                "webhook %s %s %s %s failed after %d attempt(s): %s",
                job.webhook.webhook_id,
                job.entity,
                job.message,
                job.row_id,
                len(attempts),
                _outcome(last),
            )
        return attempts

    def deliver_sync(self, job: DeliveryJob) -> None:
        """A synchronous step. Raises DataverseError when it fails, so the Web API rolls the change back."""
        last = self.deliver(job)[-1]
        if not last.succeeded:
            raise errors.webhook_failed(job.webhook.url, _outcome(last))

    def announce(self, count: int) -> None:
        """Asynchronous jobs that `enqueue(..., announced=True)` will bring; `wait` waits for them already."""
        self._workers.reserve(count)

    def enqueue(self, jobs: list[DeliveryJob], *, announced: bool = False) -> None:
        for job in jobs:
            self._workers.submit(job.org_url, functools.partial(self._deliver_quietly, job), reserved=announced)

    def _deliver_quietly(self, job: DeliveryJob) -> None:
        self.deliver(job)

    # -- entry points ---------------------------------------------------------------------------

    def journal(
        self, store: OrgStore, user: ContextUser, correlation_id: str, request_id: str | None
    ) -> WebhookJournal:
        return WebhookJournal(self, store, user, correlation_id, request_id)

    def emit(
        self,
        store: OrgStore,
        table: Table,
        message: str,
        row_id: str,
        user: ContextUser,
        *,
        padding_bytes: int = 0,
    ) -> list[str]:
        """Deliver an event for the row as it is now, without changing it (benchmarks, tests). An Update counts
        as touching every attribute. Synchronous steps run here (their failure is only recorded); the
        x-request-id of each matching webhook's delivery is returned.
        """
        row = store.get(table.entity_set, row_id)
        columns = tuple(c.name for c in table.columns if c.writable and row is not None and row.get(c.name) is not None)
        change = RowChange(
            message,
            table,
            row_id,
            before=row if message != "Create" else None,
            after=row if message != "Delete" else None,
            columns=columns,
        )
        registrations = self.matching(store.org.url, change, every_attribute=True)
        event = PipelineEvent(
            org=store.org,
            change=change,
            user=user,
            initiating_user=user,
            correlation_id=str(uuid.uuid4()),
            request_id=str(uuid.uuid4()),
            created_on=dt.datetime.now(dt.UTC),
            padding_bytes=padding_bytes,
        )
        jobs = self.jobs(store, event, registrations)
        for job in jobs:
            if job.webhook.mode == MODE_SYNC:
                self.deliver(job)
        self.enqueue([job for job in jobs if job.webhook.mode != MODE_SYNC])
        return [job.request_id for job in jobs]


class WebhookJournal:
    """One Web API request's view of the pipeline (sandbox.dataverse.events.ChangeJournal): synchronous steps
    run as each change is recorded; asynchronous ones wait for `hand_over`, so a rolled-back change set sends
    nothing.
    """

    def __init__(
        self, hub: WebhookHub, store: OrgStore, user: ContextUser, correlation_id: str, request_id: str | None
    ) -> None:
        self._hub = hub
        self._store = store
        self._user = user
        self._correlation_id = correlation_id
        self._request_id = request_id
        self._pending: list[DeliveryJob] = []

    def has_sync_steps(self) -> bool:
        return self._hub.has_sync_steps(self._store.org.url)

    def record(self, change: RowChange) -> None:
        registrations = self._hub.matching(self._store.org.url, change)
        if not registrations:
            return
        event = PipelineEvent(
            org=self._store.org,
            change=change,
            user=self._user,
            initiating_user=self._user,
            correlation_id=self._correlation_id,
            request_id=self._request_id,
            created_on=dt.datetime.now(dt.UTC),
        )
        for job in self._hub.jobs(self._store, event, registrations):
            if job.webhook.mode == MODE_SYNC:
                self._hub.deliver_sync(job)
            else:
                self._pending.append(job)

    def savepoint(self) -> int:
        return len(self._pending)

    def rollback(self, savepoint: int) -> None:
        del self._pending[savepoint:]

    def hand_over(self) -> Callable[[], None]:
        """Announce the committed asynchronous deliveries and return what queues them: call it once the
        response is on the wire (Dataverse's asynchronous service picks them up after the request).
        """
        jobs, self._pending = self._pending, []
        if not jobs:
            return lambda: None
        self._hub.announce(len(jobs))
        return lambda: self._hub.enqueue(jobs, announced=True)
