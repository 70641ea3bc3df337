"""The webhook processor and store on fakes: a worker whose lease ran out and was taken over settles nothing
(its complete/release are fenced by its claim's ETag), a duplicate message that keeps finding its event busy is
dropped once the event is done or poisoned with the reason on its last attempt, and the lease is renewed while the
handlers run (stopping on every exit, on a lost renewal and at MAX_HOLD_SECONDS) — asserted on the event row, the
table's conditional writes and the poison queue."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError, ServiceResponseError

from shared.webhooks.lease import MAX_HOLD_SECONDS, RENEW_EVERY_SECONDS, THREAD_NAME, LeaseRenewal
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


class Tick:
    """One pending timer of the fake schedule."""

    def __init__(self, at: float, action: Callable[[], None]) -> None:
        self.at = at
        self.action = action
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def join(self, timeout: float | None = None) -> None:
        return None


class Ticks:
    """The renewal's schedule on the fake clock: a timer fires, in the thread that moves the clock, when
    ``advance`` passes its time (the clock then reads that time while it runs)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pending: list[Tick] = []

    def __call__(self, delay: float, action: Callable[[], None]) -> Tick:
        tick = Tick(self.clock.now + delay, action)
        self.pending.append(tick)
        return tick

    def advance(self, seconds: float) -> None:
        end = self.clock.now + seconds
        while due := sorted((t for t in self.pending if not t.cancelled and t.at <= end), key=lambda t: t.at):
            self.pending.remove(due[0])
            self.clock.now = due[0].at
            due[0].action()
        self.clock.now = end

    def live(self) -> list[Tick]:
        return [t for t in self.pending if not t.cancelled]


class RecordingTable(FakeTable):
    """FakeTable that records every conditional update — the ETag it was made under, the fields, and whether the
    table accepted it — and can be told to fail the next lease-only writes the way storage fails."""

    def __init__(self) -> None:
        super().__init__()
        self.updates: list[dict[str, Any]] = []
        self.fail_renewals: list[Exception] = []  # raised by the next lease-only updates, before writing
        self.lose_answers: list[Exception] = []  # raised by the next lease-only updates, after writing

    def update_entity(self, entity: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        fields = {k: v for k, v in entity.items() if k not in ("PartitionKey", "RowKey")}
        record = {"etag": kwargs.get("etag"), "fields": fields, "accepted": False}
        self.updates.append(record)
        renewal = set(fields) == {"LeaseUntil"}
        if renewal and self.fail_renewals:
            raise self.fail_renewals.pop(0)
        written = super().update_entity(entity, *args, **kwargs)
        record["accepted"] = True
        record["written"] = written["etag"]
        if renewal and self.lose_answers:
            raise self.lose_answers.pop(0)
        return written

    def renewals(self) -> list[dict[str, Any]]:
        return [u for u in self.updates if set(u["fields"]) == {"LeaseUntil"}]


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
        self.ticks = Ticks(self.clock)
        self.table = RecordingTable()
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
            schedule=self.ticks,
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


# -- the lease is renewed while the handlers run ---------------------------------------------------------------


def test_the_lease_is_renewed_while_a_slow_handler_runs_so_a_second_worker_finds_the_event_busy() -> None:
    world = World()
    seen_by_b: list[Claim] = []

    @world.registry.on("*", "*")
    def slow(event: Any, tools: Any) -> None:
        world.runs.append("a")
        world.ticks.advance(PROCESSING_LEASE_SECONDS + 1)  # past the lease the claim wrote
        seen_by_b.append(world.store.claim(world.key, owner="message-b"))
        with pytest.raises(TransientProcessingError, match="Another worker"):
            world.processor.process(world.text, 1, "message-b")  # B's own message: retried, not run

    assert world.processor.process(world.text, 1, "message-a") == "done"

    assert world.runs == ["a"]  # the handlers ran once
    (busy,) = seen_by_b
    assert not busy.granted and busy.reason == "busy" and busy.lease_until > NOW + PROCESSING_LEASE_SECONDS + 1
    row = world.row()
    assert row["Status"] == "done" and row["Owner"] == "message-a" and row["Attempts"] == 1
    renewals = world.table.renewals()
    assert len(renewals) == int((PROCESSING_LEASE_SECONDS + 1) // RENEW_EVERY_SECONDS)
    assert all(r["accepted"] for r in renewals)
    # Each renewal was made under the ETag of the write before it, and the completion under the last renewal's.
    complete = world.table.updates[-1]
    assert complete["fields"]["Status"] == "done" and complete["accepted"]
    writes = [*renewals, complete]
    assert all(later["etag"] == earlier["written"] for earlier, later in itertools.pairwise(writes))


def test_renewal_stops_when_the_handlers_are_done() -> None:
    world = World()

    @world.registry.on("*", "*")
    def slow(event: Any, tools: Any) -> None:
        world.ticks.advance(RENEW_EVERY_SECONDS * 1.5)

    assert world.processor.process(world.text, 1, "message-a") == "done"
    writes = len(world.table.updates)
    assert world.ticks.live() == []
    world.ticks.advance(10 * PROCESSING_LEASE_SECONDS)
    assert len(world.table.updates) == writes and world.row()["Status"] == "done"


@pytest.mark.parametrize(
    ("failure", "transient"),
    [(ConnectionError("Dataverse went away"), True), (ValueError("a permanent failure"), False)],
)
def test_renewal_stops_when_a_handler_fails(failure: Exception, transient: bool) -> None:
    world = World()

    @world.registry.on("*", "*")
    def slow_then_failing(event: Any, tools: Any) -> None:
        world.ticks.advance(RENEW_EVERY_SECONDS * 1.5)  # one renewal
        raise failure

    if transient:
        with pytest.raises(TransientProcessingError):
            world.processor.process(world.text, 1, "message-a")
    else:
        assert world.processor.process(world.text, 1, "message-a") == "poisoned"
        (poisoned,) = world.poison.messages
        assert "a permanent failure" in poisoned["poison_reason"]
    row = world.row()
    # The release went through: it was made under the renewal's ETag, not the claim's.
    assert row["Status"] == "failed" and row["LeaseUntil"] == 0 and str(failure) in row["LastError"]
    (renewal,) = world.table.renewals()
    assert world.table.updates[-1]["etag"] != renewal["etag"] and world.table.updates[-1]["accepted"]
    writes = len(world.table.updates)
    assert world.ticks.live() == []
    world.ticks.advance(10 * PROCESSING_LEASE_SECONDS)
    assert len(world.table.updates) == writes and world.row()["Status"] == "failed"


def test_a_lost_renewal_stops_renewing_and_the_completion_is_superseded(caplog: pytest.LogCaptureFixture) -> None:
    world = World()

    @world.registry.on("*", "*")
    def slow(event: Any, tools: Any) -> None:
        world.ticks.advance(RENEW_EVERY_SECONDS * 1.5)  # one renewal goes through
        # An operator resets the row meanwhile (its ETag changes) ...
        world.table.update_entity(
            {"PartitionKey": world.key[:3], "RowKey": world.key, "Status": "queued", "LeaseUntil": 0}
        )
        world.ticks.advance(5 * PROCESSING_LEASE_SECONDS)  # ... so the next renewal is refused, and the last

    with caplog.at_level(logging.WARNING):
        assert world.processor.process(world.text, 1, "message-a") == "superseded"

    accepted = [r["accepted"] for r in world.table.renewals()]
    assert accepted == [True, False]  # renewing stopped at the refusal
    row = world.row()
    assert row["Status"] == "queued" and row["LeaseUntil"] == 0  # as the operator left it: nothing written over it
    assert world.ticks.live() == []
    lost = [r for r in caplog.records if "lost" in r.getMessage()]
    assert lost and all(world.key in r.getMessage() for r in lost)


def test_renewal_stops_at_the_maximum_hold_so_a_hung_handler_loses_the_event() -> None:
    world = World()
    taken_over: list[Claim] = []

    @world.registry.on("*", "*")
    def hung(event: Any, tools: Any) -> None:
        world.ticks.advance(MAX_HOLD_SECONDS)
        row = world.row()
        assert row["LeaseUntil"] == NOW + MAX_HOLD_SECONDS  # renewed up to the bound, never past it
        world.ticks.advance(5 * PROCESSING_LEASE_SECONDS)  # and not renewed again
        taken_over.append(world.store.claim(world.key, owner="message-b"))

    assert world.processor.process(world.text, 1, "message-a") == "superseded"

    renewals = world.table.renewals()
    assert len(renewals) == int((MAX_HOLD_SECONDS - PROCESSING_LEASE_SECONDS) / RENEW_EVERY_SECONDS)
    assert all(r["fields"]["LeaseUntil"] <= NOW + MAX_HOLD_SECONDS for r in renewals)
    (claim_b,) = taken_over
    assert claim_b.granted and claim_b.reason == "retry"
    row = world.row()
    assert row["Status"] == "processing" and row["Owner"] == "message-b" and row["Attempts"] == 2


def test_a_storage_failure_during_renewal_is_logged_without_the_payload_and_retried_at_the_next_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World()
    world.table.fail_renewals.append(ServiceRequestError("connection refused"))

    @world.registry.on("*", "*")
    def slow(event: Any, tools: Any) -> None:
        world.ticks.advance(PROCESSING_LEASE_SECONDS + 1)
        assert not world.store.claim(world.key, owner="message-b").granted  # still held: the retry renewed it

    with caplog.at_level(logging.WARNING, logger="shared.webhooks.lease"):
        assert world.processor.process(world.text, 1, "message-a") == "done"

    assert [r["accepted"] for r in world.table.renewals()] == [False, True, True]
    assert world.row()["Status"] == "done" and world.row()["Attempts"] == 1
    (record,) = caplog.records
    assert world.key in record.getMessage() and "ServiceRequestError" in record.getMessage()
    assert record.event_key == world.key  # type: ignore[attr-defined]
    logged = record.getMessage() + json.dumps({k: str(v) for k, v in vars(record).items()})
    assert PAYLOAD_MARK not in logged


def test_a_renewal_whose_answer_was_lost_is_confirmed_from_the_row_and_the_completion_goes_through() -> None:
    world = World()
    world.table.lose_answers.append(ServiceResponseError("read timed out"))  # written, answer lost

    @world.registry.on("*", "*")
    def slow(event: Any, tools: Any) -> None:
        world.ticks.advance(RENEW_EVERY_SECONDS * 2.5)  # the lost answer, then a renewal after reading the row

    assert world.processor.process(world.text, 1, "message-a") == "done"
    assert [r["accepted"] for r in world.table.renewals()] == [True, True]
    assert world.row()["Status"] == "done" and world.row()["Owner"] == "message-a"


def test_a_renewal_whose_answer_was_lost_is_confirmed_when_the_handlers_end_before_the_next_tick() -> None:
    world = World()
    world.table.lose_answers.append(ServiceResponseError("read timed out"))

    @world.registry.on("*", "*")
    def slow(event: Any, tools: Any) -> None:
        world.ticks.advance(RENEW_EVERY_SECONDS * 1.5)

    assert world.processor.process(world.text, 1, "message-a") == "done"
    assert world.row()["Status"] == "done"


def test_the_default_schedule_renews_on_daemon_timers_that_end_with_the_renewal() -> None:
    table = RecordingTable()
    store = WebhookStore(queue=NoQueue(), poison_queue=PoisonQueue(), table=table, container=None)
    claim = store.claim("k" * 64, owner="message-a")
    with LeaseRenewal(store, claim, every=0.01) as renewal:
        deadline = time.monotonic() + 5
        while renewal.renewals < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert renewal.renewals >= 2
    assert not [t for t in threading.enumerate() if t.name == THREAD_NAME]
    writes = len(table.updates)
    time.sleep(0.05)
    assert len(table.updates) == writes
    assert renewal.claim.etag == table.etags[("kkk", "k" * 64)]  # the latest hold: a fenced write goes through
    store.complete(renewal.claim)
    assert table.rows[("kkk", "k" * 64)]["Status"] == "done"


# -- the connection an event was accepted under -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accepted_under", "outcome"),
    [
        ({"connection": 0, "connection_id": "first"}, "done"),  # the same connection
        ({"connection": 0, "connection_id": "first"}, "poisoned"),  # removed and added again: count 0, new id
        ({"connection": 0, "connection_id": "first"}, "poisoned"),  # offboarded and connected again
        ({"connection": 0}, "done"),  # queued before the receiver wrote the id: the count alone decides
        ({}, "done"),  # queued before either
    ],
    ids=["same", "removed-and-added-again", "reconnected", "count-only", "neither"],
)
def test_an_event_is_processed_only_under_the_connection_that_accepted_it(
    accepted_under: dict[str, Any], outcome: str, request: pytest.FixtureRequest
) -> None:
    from shared.tenants.orgs import OrgRecord, OrgStatus

    now = {
        "same": OrgRecord(ORG_URL, OrgStatus.ACTIVE, "t", connection_id="first"),
        "removed-and-added-again": OrgRecord(ORG_URL, OrgStatus.ACTIVE, "t2", connection_id="second"),
        "reconnected": OrgRecord(ORG_URL, OrgStatus.ACTIVE, "t", reconnections=1, connection_id="third"),
        "count-only": OrgRecord(ORG_URL, OrgStatus.ACTIVE, "t", connection_id="second"),
        "neither": OrgRecord(ORG_URL, OrgStatus.ACTIVE, "t", reconnections=3, connection_id="fourth"),
    }[request.node.callspec.id]
    world = World()
    processor = WebhookProcessor(
        store=world.store,
        dataverse=Clients(),  # type: ignore[arg-type]
        changes_table=None,
        registry=world.registry,
        schedule=world.ticks,
        active_org=lambda tenant, org: now if (tenant, org) == (TENANT, ORG_URL) else None,
    )

    @world.registry.on("*", "*")
    def record(event: Any, tools: Any) -> None:
        world.runs.append(event.key)

    text = json.dumps(json.loads(world.text) | accepted_under)
    assert processor.process(text, 1, "message-a") == outcome
    assert world.runs == ([world.key] if outcome == "done" else [])
    if outcome == "poisoned":
        (poisoned,) = world.poison.messages
        assert "is no longer one of" in poisoned["poison_reason"] and world.row()["Status"] != "done"
    else:
        assert world.poison.messages == [] and world.row()["Status"] == "done"
