"""Webhook claims on Azurite with the real table and queue clients: a worker that outlasts its lease and was taken
over leaves the event row as the new holder wrote it, a worker whose handlers run past the lease keeps it by renewal
(a second worker finds the event busy, and it is done once), and a duplicate message that keeps finding its event
busy goes to the poison queue with the reason on its last attempt (and its replay does not disturb the holder)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.bootstrap import use_services
from shared.dataverse.errors import DataverseUnreachableError
from shared.webhooks.lease import THREAD_NAME
from shared.webhooks.processing import HandlerRegistry, TransientProcessingError, WebhookProcessor
from shared.webhooks.store import (
    EVENTS_QUEUE,
    EVENTS_TABLE,
    PAYLOAD_CONTAINER,
    POISON_QUEUE,
    PROCESSING_LEASE_SECONDS,
    Claim,
    WebhookStore,
)
from tests.integration.test_webhooks import Hook, make_hook

pytestmark = pytest.mark.integration

MAX_DEQUEUE = 5


class Workers:
    """Two workers on the same storage: ``a`` now, ``b`` a lease later (so ``b`` may take over what ``a`` holds)."""

    def __init__(self, hook: Hook) -> None:
        storage = hook.services.storage
        self.hook = hook
        self.table = storage.table(EVENTS_TABLE)
        self.poison = storage.queue(POISON_QUEUE)
        self.registry = HandlerRegistry()
        self.runs: list[str] = []
        self.a = self._worker(time.time)
        self.b = self._worker(lambda: time.time() + PROCESSING_LEASE_SECONDS + 5)
        assert hook.deliver(hook.context()).status_code == 202
        self.message = hook.only_message()
        self.text = self.message.content
        self.key = json.loads(self.text)["key"]

    def _worker(self, clock: Any, renew_every: float | None = None) -> WebhookProcessor:
        storage = self.hook.services.storage
        store = WebhookStore(
            queue=storage.queue(EVENTS_QUEUE),
            poison_queue=storage.queue(POISON_QUEUE),
            table=storage.table(EVENTS_TABLE),
            container=storage.container(PAYLOAD_CONTAINER),
            clock=clock,
        )
        return WebhookProcessor(
            store=store,
            dataverse=self.hook.services.dataverse,
            changes_table=None,
            registry=self.registry,
            max_dequeue_count=MAX_DEQUEUE,
            **({"renew_every": renew_every} if renew_every is not None else {}),
        )

    def store(self, worker: WebhookProcessor) -> WebhookStore:
        return worker._store

    def row(self) -> dict[str, Any]:
        return dict(self.table.get_entity(self.key[:3], self.key))

    def poisoned(self) -> list[dict[str, Any]]:
        return [
            body
            for message in self.poison.peek_messages(max_messages=32)
            if (body := json.loads(message.content)).get("key") == self.key
        ]


@pytest.fixture
def workers(sandbox: Any, sandbox_env: Any, azurite: Any, tmp_path: Any) -> Iterator[Workers]:
    hook = make_hook(sandbox, azurite.connection_string, tmp_path)
    made = Workers(hook)
    yield made
    hook.services.storage.queue(EVENTS_QUEUE).delete_message(made.message)
    use_services(None)


def test_a_stale_workers_failure_leaves_the_event_done_by_the_worker_that_took_it_over(workers: Workers) -> None:
    @workers.registry.on("*", "*")
    def slow_then_failing(event: Any, tools: Any) -> None:
        workers.runs.append(event.key)
        if len(workers.runs) == 1:  # worker A outlasts its lease; B takes the event over and finishes it
            assert workers.b.process(workers.text, 1, "message-b") == "done"
            raise DataverseUnreachableError("down", org_url=workers.hook.org_url, is_transient=True)

    assert workers.a.process(workers.text, 1, "message-a") == "superseded"

    row = workers.row()
    assert row["Status"] == "done" and row["Owner"] == "message-b" and row["LastError"] == ""
    assert workers.poisoned() == []
    assert workers.a.process(workers.text, 2, "message-a") == "duplicate"
    assert len(workers.runs) == 2


def test_a_stale_workers_success_does_not_mark_done_an_event_another_worker_holds(workers: Workers) -> None:
    held: list[Claim] = []

    @workers.registry.on("*", "*")
    def slow(event: Any, tools: Any) -> None:
        held.append(workers.store(workers.b).claim(workers.key, owner="message-b"))  # B took over, still running

    assert workers.a.process(workers.text, 1, "message-a") == "superseded"

    row = workers.row()
    assert row["Status"] == "processing" and row["Owner"] == "message-b"
    assert row["LeaseUntil"] == pytest.approx(held[0].lease_until)
    assert row["Attempts"] == 2
    workers.store(workers.b).complete(held[0])  # B's own fenced complete still goes through
    assert workers.row()["Status"] == "done" and workers.row()["Owner"] == "message-b"


def test_a_busy_duplicate_goes_to_poison_with_the_reason_and_its_replay_leaves_the_holder_alone(
    workers: Workers,
) -> None:
    @workers.registry.on("*", "*")
    def record(event: Any, tools: Any) -> None:
        workers.runs.append(event.key)

    store = workers.store(workers.a)
    holder = store.claim(workers.key, owner="holder-message")
    for attempt in range(1, MAX_DEQUEUE):
        with pytest.raises(TransientProcessingError, match="Another worker"):
            workers.a.process(workers.text, attempt, "duplicate-message")
    assert workers.poisoned() == []

    assert workers.a.process(workers.text, MAX_DEQUEUE, "duplicate-message") == "poisoned"

    (poisoned,) = workers.poisoned()
    assert f"Event busy in another worker past {MAX_DEQUEUE} attempts" in poisoned["poison_reason"]
    assert poisoned["dequeue_count"] == MAX_DEQUEUE and poisoned["tenant_id"] == workers.hook.tenant
    assert workers.runs == []
    before = workers.row()
    assert before["Status"] == "processing" and before["Owner"] == "holder-message"

    # An operator replays the poisoned copy while the holder still runs: the holder's row is left as it was ...
    (listed,) = [m for m in store.list_poison() if m.get("key") == workers.key]
    store.replay_poison(listed["id"])
    assert workers.row() == before
    store.complete(holder)  # ... so the holder's fenced complete succeeds
    assert workers.row()["Status"] == "done"
    # ... and the replayed copy is a duplicate, never a second run.
    replayed = [
        m
        for m in workers.hook.services.storage.queue(EVENTS_QUEUE).receive_messages(
            max_messages=32, visibility_timeout=5
        )
        if json.loads(m.content).get("key") == workers.key
    ]
    assert len(replayed) == 1
    assert workers.a.process(replayed[0].content, 1, replayed[0].id) == "duplicate"
    workers.hook.services.storage.queue(EVENTS_QUEUE).delete_message(replayed[0])
    assert workers.runs == []


def test_a_busy_duplicate_whose_event_is_done_by_its_last_attempt_is_dropped(workers: Workers) -> None:
    store = workers.store(workers.a)
    holder = store.claim(workers.key, owner=f"holder-{uuid.uuid4()}")
    for attempt in range(1, MAX_DEQUEUE):
        with pytest.raises(TransientProcessingError):
            workers.a.process(workers.text, attempt, "duplicate-message")
    store.complete(holder)
    assert workers.a.process(workers.text, MAX_DEQUEUE, "duplicate-message") == "duplicate"
    assert workers.poisoned() == []
    assert workers.row()["Status"] == "done"


def test_the_queue_function_poisons_a_busy_duplicate_with_the_reason_on_the_hosts_last_dequeue(
    workers: Workers,
) -> None:
    """Through the queue-triggered function itself: the host's dequeue count reaches the processor, and the last
    attempt returns (the host deletes the message) after writing the poison message with its reason."""
    from azure.functions.queue import QueueMessage  # the host's message type, which carries dequeue_count

    from functions import webhooks as fn

    holder = workers.store(workers.a).claim(workers.key, owner="holder-message")
    limit = workers.hook.services.settings.webhook_max_dequeue_count

    def delivery(count: int) -> QueueMessage:
        return QueueMessage(id="duplicate-message", body=workers.text.encode(), dequeue_count=count)

    with pytest.raises(TransientProcessingError):
        fn.process_webhook_event(delivery(limit - 1))
    assert workers.poisoned() == []
    fn.process_webhook_event(delivery(limit))  # returns: nothing left for the host to poison without a reason

    (poisoned,) = workers.poisoned()
    assert f"busy in another worker past {limit} attempts" in poisoned["poison_reason"]
    assert workers.row()["Owner"] == "holder-message" and workers.row()["Status"] == "processing"
    workers.store(workers.a).complete(holder)
    assert workers.row()["Status"] == "done"


class MovableClock:
    """The real time plus an offset a test moves forward (the worker's view of a long handler run)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_a_handler_running_past_the_lease_keeps_the_event_by_renewal_and_it_is_done_once(workers: Workers) -> None:
    """Worker A renews on real daemon timers (every 50 ms here, on a clock the handler moves past the lease); worker
    B, whose clock is a lease past A's claim, finds the event busy while A runs, and A's completion goes through."""
    a_clock = MovableClock()
    a = workers._worker(a_clock, renew_every=0.05)
    seen_by_b: list[Claim] = []

    @workers.registry.on("*", "*")
    def slow(event: Any, tools: Any) -> None:
        workers.runs.append(event.key)
        first_lease = float(workers.row()["LeaseUntil"])
        a_clock.offset = PROCESSING_LEASE_SECONDS + 1  # A's handler is now past the lease its claim wrote ...
        deadline = time.monotonic() + 10
        while float(workers.row()["LeaseUntil"]) <= first_lease + PROCESSING_LEASE_SECONDS:
            assert time.monotonic() < deadline, "the lease was not renewed"
            time.sleep(0.05)
        # ... and B, a lease after A's claim, finds the event busy: its message is retried, not run.
        seen_by_b.append(workers.store(workers.b).claim(workers.key, owner="message-b"))
        with pytest.raises(TransientProcessingError, match="Another worker"):
            workers.b.process(workers.text, 1, "message-b")

    assert a.process(workers.text, 1, "message-a") == "done"

    assert not [t for t in threading.enumerate() if t.name == THREAD_NAME]  # renewal ended with the call
    (busy,) = seen_by_b
    assert not busy.granted and busy.reason == "busy"
    row = workers.row()
    assert row["Status"] == "done" and row["Owner"] == "message-a" and row["Attempts"] == 1
    assert row["LeaseUntil"] == 0 and row["LastError"] == ""
    assert workers.runs == [workers.key]  # the handlers ran once
    assert workers.b.process(workers.text, 2, "message-b") == "duplicate"
    assert workers.poisoned() == []
    assert workers.row()["Attempts"] == 1
