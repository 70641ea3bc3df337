"""The webhook processor and store on fakes: a worker whose lease ran out and was taken over settles nothing
(its complete/release are fenced by its claim's ETag), and a duplicate message that keeps finding its event busy is
dropped once the event is done or poisoned with the reason on its last attempt — asserted on the event row and the
poison queue."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import pytest

from shared.webhooks.processing import HandlerRegistry, TransientProcessingError, WebhookProcessor
from shared.webhooks.store import PROCESSING_LEASE_SECONDS, Claim, ClaimLostError, WebhookStore
from tests.unit import webhook_samples as samples
from tests.unit.fake_table import FakeTable

NOW = 1_800_000_000.0
MAX_DEQUEUE = 5
TENANT = "6d1f3a52-1c0e-4f8e-9b1d-5a1e0f3c2b10"
ORG_URL = "https://contoso.crm.dynamics.com"
PAYLOAD_MARK = "Glynn (sample)"  # a value inside the payload: it must never reach a log line


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class PoisonQueue:
    """QueueClient.send_message for the poison queue: keeps what was sent, decoded."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def send_message(self, content: str, **_: Any) -> None:
        self.messages.append(json.loads(content))


class NoQueue:
    def send_message(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("the processor never writes to the work queue")


class Clients:
    """DataverseClients.for_org: the handlers here never call Dataverse."""

    def for_org(self, tenant_id: str, org_url: str) -> object:
        return object()


class World:
    def __init__(self, max_dequeue: int = MAX_DEQUEUE) -> None:
        self.clock = Clock(NOW)
        self.table = FakeTable()
        self.poison = PoisonQueue()
        self.store = WebhookStore(
            queue=NoQueue(), poison_queue=self.poison, table=self.table, container=None, clock=self.clock
        )
        self.registry = HandlerRegistry()
        self.processor = WebhookProcessor(
            store=self.store,
            dataverse=Clients(),  # type: ignore[arg-type]
            changes_table=None,
            registry=self.registry,
            max_dequeue_count=max_dequeue,
        )
        body = samples.update_contact(CorrelationId="c0ffee00-0000-4000-8000-000000000001")
        self.key = hashlib.sha256(b"one event").hexdigest()
        self.text = json.dumps(
            {
                "v": 1,
                "key": self.key,
                "tenant_id": TENANT,
                "org_url": ORG_URL,
                "message": "Update",
                "entity": "contact",
                "correlation_id": body["CorrelationId"],
                "payload": json.dumps(body),
            }
        )
        self.runs: list[str] = []

    def row(self) -> dict[str, Any]:
        return dict(self.table.rows[(self.key[:3], self.key)])


# -- fix 1: complete and release are fenced by the claim --------------------------------------------------------


def test_a_claim_carries_the_etag_of_its_own_write() -> None:
    world = World()
    claim = world.store.claim(world.key, owner="message-a")
    assert claim.granted and claim.reason == "new" and claim.key == world.key
    assert claim.etag == world.table.etags[(world.key[:3], world.key)]
    world.store.release(claim, "boom")
    again = world.store.claim(world.key, owner="message-a")
    assert again.reason == "retry" and again.etag == world.table.etags[(world.key[:3], world.key)]
    world.store.complete(again)
    assert world.row()["Status"] == "done"


def test_a_stale_claim_can_neither_complete_nor_release_and_changes_nothing() -> None:
    world = World()
    stale = world.store.claim(world.key, owner="message-a")
    world.clock.now += PROCESSING_LEASE_SECONDS + 1  # worker A's lease runs out ...
    fresh = world.store.claim(world.key, owner="message-b")  # ... and worker B takes the event over
    assert fresh.granted
    before = world.row()

    with pytest.raises(ClaimLostError) as lost:
        world.store.complete(stale)
    assert lost.value.key == world.key
    with pytest.raises(ClaimLostError):
        world.store.release(stale, "A's late failure")
    assert world.row() == before  # still B's: processing, B's owner and lease, no error recorded

    world.store.complete(fresh)
    after_done = world.row()
    with pytest.raises(ClaimLostError):
        world.store.release(stale, "A's late failure")
    assert world.row() == after_done and after_done["Status"] == "done" and after_done["Owner"] == "message-b"


def test_completing_a_claim_that_was_not_granted_is_refused() -> None:
    world = World()
    world.store.claim(world.key, owner="message-a")
    busy = world.store.claim(world.key, owner="message-b")
    assert busy == Claim(False, "busy", world.key, lease_until=NOW + PROCESSING_LEASE_SECONDS)
    with pytest.raises(ValueError, match="granted"):
        world.store.complete(busy)
    assert world.row()["Status"] == "processing" and world.row()["Owner"] == "message-a"


def test_a_stale_workers_failure_does_not_reset_an_event_another_worker_finished(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World()

    @world.registry.on("*", "*")
    def slow_then_failing(event: Any, tools: Any) -> None:
        world.runs.append(event.key)
        if len(world.runs) == 1:  # worker A: outlasts its lease while worker B takes the event and finishes it
            world.clock.now += PROCESSING_LEASE_SECONDS + 1
            assert world.processor.process(world.text, 1, "message-b") == "done"
            raise ConnectionError("Dataverse went away")  # transient: today's code releases and retries

    with caplog.at_level(logging.INFO, logger="shared.webhooks.processing"):
        outcome = world.processor.process(world.text, 1, "message-a")

    assert outcome == "superseded"  # neither A's failure to retry nor a success
    row = world.row()
    assert row["Status"] == "done" and row["Owner"] == "message-b" and row["LastError"] == ""
    assert world.poison.messages == []
    assert world.processor.process(world.text, 2, "message-a") == "duplicate"  # A's retry, had it raised
    assert len(world.runs) == 2
    (record,) = [r for r in caplog.records if getattr(r, "outcome", None) == "superseded"]
    assert record.levelno == logging.WARNING
    assert record.event_key == world.key and record.lost_write == "release"  # type: ignore[attr-defined]
    assert world.key in record.getMessage()
    logged = record.getMessage() + json.dumps({k: str(v) for k, v in vars(record).items()})
    assert PAYLOAD_MARK not in logged


def test_a_stale_workers_permanent_failure_on_its_last_attempt_is_not_poisoned_over_the_new_holder() -> None:
    world = World()
    holder: list[Claim] = []

    @world.registry.on("*", "*")
    def failing_after_takeover(event: Any, tools: Any) -> None:
        world.clock.now += PROCESSING_LEASE_SECONDS + 1
        holder.append(world.store.claim(world.key, owner="message-b"))  # B is mid-run
        raise ValueError("a permanent failure")

    assert world.processor.process(world.text, MAX_DEQUEUE, "message-a") == "superseded"
    assert world.poison.messages == []  # B runs the event itself; a poisoned copy would have no owner
    row = world.row()
    assert row["Status"] == "processing" and row["Owner"] == "message-b" and row["LastError"] == ""
    world.store.complete(holder[0])
    assert world.row()["Status"] == "done"


def test_a_stale_workers_success_does_not_mark_done_an_event_another_worker_holds() -> None:
    world = World()
    holder: list[Claim] = []

    @world.registry.on("*", "*")
    def slow(event: Any, tools: Any) -> None:
        world.runs.append(event.key)
        world.clock.now += PROCESSING_LEASE_SECONDS + 1
        holder.append(world.store.claim(world.key, owner="message-b"))  # B took over and is still running

    assert world.processor.process(world.text, 1, "message-a") == "superseded"
    row = world.row()
    assert row["Status"] == "processing" and row["Owner"] == "message-b"
    assert row["LeaseUntil"] == holder[0].lease_until  # B's lease is intact
    world.store.complete(holder[0])  # B's own complete still goes through
    assert world.row()["Status"] == "done"


# -- fix 2: a duplicate that keeps finding its event busy ------------------------------------------------------


def run_duplicate(world: World, attempts: range) -> None:
    for attempt in attempts:
        with pytest.raises(TransientProcessingError, match="Another worker"):
            world.processor.process(world.text, attempt, "duplicate-message")


def test_a_busy_duplicate_is_retried_then_poisoned_with_the_reason_on_the_last_attempt() -> None:
    world = World()

    @world.registry.on("*", "*")
    def record(event: Any, tools: Any) -> None:
        world.runs.append(event.key)

    holder = world.store.claim(world.key, owner="holder-message")
    run_duplicate(world, range(1, MAX_DEQUEUE))
    assert world.poison.messages == []

    assert world.processor.process(world.text, MAX_DEQUEUE, "duplicate-message") == "poisoned"

    (poisoned,) = world.poison.messages
    assert poisoned["key"] == world.key and poisoned["dequeue_count"] == MAX_DEQUEUE
    assert f"busy in another worker past {MAX_DEQUEUE} attempts" in poisoned["poison_reason"]
    assert "1970" not in poisoned["poison_reason"] and "2027" in poisoned["poison_reason"]  # the holder's lease
    assert world.runs == []  # the duplicate never ran the handlers
    row = world.row()
    assert row["Status"] == "processing" and row["Owner"] == "holder-message" and row["Attempts"] == 1
    world.store.complete(holder)  # the holder is undisturbed
    assert world.row()["Status"] == "done"


def test_a_busy_duplicate_whose_event_is_done_by_its_last_attempt_is_dropped() -> None:
    world = World()
    holder = world.store.claim(world.key, owner="holder-message")
    run_duplicate(world, range(1, MAX_DEQUEUE))
    world.store.complete(holder)
    assert world.processor.process(world.text, MAX_DEQUEUE, "duplicate-message") == "duplicate"
    assert world.poison.messages == []
    assert world.row()["Status"] == "done" and world.row()["Owner"] == "holder-message"


def test_the_last_attempt_follows_the_configured_dequeue_count_and_a_count_past_it() -> None:
    world = World(max_dequeue=2)
    world.store.claim(world.key, owner="holder-message")
    run_duplicate(world, range(1, 2))
    assert world.processor.process(world.text, 2, "duplicate-message") == "poisoned"
    assert world.processor.process(world.text, 7, "another-copy") == "poisoned"  # the host's count ran past
    assert [m["dequeue_count"] for m in world.poison.messages] == [2, 7]
    assert all("busy in another worker" in m["poison_reason"] for m in world.poison.messages)
    assert world.row()["Owner"] == "holder-message"
