"""Housekeeping on fakes: what each purge deletes and keeps (asserted on the rows left), the per-run bound, a
second run deleting nothing, and one kind failing without stopping the others."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.data.tables import TableEntity

from shared.jobs.housekeeping import Housekeeping, TenantHistoryRetention
from shared.settings import WEBHOOK_DEDUPE_DAYS, Settings
from shared.tenants import registry as registry_module
from shared.tenants.consent_states import ConsentStateStore
from shared.tenants.registry import TenantRegistry, TenantStatus
from shared.webhooks.store import DEDUPE_TTL_SECONDS, WebhookStore
from tests.unit.fake_table import FakeTable

DAY = 86400.0
NOW = 1_800_000_000.0
_CLAUSE = re.compile(r"(\w+) (eq|ne|lt|le|gt|ge) @(\w+)")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}


class FilteringTable(FakeTable):
    """FakeTable that evaluates the filters housekeeping sends (``Name op @param`` joined by ``and``) across
    partitions, in (PartitionKey, RowKey) order as the table service returns them. A row without the property does
    not match, as on the service."""

    def query_entities(self, query_filter: str, *, parameters: dict[str, Any], **kwargs: Any) -> list[TableEntity]:
        clauses = [_CLAUSE.fullmatch(part.strip()) for part in query_filter.split(" and ")]
        assert all(clauses), f"filter the fake cannot evaluate: {query_filter}"

        def matches(row: dict[str, Any]) -> bool:
            for clause in clauses:
                assert clause is not None
                name, op, param = clause.groups()
                if name not in row or not _OPS[op](row[name], parameters[param]):
                    return False
            return True

        with self._lock:
            return [self._entity(k) for k in sorted(self.rows) if matches(self.rows[k])]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class NoQueue:
    def send_message(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("housekeeping sends no message")


def webhook_store(table: FakeTable, clock: Clock) -> WebhookStore:
    return WebhookStore(queue=NoQueue(), poison_queue=NoQueue(), table=table, container=None, clock=clock)


# -- webhook event records ------------------------------------------------------------------------------------------


def test_webhook_records_older_than_the_retention_go_and_younger_ones_stay() -> None:
    table, clock = FilteringTable(), Clock(NOW - 20 * DAY)
    store = webhook_store(table, clock)
    store.complete(store.claim("old-done"))
    store.release(store.claim("old-failed"), "boom")
    clock.now = NOW - 10 * DAY
    store.claim("ten-days")  # past the 7-day dedupe window, inside a 14-day retention
    clock.now = NOW - 1 * DAY
    store.claim("yesterday")
    clock.now = NOW

    assert store.purge_older_than(14 * DAY) == 2
    assert {key for _, key in table.rows} == {"ten-days", "yesterday"}
    assert store.seen("yesterday") is True  # the dedupe still answers for what it must


def test_a_retention_shorter_than_the_dedupe_window_never_deletes_a_record_still_deduping() -> None:
    table, clock = FilteringTable(), Clock(NOW - 3 * DAY)
    store = webhook_store(table, clock)
    store.claim("three-days")
    clock.now = NOW
    assert store.purge_older_than(1 * DAY) == 0
    assert store.seen("three-days") is True


def test_a_record_under_a_live_processing_lease_is_left_to_a_later_run() -> None:
    table, clock = FilteringTable(), Clock(NOW - 30 * DAY)
    store = webhook_store(table, clock)
    store.claim("stuck")
    store.claim("leased")
    clock.now = NOW
    # A processor took the old record again a moment ago: its lease runs, the row is in use.
    table.rows[("lea", "leased")]["LeaseUntil"] = NOW + 60
    assert store.purge_older_than(14 * DAY) == 1
    assert {key for _, key in table.rows} == {"leased"}


def test_the_dedupe_window_is_the_same_in_the_store_and_the_settings() -> None:
    assert DEDUPE_TTL_SECONDS == WEBHOOK_DEDUPE_DAYS * 86400


# -- tenant history -------------------------------------------------------------------------------------------------


def seeded_history(monkeypatch: pytest.MonkeyPatch, transitions: list[tuple[str, float]]) -> tuple[FilteringTable, str]:
    """One tenant's history written by the real registry, each transition at the given (status, time)."""
    tenants, history, clock = FilteringTable(), FilteringTable(), Clock(0.0)
    registry = TenantRegistry(tenants, history, clock=clock)
    tenant = "aaaaaaaa-0000-0000-0000-000000000001"
    for status, at in transitions:
        clock.now = at
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(at))
        monkeypatch.setattr(registry_module, "utc_now", lambda stamp=stamp: stamp)
        registry.record(tenant, TenantStatus(status), reason=f"to {status}", actor="test")
    return history, tenant


def statuses_left(history: FakeTable, tenant: str) -> list[str]:
    """The tenant's transitions left, newest first (the registry's row order)."""
    return [history.rows[key]["ToStatus"] for key in sorted(k for k in history.rows if k[0] == tenant)]


CYCLE = ["pending_consent", "consented", "active", "awaiting_application_user", "active", "failed", "active"]


def test_history_keeps_the_newest_transitions_and_everything_younger_than_the_retention(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = [(status, NOW - (800 - i) * DAY) for i, status in enumerate(CYCLE)]  # all over two years old
    recent = [("awaiting_application_user", NOW - 30 * DAY), ("active", NOW - 29 * DAY)]
    history, tenant = seeded_history(monkeypatch, old + recent)
    retention = TenantHistoryRetention(history, keep_newest=4, max_age_days=365, clock=lambda: NOW)

    assert retention.purge() == 5
    # The newest four stay whatever their age: the two recent ones and the two newest old ones.
    assert statuses_left(history, tenant) == ["active", "awaiting_application_user", "active", "failed"]
    assert retention.purge() == 0  # idempotent


def test_history_younger_than_the_retention_is_never_deleted_however_long(monkeypatch: pytest.MonkeyPatch) -> None:
    transitions = [(status, NOW - (60 - i) * DAY) for i, status in enumerate(CYCLE)]
    history, tenant = seeded_history(monkeypatch, transitions)
    before = statuses_left(history, tenant)
    assert TenantHistoryRetention(history, keep_newest=1, max_age_days=365, clock=lambda: NOW).purge() == 0
    assert statuses_left(history, tenant) == before


def test_a_tenant_whose_every_transition_is_old_keeps_its_newest(monkeypatch: pytest.MonkeyPatch) -> None:
    history, tenant = seeded_history(monkeypatch, [(s, NOW - (900 - i) * DAY) for i, s in enumerate(CYCLE)])
    TenantHistoryRetention(history, keep_newest=1, max_age_days=30, clock=lambda: NOW).purge()
    assert statuses_left(history, tenant) == ["active"]


def test_history_purge_is_bounded_per_run_and_the_next_run_carries_on(monkeypatch: pytest.MonkeyPatch) -> None:
    history, tenant = seeded_history(monkeypatch, [(s, NOW - (900 - i) * DAY) for i, s in enumerate(CYCLE)])
    retention = TenantHistoryRetention(history, keep_newest=2, max_age_days=30, clock=lambda: NOW)
    assert retention.purge(limit=3) == 3
    assert len(statuses_left(history, tenant)) == 4
    assert retention.purge(limit=3) == 2
    assert statuses_left(history, tenant) == ["active", "failed"]


# -- the job --------------------------------------------------------------------------------------------------------


def expired_states(table: FakeTable, count: int, *, ago: float) -> None:
    store = ConsentStateStore(table, ttl_seconds=600, clock=lambda: NOW - ago)
    for i in range(count):
        store.issue({"state": f"s{i}-{ago}", "code_verifier": "v"}, "https://a.crm.dynamics.com", None)


def test_a_run_deletes_each_kind_up_to_the_limit_and_says_which_have_more() -> None:
    states_table = FilteringTable()
    expired_states(states_table, 7, ago=3600)
    expired_states(states_table, 2, ago=0)  # issued now: live for ten minutes
    states = ConsentStateStore(states_table, ttl_seconds=600, clock=lambda: NOW)
    job = Housekeeping({"onboarding_states": lambda limit: states.purge_expired(limit=limit)}, limit=5)

    first = job.run()
    assert first.deleted == {"onboarding_states": 5} and first.more_remaining == ["onboarding_states"]
    assert len(states_table.rows) == 4
    second = job.run()
    assert second.deleted == {"onboarding_states": 2} and second.more_remaining == []
    assert len(states_table.rows) == 2
    assert all(float(row["ExpiresAt"]) > NOW for row in states_table.rows.values())
    assert job.run().deleted == {"onboarding_states": 0}


def test_one_kind_failing_does_not_stop_the_others() -> None:
    states_table = FilteringTable()
    expired_states(states_table, 3, ago=3600)
    states = ConsentStateStore(states_table, ttl_seconds=600, clock=lambda: NOW)

    def unreachable(limit: int) -> int:
        raise ServiceRequestError("connection refused")

    summary = Housekeeping(
        {"webhook_events": unreachable, "onboarding_states": lambda limit: states.purge_expired(limit=limit)}
    ).run()
    assert summary.failures == {"webhook_events": "ServiceRequestError"}
    assert summary.deleted == {"onboarding_states": 3}
    assert not states_table.rows
    json.dumps(summary.to_dict())  # the CLI and the log print it


def test_retention_settings_refuse_a_webhook_retention_shorter_than_the_dedupe_window() -> None:
    from shared.errors import ConfigurationError

    base = {
        "ENTRA_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
        "ENTRA_HOME_TENANT_ID": "a" * 8 + "-0000-0000-0000-" + "0" * 12,
    }
    base |= {"CREDENTIAL_SOURCE": "certificate_file", "CERTIFICATE_PATH": "/x.pem"}
    assert Settings.from_env(base).webhook_event_retention_days == 14
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({**base, "WEBHOOK_EVENT_RETENTION_DAYS": "6"})
    assert "WEBHOOK_EVENT_RETENTION_DAYS" in str(info.value)
    with pytest.raises(ConfigurationError):
        Settings.from_env({**base, "TENANT_HISTORY_KEEP": "0"})
    with pytest.raises(ConfigurationError):
        Settings.from_env({**base, "HOUSEKEEPING_SCHEDULE": "hourly"})


def test_the_timer_reads_its_schedule_from_the_setting_and_never_runs_on_startup() -> None:
    import importlib

    import function_app

    functions = {
        f.get_function_name(): json.loads(f.get_function_json())
        for f in importlib.reload(function_app).app.get_functions()
    }
    trigger = functions["housekeeping"]["bindings"][0]
    assert trigger["type"] == "timerTrigger" and trigger["schedule"] == "%HOUSEKEEPING_SCHEDULE%"
    assert trigger["runOnStartup"] is False and trigger["useMonitor"] is True
