"""Fanned-out sweeps against the Dataverse emulator and Azurite: the timer's run through the real queue, worked by
the in-process runner (the Functions host's stand-in): every unit done once, the aggregated summary, continuation
after the time budget, a poisoned unit, two timers over each other, and the CLI's status."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import replace

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.functions.timer import TimerRequest

from shared.bootstrap import build_services, use_services
from shared.jobs.queue_runner import LocalQueueRunner
from shared.jobs.units import SWEEP_POISON_QUEUE, SWEEP_QUEUE
from shared.jobs.workers import SweepWorker
from shared.tenants.orgs import OrgStatus
from shared.tenants.registry import TenantRegistry, TenantStatus
from tests.integration.conftest import app_with_certificate, cert_file_settings, customer_org

pytestmark = pytest.mark.integration

ROWS = 250
PAGE = 100


class Fleet:
    """Tenants of one app, each with one or more orgs of ``ROWS`` accounts, registered active."""

    def __init__(self, sandbox, azurite, tmp_path, *, tenants: int = 3, **overrides):
        st = sandbox.state
        self.sandbox = sandbox
        self.client_id, _, cert = app_with_certificate(st, "Fanout test", tmp_path)
        self.settings = cert_file_settings(
            sandbox,
            self.client_id,
            cert,
            storage_connection_string=azurite.connection_string,
            sync_tables=(("accounts", ("accountid", "name")),),
            sync_page_size=PAGE,
            sync_container=f"fan{uuid.uuid4().hex[:8]}",
            dataverse_retry_budget_seconds=20,
            webhook_max_dequeue_count=2,
            **overrides,
        )
        self.services = build_services(self.settings)
        # A registry of this test's own (the session's Azurite holds other tests' tenants, of other apps): a sweep
        # over "every active tenant" is then over this fleet.
        suffix = uuid.uuid4().hex[:8]
        storage = self.services.storage
        self.services._registry = TenantRegistry(storage.table(f"tenants{suffix}"), storage.table(f"history{suffix}"))
        self.services._registry.create_tables()
        use_services(self.services)
        self.orgs: list[tuple[str, str]] = []
        for n in range(tenants):
            tenant, org_url, _ = customer_org(st, self.client_id, f"fan{n}", rows=ROWS)
            orgs = [org_url]
            if n == 0:  # a tenant with two orgs: two units
                second = f"https://fan0b{uuid.uuid4().hex[:8]}.crm.dynamics.com"
                st.add_org(tenant, second)
                st.add_application_user(second, self.client_id)
                st.seed_rows(second, "accounts", ROWS)
                orgs.append(second)
            registry = self.services.registry
            for status in (TenantStatus.PENDING_CONSENT, TenantStatus.CONSENTED, TenantStatus.ACTIVE):
                registry.record(tenant, status, reason="test", actor="test", org_url=orgs[0])
            for org in orgs:
                if org != orgs[0]:
                    registry.record(tenant, TenantStatus.ACTIVE, reason="test", actor="test", org_url=org)
                registry.set_org_status(tenant, org, OrgStatus.ACTIVE, reason="WhoAmI ok", actor="test")
                self.orgs.append((tenant, org))
        self.tenants = sorted({t for t, _ in self.orgs})
        per_tenant = Counter(t for t, _ in self.orgs)
        self.single = [t for t in self.tenants if per_tenant[t] == 1]  # tenants of one org: one unit each
        self.clear_queues()

    def clear_queues(self):
        for name in (SWEEP_QUEUE, SWEEP_POISON_QUEUE):
            queue = self.services.storage.queue(name)
            with contextlib.suppress(ResourceExistsError):
                queue.create_queue()
            queue.clear_messages()

    def runner(self, worker=None, **options):
        options.setdefault("batch_size", 4)
        options.setdefault("new_batch_threshold", 2)
        options.setdefault("retry_visibility", 1)
        options.setdefault("max_dequeue_count", self.settings.webhook_max_dequeue_count)
        return LocalQueueRunner(
            self.services.sweep_queue(),
            (worker or self.services.sweep_worker).handle,
            poison_queue=self.services.storage.queue(SWEEP_POISON_QUEUE),
            **options,
        )

    def work_until_finished(self, *run_ids, worker=None, max_seconds=60, **options):
        ledger = self.services.run_ledger
        stats = self.runner(worker, **options).run(
            until=lambda: all(ledger.get_status(r, with_failures=False).finished for r in run_ids),
            max_seconds=max_seconds,
        )
        return stats, [ledger.get_status(r) for r in run_ids]

    def sink_rows(self):
        """[(tenant, org host, run, page, [upserted ids])] from the NDJSON sink."""
        container = self.services.storage.container(self.settings.sync_container)
        pages = []
        for blob in container.list_blobs():
            tenant, host, _table, run, name = blob.name.split("/")
            lines = container.download_blob(blob.name).readall().decode().splitlines()
            ids = [json.loads(x)["row"]["accountid"] for x in lines if json.loads(x)["op"] == "upsert"]
            pages.append((tenant, host, run, int(name.split(".")[0]), ids))
        return pages

    def expected_ids(self):
        return Counter(r["accountid"] for _, org in self.orgs for r in self.sandbox.state.rows(org, "accounts"))


class RecordingSink:
    """The real sink, recording for every write the unit (tenant, org) and the interval it was written in, so
    overlapping work on one unit would show."""

    def __init__(self, inner):
        self.inner = inner
        self.lock = threading.Lock()
        self.intervals: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        self.active: Counter = Counter()
        self.max_active: Counter = Counter()

    def write_page(self, **page):
        key = (page["tenant_id"], page["org_url"])
        with self.lock:
            self.active[key] += 1
            self.max_active[key] = max(self.max_active[key], self.active[key])
        started = time.monotonic()
        try:
            time.sleep(0.02)  # widen the window in which a second worker on the same unit would overlap
            self.inner.write_page(**page)
        finally:
            with self.lock:
                self.active[key] -= 1
                self.intervals[key].append((started, time.monotonic()))


@pytest.fixture
def fleet(sandbox, sandbox_env, azurite, tmp_path):
    built = Fleet(sandbox, azurite, tmp_path)
    yield built
    built.clear_queues()
    use_services(None)


def summary_lines(caplog, run_id):
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sweep summary ")]
    return [json.loads(x.removeprefix("sweep summary ")) for x in lines if run_id in x]


def test_the_timer_only_enqueues_and_queue_workers_sync_every_unit_once(fleet, caplog):
    caplog.set_level(logging.INFO)
    from functions.jobs import sync_sweep

    started = time.perf_counter()
    sync_sweep(TimerRequest(past_due=False))
    timer_seconds = time.perf_counter() - started
    (run_id,) = fleet.services.run_ledger.list_runs(1)
    before = fleet.services.run_ledger.get_status(run_id)
    assert (before.planned, before.done, before.finished) == (len(fleet.orgs), 0, False)  # the timer did no work
    assert timer_seconds < 5

    sink = RecordingSink(fleet.services.sync_sink)
    fleet.services._sink = sink
    stats, (status,) = fleet.work_until_finished(run_id)
    assert status.finished and (status.done, status.failed) == (len(fleet.orgs), 0)
    assert status.rows == ROWS * len(fleet.orgs)
    assert stats.outcomes["expanded"] == 1 and stats.outcomes["done"] == len(fleet.orgs)
    # Every row of every org synced exactly once, never two writers on one unit at a time.
    synced = Counter(i for *_, ids in fleet.sink_rows() for i in ids)
    assert synced == fleet.expected_ids()
    assert set(sink.max_active.values()) == {1}
    # The one summary line, written when the last unit finished, agrees with the stored status.
    (summary,) = summary_lines(caplog, run_id)
    assert summary["units_done"] == len(fleet.orgs) and summary["rows"] == status.rows
    assert summary["finished_at"] == status.finished_at
    # Each unit's last success is recorded (the next run's order).
    history = fleet.services.unit_history.all("sync")
    assert all(history[f"{t}|{org.split('//')[1]}"].last_success > 0 for t, org in fleet.orgs)


def test_a_unit_past_its_time_budget_continues_in_new_messages_and_misses_nothing(fleet):
    worker = fleet.services.sweep_worker
    worker._budget = 0  # every segment: one page, then a continuation
    run = fleet.services.sweep_scheduler.start("sync", fleet.single[0])
    stats, (status,) = fleet.work_until_finished(run.run_id)
    pages = -(-ROWS // PAGE)
    assert stats.outcomes["continued"] == pages - 1 and stats.outcomes["done"] == 1
    assert status.finished and status.done == 1 and status.rows == ROWS
    tenant_pages = [p for p in fleet.sink_rows() if p[0] == fleet.single[0]]
    assert sorted(p[3] for p in tenant_pages) == list(range(1, pages + 1))  # one run, pages 1..n, none twice
    assert len({p[2] for p in tenant_pages}) == 1
    assert sorted(i for *_, ids in tenant_pages for i in ids) == sorted(
        r["accountid"]
        for t, org in fleet.orgs
        if t == fleet.single[0]
        for r in fleet.sandbox.state.rows(org, "accounts")
    )


def test_a_unit_that_keeps_failing_is_poisoned_with_its_reason_and_recorded_on_the_tenant(fleet):
    broken_tenant, broken_org = next((t, o) for t, o in fleet.orgs if t != fleet.tenants[0])
    fleet.sandbox.state.remove_application_user(broken_org, fleet.client_id)
    run = fleet.services.sweep_scheduler.start("sync")
    stats, (status,) = fleet.work_until_finished(run.run_id)
    assert status.finished and status.failed == 1 and status.done == len(fleet.orgs) - 1
    assert stats.failed_attempts == fleet.settings.webhook_max_dequeue_count - 1  # then the last attempt poisons
    key = f"{broken_tenant}|{broken_org.split('//')[1]}"
    assert list(status.failures) == [key] and status.failures[key].startswith("application_user_missing: ")
    poisoned = [json.loads(m.content) for m in fleet.services.storage.queue(SWEEP_POISON_QUEUE).peek_messages(32)]
    assert len(poisoned) == 1 and poisoned[0]["poison_reason"].startswith("application_user_missing")
    assert poisoned[0]["message"]["units"][0][:2] == [broken_tenant, broken_org]
    tenant = fleet.services.registry.get_tenant(broken_tenant)
    assert tenant.status is TenantStatus.ACTIVE  # a failed sync says nothing about consent
    assert (
        tenant.last_verification.outcome == "sync_failed"
        and tenant.last_verification.error_code == "application_user_missing"
    )
    # The others were not held up: their rows are all there.
    synced = Counter(i for t, *_, ids in fleet.sink_rows() for i in ids)
    expected = Counter(
        r["accountid"] for t, o in fleet.orgs if o != broken_org for r in fleet.sandbox.state.rows(o, "accounts")
    )
    assert synced == expected


def test_two_timers_firing_over_each_other_never_work_one_unit_twice_at_once(fleet):
    sink = RecordingSink(fleet.services.sync_sink)
    fleet.services._sink = sink
    fleet.services.sweep_worker._defer_seconds = 1  # look again soon: the holder is quick here
    scheduler = fleet.services.sweep_scheduler
    first = scheduler.start("sync")
    second = scheduler.start("sync")  # fires before any of the first run's messages were taken
    _, statuses = fleet.work_until_finished(first.run_id, second.run_id, batch_size=8, new_batch_threshold=4)
    assert all(s.finished and s.failed == 0 and s.done == len(fleet.orgs) for s in statuses)
    assert set(sink.max_active.values()) == {1}  # the lease kept one worker per unit
    synced = Counter(i for *_, ids in fleet.sink_rows() for i in ids)
    assert synced == fleet.expected_ids()  # the second run found nothing new: no row written twice
    # A third timer while the units are still pending in a run (its slices expanded, nothing worked yet) carries
    # them over instead of queueing them again.
    third = scheduler.start("sync")
    fleet.runner().run(until=lambda: fleet.services.unit_history.all("sync") and _all_pending(fleet, third.run_id))
    fourth = scheduler.start("sync")
    assert (fourth.planned, fourth.carried_over) == (0, len(fleet.orgs))
    assert fleet.services.run_ledger.get_status(fourth.run_id).finished  # nothing to wait for
    _, (status,) = fleet.work_until_finished(third.run_id)
    assert status.done == len(fleet.orgs)


def _all_pending(fleet, run_id):
    history = fleet.services.unit_history.all("sync")
    keys = [f"{t}|{o.split('//')[1]}" for t, o in fleet.orgs]
    return all(history[k].pending_run == run_id for k in keys if k in history) and all(k in history for k in keys)


def test_a_redelivered_message_defers_while_the_lease_is_held_and_counts_once(fleet):
    worker: SweepWorker = fleet.services.sweep_worker
    run = fleet.services.sweep_scheduler.start("sync", fleet.single[1])
    queue = fleet.services.sweep_queue()
    (slice_message,) = list(queue.receive_messages(max_messages=1))
    assert worker.handle(slice_message.content, 1, slice_message.id) == "expanded"
    queue.delete_message(slice_message)
    (unit_message,) = list(queue.receive_messages(max_messages=1))
    # A first attempt holds the lease (it is still running) when the same message is delivered again.
    tenant, org = next((t, o) for t, o in fleet.orgs if t == fleet.single[1])
    from shared.jobs.leases import UnitLease

    holder = UnitLease(
        fleet.services.sync_checkpoints.table, tenant, f"sync|{org.split('//')[1]}", owner="first", seconds=30
    )
    holder.acquire(run.run_id)
    assert worker.handle(unit_message.content, 2, unit_message.id) == "deferred"
    queue.delete_message(unit_message)
    visible = [m for m in queue.peek_messages(32) if run.run_id in m.content]
    assert visible == []  # put back invisible until the lease runs out
    holder.release()
    # The first attempt finishes the unit; the deferred copy is then a duplicate that counts nothing.
    unit_text = unit_message.content
    assert worker.handle(unit_text, 1, "first") == "done"
    assert worker.handle(unit_text, 3, "again") == "duplicate"
    status = fleet.services.run_ledger.get_status(run.run_id)
    assert (status.done, status.rows, status.finished) == (1, ROWS, True)


def test_cli_status_shows_the_aggregated_run(fleet, capsys):
    from cli.main import main

    run = fleet.services.sweep_scheduler.start("sync", fleet.single[0])
    fleet.work_until_finished(run.run_id)
    assert main(["--json", "jobs", "status", "--run", run.run_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["planned"], shown["done"], shown["rows"], shown["remaining"]) == (1, 1, ROWS, 0)
    assert shown["finished_at"] and shown["started_at"]
    assert main(["--json", "jobs", "status"]) == 0
    assert run.run_id in [r["run_id"] for r in json.loads(capsys.readouterr().out)["runs"]]
    assert main(["--json", "jobs", "status", "--run", "sync-x' or true"]) == 2
    assert "run_not_found" in capsys.readouterr().out


def test_cli_jobs_run_fans_out_and_works_the_queue_in_process(fleet, capsys):
    from cli.main import main

    fleet.services.settings = replace(fleet.settings, sweep_concurrency=4)
    assert main(["--json", "jobs", "run", "sync"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["finished_at"] and result["failed"] == 0 and result["done"] >= len(fleet.orgs)
    assert "units" in captured.err  # progress on stderr
