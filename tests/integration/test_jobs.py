"""Scheduled jobs against the Dataverse emulator and Azurite: sync, resume after a kill, throttling, health,
certificate expiry."""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections import Counter
from dataclasses import replace

import pytest

from shared.bootstrap import build_services, use_services
from shared.tenants.orgs import OrgStatus
from shared.tenants.registry import TenantStatus
from tests.integration.conftest import app_with_certificate, cert_file_settings, customer_org

pytestmark = pytest.mark.integration


class World:
    def __init__(self, sandbox, azurite, tmp_path, *, rows=250, page_size=100, cert_days=365):
        st = sandbox.state
        self.sandbox = sandbox
        self.client_id, _, cert = app_with_certificate(st, "Jobs test", tmp_path, days=cert_days)
        self.tenant, self.org_url, _ = customer_org(st, self.client_id, "jobs")
        self.ids = st.seed_rows(self.org_url, "accounts", rows)
        self.settings = cert_file_settings(
            sandbox,
            self.client_id,
            cert,
            storage_connection_string=azurite.connection_string,
            sync_tables=(("accounts", ("accountid", "name")),),
            sync_page_size=page_size,
            sync_container=f"sync{uuid.uuid4().hex[:8]}",
            dataverse_retry_budget_seconds=60,
        )
        self.use(self.settings)
        for status in (TenantStatus.PENDING_CONSENT, TenantStatus.CONSENTED, TenantStatus.ACTIVE):
            self.services.registry.record(self.tenant, status, reason="test", actor="test", org_url=self.org_url)
        self.services.registry.set_org_status(
            self.tenant, self.org_url, OrgStatus.ACTIVE, reason="WhoAmI ok", actor="test"
        )

    def use(self, settings):
        self.services = build_services(settings)
        use_services(self.services)

    def blobs(self):
        """{run id: {page: [records]}} from the NDJSON sink."""
        container = self.services.storage.container(self.settings.sync_container)
        runs: dict[str, dict[int, list[dict]]] = {}
        for blob in container.list_blobs(name_starts_with=f"{self.tenant}/"):
            parts = blob.name.split("/")
            text = container.download_blob(blob.name).readall().decode()
            runs.setdefault(parts[3], {})[int(parts[4].split(".")[0])] = [json.loads(x) for x in text.splitlines()]
        return runs


@pytest.fixture
def world(sandbox, sandbox_env, azurite, tmp_path):
    yield World(sandbox, azurite, tmp_path)
    use_services(None)


def upserted(pages):
    return [r["row"]["accountid"] for page in pages.values() for r in page if r["op"] == "upsert"]


def test_first_sync_takes_everything_then_only_the_changes(world):
    summary = world.services.jobs.run_sync(world.tenant)
    assert (summary.tenants_ok, summary.tenants_failed, summary.rows) == (1, 0, 250)
    (first_run,) = world.blobs().values()
    assert sorted(upserted(first_run)) == sorted(world.ids) and len(first_run) == 3
    client = world.services.dataverse.for_org(world.tenant, world.org_url)
    new_id = client.create("accounts", {"name": "New"})
    client.update("accounts", world.ids[0], {"name": "Changed"})
    client.delete("accounts", world.ids[1])
    assert world.services.jobs.run_sync(world.tenant).rows == 3
    second = next(pages for run, pages in world.blobs().items() if pages is not first_run and len(pages) == 1)
    records = second[1]
    assert sorted(r["row"]["accountid"] for r in records if r["op"] == "upsert") == sorted([new_id, world.ids[0]])
    assert [r["id"] for r in records if r["op"] == "delete"] == [world.ids[1]]


def test_expired_delta_token_triggers_a_full_resync(world, caplog):
    world.services.jobs.run_sync(world.tenant)
    world.sandbox.state.expire_delta_tokens(world.org_url)
    caplog.set_level(logging.WARNING)
    summary = world.services.jobs.run_sync(world.tenant)
    assert summary.tenants_ok == 1 and summary.rows == 250
    assert "full resync" in caplog.text


class KillingSink:
    """Wraps the real sink; dies (as a killed worker would) before or after a chosen write."""

    def __init__(self, inner, kill_at: int, after: bool):
        self.inner, self.kill_at, self.after = inner, kill_at, after
        self.calls = 0
        self.writes: Counter = Counter()

    def write_page(self, **page):
        self.calls += 1
        if self.calls == self.kill_at and not self.after:
            raise RuntimeError("killed before writing")
        self.inner.write_page(**page)
        self.writes[(page["run_id"], page["page"])] += 1
        if self.calls == self.kill_at and self.after:
            raise RuntimeError("killed after writing, before checkpointing")


def test_sync_killed_at_random_points_misses_nothing_and_repeats_at_most_one_page(world):
    rng = random.Random(20261121)
    services = world.services
    real_sink = services.sync_sink
    all_writes: Counter = Counter()
    kills = 0
    for attempt in range(5):
        if attempt:  # changes keep arriving between attempts, so every attempt has pages to cut
            world.sandbox.state.seed_rows(world.org_url, "accounts", 150)
        sink = KillingSink(real_sink, kill_at=rng.randint(1, 2), after=rng.random() < 0.5)
        services._sink = sink  # the sweep's sink for this attempt
        summary = services.jobs.run_sync(world.tenant)
        killed = sink.calls >= sink.kill_at
        kills += killed
        assert summary.tenants_failed == int(killed)  # a kill is recorded, not swallowed
        all_writes.update(sink.writes)
    assert kills >= 4
    services._sink = real_sink
    summary = services.jobs.run_sync(world.tenant)
    assert summary.tenants_failed == 0
    expected = {r["accountid"] for r in world.sandbox.state.rows(world.org_url, "accounts")}
    synced = set()
    for pages in world.blobs().values():
        synced.update(upserted(pages))
    assert synced == expected  # no row missed
    repeated = [key for key, count in all_writes.items() if count > 1]
    assert len(repeated) <= kills  # at most one page repeated per kill
    tenant = services.registry.get_tenant(world.tenant)
    assert tenant.status is TenantStatus.ACTIVE


def test_sweep_survives_a_429_storm_without_calling_inside_retry_after(world):
    world.sandbox.state.set_dataverse_limits(world.org_url, max_requests=2, window_seconds=1, retry_after_seconds=1)
    summary = world.services.jobs.run_sync(world.tenant)
    assert summary.tenants_ok == 1 and summary.rows == 250
    assert summary.throttle_waits >= 1
    assert world.sandbox.state.count("dataverse_request_in_retry_after", org=world.org_url) == 0


def test_time_budget_pauses_and_the_next_run_continues(world):
    world.use(replace(world.settings, sweep_time_budget_seconds=10, sync_page_size=100))
    clock = iter([0.0] + [0.0] * 3 + [100.0] * 1000)
    world.services.jobs._sweep._clock = lambda: next(clock)
    paused = world.services.jobs.run_sync(world.tenant)
    assert paused.stopped_by_time_budget and paused.rows < 250
    world.use(world.settings)
    resumed = world.services.jobs.run_sync(world.tenant)
    assert paused.rows + resumed.rows == 250


def test_health_catches_a_removed_application_user_and_revoked_consent(world, caplog):
    caplog.set_level(logging.WARNING)
    st = world.sandbox.state
    assert world.services.jobs.run_health(world.tenant).tenants_ok == 1
    st.remove_application_user(world.org_url, world.client_id)
    summary = world.services.jobs.run_health(world.tenant)
    assert summary.tenants_failed == 1
    tenant = world.services.registry.get_tenant(world.tenant)
    assert tenant.status is TenantStatus.AWAITING_APPLICATION_USER
    assert tenant.last_verification.error_code == "0x80072560"
    assert "active -> awaiting_application_user" in caplog.text
    st.add_application_user(world.org_url, world.client_id)
    world.services.jobs.run_health(world.tenant)
    assert world.services.registry.get_tenant(world.tenant).status is TenantStatus.ACTIVE
    st.remove_service_principal(world.tenant, world.client_id)
    world.use(world.settings)  # a fresh worker: no cached token
    world.services.jobs.run_health(world.tenant)
    assert world.services.registry.get_tenant(world.tenant).status is TenantStatus.CONSENT_REVOKED


def test_health_keeps_a_throttled_tenant_active_and_records_why(world):
    st = world.sandbox.state
    assert world.services.jobs.run_health(world.tenant).tenants_ok == 1
    # The org throttles with a Retry-After longer than a call's retry budget: the check is inconclusive.
    st.set_dataverse_limits(world.org_url, max_requests=1, window_seconds=300, retry_after_seconds=600)
    summary = world.services.jobs.run_health(world.tenant)
    assert summary.tenants_failed == 1 and world.tenant in summary.failures
    tenant = world.services.registry.get_tenant(world.tenant)
    assert tenant.status is TenantStatus.ACTIVE  # throttling says nothing about the customer's tenant
    assert tenant.last_verification.outcome == "error"
    assert tenant.last_verification.error_code == "0x80072322"
    assert st.count("dataverse_request_in_retry_after", org=world.org_url) == 0


def test_certificate_expiry_warns_inside_the_thresholds(sandbox, sandbox_env, azurite, tmp_path, caplog):
    near = World(sandbox, azurite, tmp_path, rows=1, cert_days=10)
    caplog.set_level(logging.INFO)
    report = near.services.jobs.run_certificate_expiry()
    assert report["threshold_days"] == 14 and 9 < report["days_left"] <= 10
    assert any(r.levelno == logging.WARNING and "certificate_expiry" in r.getMessage() for r in caplog.records)
    far = World(sandbox, azurite, tmp_path, rows=1, cert_days=200)
    assert far.services.jobs.run_certificate_expiry()["threshold_days"] is None
    use_services(None)


def test_a_leads_sync_added_to_sync_tables_works_against_the_emulator(world):
    """Issue 19: a developer adds `leads` to SYNC_TABLES and the sync takes them, then only their changes."""
    st = world.sandbox.state
    leads = st.seed_rows(world.org_url, "leads", 40)
    settings = replace(world.settings, sync_tables=(("leads", ("leadid", "subject", "fullname")),))
    world.use(settings)
    first = world.services.jobs.run_sync(world.tenant)
    assert (first.tenants_failed, first.rows) == (0, 40)
    records = [r for run in world.blobs().values() for page in run.values() for r in page]
    assert sorted(r["row"]["leadid"] for r in records if r["op"] == "upsert") == sorted(leads)
    client = world.services.dataverse.for_org(world.tenant, world.org_url)
    client.update("leads", leads[0], {"subject": "Follow up"})
    second = world.services.jobs.run_sync(world.tenant)
    assert second.rows == 1
