"""A 429 storm at every org of a sweep: each org refuses past a tiny request window (some naming their limit,
some only saying "too many concurrent requests"); the sync and health sweeps still finish every tenant, and no
request reaches an org inside a Retry-After window it announced."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.bootstrap import build_services, use_services
from shared.tenants.orgs import OrgStatus
from shared.tenants.registry import TenantRegistry, TenantStatus
from tests.integration.conftest import app_with_certificate, cert_file_settings, customer_org

pytestmark = pytest.mark.integration

TENANTS = 4
ROWS = 300
PAGE = 100


@pytest.fixture
def storm(sandbox, sandbox_env, azurite, tmp_path):
    st = sandbox.state
    client_id, _, cert = app_with_certificate(st, "Storm test", tmp_path)
    services = build_services(
        cert_file_settings(
            sandbox,
            client_id,
            cert,
            storage_connection_string=azurite.connection_string,
            sync_tables=(("accounts", ("accountid", "name")),),
            sync_page_size=PAGE,
            sync_container=f"storm{uuid.uuid4().hex[:8]}",
            sweep_concurrency=TENANTS,
            dataverse_retry_budget_seconds=60,
        )
    )
    # A registry of its own: the sweep covers every active tenant, and the session's registry holds other tests'.
    suffix = uuid.uuid4().hex[:8]
    services._registry = TenantRegistry(
        services.storage.table(f"stormtenants{suffix}"), services.storage.table(f"stormhistory{suffix}")
    )
    services.registry.create_tables()
    use_services(services)
    orgs = {}
    for _ in range(TENANTS):
        tenant, org, _ = customer_org(st, client_id, "storm", rows=ROWS)
        for status in (TenantStatus.PENDING_CONSENT, TenantStatus.CONSENTED, TenantStatus.ACTIVE):
            services.registry.record(tenant, status, reason="test", actor="test", org_url=org)
        services.registry.set_org_status(tenant, org, OrgStatus.ACTIVE, reason="seed", actor="test")
        orgs[tenant] = org
    yield st, services, orgs
    use_services(None)


def test_sync_and_health_sweeps_finish_through_a_429_storm_at_every_org(storm):
    st, services, orgs = storm
    for i, org in enumerate(orgs.values()):
        if i % 2:
            # Past two requests a second: 429 0x80072322, whose message names the limit (the client learns it).
            st.set_dataverse_limits(org, max_requests=2, window_seconds=1, latency_seconds=0.02)
        else:
            # One request at a time and a forced Retry-After of 1 s on every refusal: the health sweep's WhoAmI,
            # running beside the sync, meets "too many concurrent requests" (0x80072326) as well.
            st.set_dataverse_limits(
                org, max_requests=2, window_seconds=1, max_concurrent=1, retry_after_seconds=1, latency_seconds=0.02
            )

    with ThreadPoolExecutor(max_workers=2) as pool:
        sync_run = pool.submit(services.jobs.run_sync)
        health_run = pool.submit(services.jobs.run_health)
        sync, health = sync_run.result(timeout=120), health_run.result(timeout=120)

    assert (sync.tenants_ok, sync.tenants_failed, sync.tenants_skipped) == (TENANTS, 0, 0), sync.failures
    assert sync.rows == TENANTS * ROWS
    assert (health.tenants_ok, health.tenants_failed) == (TENANTS, 0), health.failures
    for tenant, org in orgs.items():
        assert st.count("dataverse_throttled", org=org) >= 1, f"no storm reached {org}"
        assert st.count("dataverse_request_in_retry_after", org=org) == 0, org
        assert services.registry.get_tenant(tenant).status is TenantStatus.ACTIVE
    assert sync.throttle_waits >= TENANTS
