"""The timer's half of a fanned-out sweep with fakes: unit messages (and refusing malformed ones), fairness order,
slices, units carried over from a run still working on them, and the worker's handling of failures by attempt."""

from __future__ import annotations

import json

import pytest

from shared.jobs.fanout import PENDING_STALE_SECONDS, SweepScheduler, UnitRecord, order_units
from shared.jobs.units import SLICE_SIZE, InvalidUnitMessageError, SweepUnit, UnitResult, decode_units, encode_units
from shared.jobs.workers import SweepWorker
from shared.tenants.registry import Tenant, TenantStatus

RUN = "sync-20261207T101500Z-a1b2c3"


def tenant(n: int, orgs: int = 1, status: TenantStatus = TenantStatus.ACTIVE) -> Tenant:
    urls = tuple(f"https://t{n}o{i}.crm.dynamics.com" for i in range(orgs))
    return Tenant(f"{n:08d}-0000-0000-0000-000000000000", status, urls, "t", "t")


class FakeRegistry:
    def __init__(self, tenants: list[Tenant]) -> None:
        self.tenants = tenants

    def iter_tenants(self, *, status=None, page_size=500):
        return [t for t in self.tenants if status is None or t.status is status]

    def get_tenant(self, tenant_id):
        return next(t for t in self.tenants if t.tenant_id == tenant_id)


class FakeHistory:
    def __init__(self, records: dict[str, UnitRecord] | None = None) -> None:
        self.records = records or {}
        self.pending: list[SweepUnit] = []
        self.finished: list[tuple[str, bool]] = []

    def all(self, job):
        return self.records

    def mark_pending(self, units):
        self.pending.extend(units)

    def mark_finished(self, unit, *, ok):
        self.finished.append((unit.key, ok))


class FakeLedger:
    def __init__(self) -> None:
        self.started: list[tuple[str, str, int, int]] = []
        self.counted: list[tuple[str, bool, int]] = []

    def start(self, job, run_id, planned, carried_over=0):
        self.started.append((job, run_id, planned, carried_over))

    def unit_finished(self, run_id, key):
        return any(k == key for k, _, _ in self.counted)

    def finish_unit(self, run_id, key, *, ok, rows, throttle_waits, detail=""):
        self.counted.append((key, ok, rows))


class FakeQueue:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int | None]] = []

    def create_queue(self):
        return None

    def send_message(self, text, visibility_timeout=None):
        self.sent.append((text, visibility_timeout))


def test_a_unit_message_round_trips_and_a_slice_is_marked():
    units = [SweepUnit("sync", RUN, tenant(1).tenant_id, "https://t1o0.crm.dynamics.com", 3, 120, 2, 1)]
    assert decode_units(encode_units(units)) == (units, False)
    assert decode_units(encode_units(units, is_slice=True)) == (units, True)
    assert units[0].key == f"{tenant(1).tenant_id}|t1o0.crm.dynamics.com"
    assert units[0].continued(50, 1) == SweepUnit("sync", RUN, units[0].tenant_id, units[0].org_url, 4, 170, 3, 0)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("not json", "not JSON"),
        ({"v": 2}, "version-1"),
        ({"v": 1, "job": "purge", "run": RUN, "units": []}, "Unknown job"),
        ({"v": 1, "job": "sync", "run": "x' or true", "units": []}, "run id"),
        ({"v": 1, "job": "sync", "run": RUN, "units": [["t", "", 1, 0, 0, 0]] * 2}, "1 to"),
        (
            {"v": 1, "job": "sync", "run": RUN, "units": [["not a tenant!", "https://a.crm.dynamics.com", 1, 0, 0, 0]]},
            "tenant",
        ),
        ({"v": 1, "job": "sync", "run": RUN, "units": [["ab", "http://a.crm.dynamics.com", 1, 0, 0, 0]]}, "org URL"),
        ({"v": 1, "job": "sync", "run": RUN, "units": [["ab", "", 1, 0, 0, 0]]}, "names its org"),
        ({"v": 1, "job": "sync", "run": RUN, "units": [["ab", "https://a.crm.dynamics.com", 1, -5, 0, 0]]}, "counters"),
    ],
)
def test_a_malformed_message_is_refused_naming_the_problem(document, problem):
    text = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(InvalidUnitMessageError) as caught:
        decode_units(text)
    assert problem in caught.value.message


def test_order_is_oldest_last_success_first_and_never_succeeded_before_all():
    units = [SweepUnit("health", RUN, tenant(n).tenant_id) for n in range(4)]
    history = {
        units[0].key: UnitRecord(last_success=300.0),
        units[1].key: UnitRecord(last_success=100.0),  # did not finish last interval: oldest success
        units[3].key: UnitRecord(last_success=200.0),
    }  # units[2] never succeeded
    assert [u.tenant_id for u in order_units(units, history)] == [
        units[2].tenant_id,
        units[1].tenant_id,
        units[3].tenant_id,
        units[0].tenant_id,
    ]


def test_the_timer_sends_slices_in_fairness_order_and_carries_over_pending_units():
    tenants = [tenant(n, orgs=2 if n == 0 else 1) for n in range(250)] + [tenant(999, status=TenantStatus.CONSENTED)]
    now = 10_000_000.0
    stale, pending, late = tenants[5], tenants[6], tenants[7]
    org = lambda t: f"{t.tenant_id}|{t.org_urls[0].split('//')[1]}"  # noqa: E731
    history = FakeHistory(
        {
            org(pending): UnitRecord(last_success=5.0, pending_run="sync-x", pending_since=now - 60),
            org(stale): UnitRecord(
                last_success=5.0, pending_run="sync-x", pending_since=now - PENDING_STALE_SECONDS - 1
            ),
            org(late): UnitRecord(last_success=1.0),
            **{org(t): UnitRecord(last_success=1000.0 + n) for n, t in enumerate(tenants[8:250])},
        }
    )
    ledger, queue = FakeLedger(), FakeQueue()
    scheduler = SweepScheduler(
        registry=FakeRegistry(tenants), history=history, ledger=ledger, queue=queue, clock=lambda: now
    )
    run = scheduler.start("sync")
    assert (run.planned, run.carried_over) == (250, 1)  # 251 active orgs, the pending one carried over
    assert ledger.started == [("sync", run.run_id, 250, 1)]
    assert run.messages == len(queue.sent) == 3  # slices of SLICE_SIZE, none delayed
    units = []
    for text, delay in queue.sent:
        decoded, is_slice = decode_units(text)
        assert is_slice and delay is None and len(decoded) <= SLICE_SIZE
        units.extend(decoded)
    keys = [u.key for u in units]
    assert org(pending) not in keys and org(stale) in keys  # a stale pending mark does not hold a unit back
    # Never succeeded first (tenant 0's two orgs and tenants 1-4), then the oldest success.
    assert keys.index(org(late)) == 6 and keys[7] == org(stale)
    assert all(u.run_id == run.run_id for u in units)


def make_worker(work, *, max_dequeue=3, history=None, ledger=None, queue=None, poison=None, recorded=None):
    leases = {}

    class LeaseTable:  # enough of a table for UnitLease: create, get, conditional update, delete
        def create_entity(self, entity):
            key = (entity["PartitionKey"], entity["RowKey"])
            if key in leases:
                from azure.core.exceptions import ResourceExistsError

                raise ResourceExistsError("exists")
            leases[key] = entity
            return {"etag": "1"}

        def delete_entity(self, pk, rk, **_):
            leases.pop((pk, rk), None)

    return SweepWorker(
        queue=queue or FakeQueue(),
        poison_queue=poison or FakeQueue(),
        ledger=ledger or FakeLedger(),
        history=history or FakeHistory(),
        lease_table=LeaseTable(),
        work={"sync": work, "health": work},
        record_failure=lambda unit, reason: (recorded if recorded is not None else []).append((unit.tenant_id, reason)),
        max_dequeue_count=max_dequeue,
        lease_seconds=60,
        time_budget_seconds=60,
    )


def test_a_failing_unit_is_retried_by_the_host_then_poisoned_with_its_reason_on_the_last_attempt():
    from shared.dataverse.errors import DataverseError

    def work(unit, past_deadline, lease):
        raise DataverseError("The org said no.", org_url=unit.org_url, status_code=403, error_code="0x80040220")

    ledger, history, poison, recorded = FakeLedger(), FakeHistory(), FakeQueue(), []
    worker = make_worker(work, ledger=ledger, history=history, poison=poison, recorded=recorded)
    unit = SweepUnit("sync", RUN, tenant(1).tenant_id, "https://t1o0.crm.dynamics.com")
    text = encode_units([unit])
    for attempt in (1, 2):
        with pytest.raises(DataverseError):
            worker.handle(text, attempt)
        assert ledger.counted == [] and poison.sent == []  # the host tries again: nothing recorded yet
    assert worker.handle(text, 3) == "poisoned"
    (poisoned,) = [json.loads(t) for t, _ in poison.sent]
    assert poisoned["dequeue_count"] == 3 and "The org said no." in poisoned["poison_reason"]
    assert decode_units(json.dumps(poisoned["message"])) == ([unit], False)
    assert ledger.counted == [(unit.key, False, 0)] and history.finished == [(unit.key, False)]
    assert recorded and recorded[0][0] == unit.tenant_id and "The org said no." in recorded[0][1]


def test_a_paused_unit_queues_its_continuation_and_is_not_counted_yet():
    queue, ledger = FakeQueue(), FakeLedger()
    worker = make_worker(lambda u, d, lease: UnitResult(True, 40, 2, finished=False), queue=queue, ledger=ledger)
    unit = SweepUnit("sync", RUN, tenant(1).tenant_id, "https://t1o0.crm.dynamics.com", segment=2, rows=100)
    assert worker.handle(encode_units([unit]), 1) == "continued"
    ((text, _),) = queue.sent
    assert decode_units(text) == ([unit.continued(40, 2)], False) and ledger.counted == []


def test_a_malformed_message_goes_to_poison_at_once():
    poison = FakeQueue()
    assert make_worker(lambda *a: UnitResult(), poison=poison).handle('{"v":1,"job":"nope"}', 1) == "poisoned"
    assert "Unknown job" in json.loads(poison.sent[0][0])["poison_reason"]
