import json
import logging
import threading

from shared.jobs.sweeps import Sweep, TenantOutcome
from shared.tenants.registry import Tenant, TenantStatus


def tenants(n):
    return [Tenant(f"{i:08d}-0000-0000-0000-000000000000", TenantStatus.ACTIVE, (), "t", "t") for i in range(n)]


def test_a_failing_tenant_is_recorded_and_never_stops_the_others(caplog):
    caplog.set_level(logging.INFO)
    recorded = []

    def work(tenant, past_deadline):
        if tenant.tenant_id.startswith("00000003"):
            raise RuntimeError("boom")
        return TenantOutcome(True, rows=10)

    summary = Sweep(concurrency=4, time_budget_seconds=60).run(
        "sync", tenants(8), work, on_failure=lambda t, reason: recorded.append((t.tenant_id, reason))
    )
    assert (summary.tenants_ok, summary.tenants_failed, summary.rows) == (7, 1, 70)
    assert recorded == [("00000003-0000-0000-0000-000000000000", "RuntimeError: boom")]
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("sweep summary"))
    assert json.loads(line.removeprefix("sweep summary "))["tenants_failed"] == 1


def test_concurrency_is_bounded():
    running, peak, lock = [0], [0], threading.Lock()
    gate = threading.Event()

    def work(tenant, past_deadline):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        gate.wait(0.02)
        with lock:
            running[0] -= 1
        return TenantOutcome(True)

    Sweep(concurrency=3, time_budget_seconds=60).run("health", tenants(20), work)
    assert peak[0] == 3


def test_the_time_budget_skips_what_is_left_and_says_so():
    now = [0.0]

    def work(tenant, past_deadline):
        now[0] += 30
        return TenantOutcome(True, rows=1)

    summary = Sweep(concurrency=1, time_budget_seconds=60, clock=lambda: now[0]).run("sync", tenants(5), work)
    assert summary.tenants_ok == 2 and summary.tenants_skipped == 3 and summary.stopped_by_time_budget


def test_throttle_waits_are_counted_for_the_run():
    waits = iter([5, 9])
    summary = Sweep(concurrency=1, time_budget_seconds=60, throttle_waits=lambda: next(waits)).run(
        "sync", tenants(1), lambda t, d: TenantOutcome(True)
    )
    assert summary.throttle_waits == 4
