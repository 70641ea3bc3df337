"""The tenant registry and consent states on Azurite, with the real azure-data-tables SDK."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from azure.data.tables import TableServiceClient

from shared.tenants.consent_states import ConsentStateError, ConsentStateStore
from shared.tenants.registry import (
    TenantNotFoundError,
    TenantRegistry,
    TenantStatus,
    TransitionNotAllowedError,
    Verification,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(azurite):
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    suffix = uuid.uuid4().hex[:8]
    reg = TenantRegistry(service.get_table_client(f"tenants{suffix}"), service.get_table_client(f"history{suffix}"))
    reg.create_tables()
    reg.create_tables()  # idempotent
    return reg


def tid() -> str:
    return str(uuid.uuid4())


def test_lifecycle_is_recorded_with_history(registry):
    t = tid()
    registry.record(
        t,
        TenantStatus.PENDING_CONSENT,
        reason="callback",
        actor="test",
        org_url="https://a.crm.dynamics.com",
        onboarded_by="admin@fabrikam.example",
    )
    registry.record(t, TenantStatus.CONSENTED, reason="token", actor="test")
    registry.record(
        t,
        TenantStatus.AWAITING_APPLICATION_USER,
        reason="0x80072560",
        actor="test",
        verification=Verification(
            "2026-11-21T00:00:00+00:00", "awaiting_application_user", "0x80072560", "no app user"
        ),
    )
    tenant = registry.record(
        t, TenantStatus.ACTIVE, reason="whoami ok", actor="test", org_url="https://b.crm4.dynamics.com"
    )
    assert tenant.status is TenantStatus.ACTIVE
    assert tenant.org_urls == ("https://a.crm.dynamics.com", "https://b.crm4.dynamics.com")
    assert tenant.onboarded_by == "admin@fabrikam.example"
    assert tenant.last_verification.error_code == "0x80072560"
    history = [h for h in registry.history(t) if h.org is None]
    assert [h.to_status for h in history] == ["active", "awaiting_application_user", "consented", "pending_consent"]
    assert history[-1].from_status is None
    added = [(h.org, h.from_status, h.to_status) for h in registry.history(t) if h.org]
    assert added == [
        ("https://b.crm4.dynamics.com", None, "pending_verification"),
        ("https://a.crm.dynamics.com", None, "pending_verification"),
    ]


def test_disallowed_transition_writes_nothing(registry):
    t = tid()
    registry.record(t, TenantStatus.PENDING_CONSENT, reason="r", actor="a")
    with pytest.raises(TransitionNotAllowedError):
        registry.record(t, TenantStatus.ACTIVE, reason="skip", actor="a")
    assert registry.get_tenant(t).status is TenantStatus.PENDING_CONSENT
    assert len(registry.history(t)) == 1


def test_offboarded_tenant_returns_only_through_consent(registry):
    t = tid()
    registry.record(t, TenantStatus.PENDING_CONSENT, reason="r", actor="a")
    registry.record(t, TenantStatus.OFFBOARDED, reason="customer left", actor="operator")
    with pytest.raises(TransitionNotAllowedError):
        registry.record(t, TenantStatus.ACTIVE, reason="x", actor="a")
    assert (
        registry.record(t, TenantStatus.PENDING_CONSENT, reason="consent again", actor="a").status
        is TenantStatus.PENDING_CONSENT
    )


def test_unknown_tenant(registry):
    assert registry.find_tenant(tid()) is None
    with pytest.raises(TenantNotFoundError):
        registry.get_tenant(tid())


def test_concurrent_writers_lose_nothing(registry):
    t = tid()
    registry.record(t, TenantStatus.PENDING_CONSENT, reason="r", actor="a")
    orgs = [f"https://org{i}.crm.dynamics.com" for i in range(12)]
    barrier = threading.Barrier(len(orgs))
    errors = []

    def add(org):
        barrier.wait()
        try:
            registry.record(t, TenantStatus.PENDING_CONSENT, reason="add org", actor="a", org_url=org)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(o,)) for o in orgs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert sorted(registry.get_tenant(t).org_urls) == sorted(orgs)


def test_listing_is_paged_and_filterable(registry):
    created = []
    for i in range(130):
        t = tid()
        registry.record(t, TenantStatus.PENDING_CONSENT, reason="r", actor="a")
        if i % 2 == 0:
            registry.record(t, TenantStatus.CONSENTED, reason="r", actor="a")
        created.append(t)
    first = registry.list_tenants(page_size=50)
    assert len(first.tenants) == 50 and first.continuation
    second = registry.list_tenants(page_size=50, continuation=first.continuation)
    assert {x.tenant_id for x in first.tenants}.isdisjoint({x.tenant_id for x in second.tenants})
    assert len(list(registry.iter_tenants(page_size=50))) == 130
    assert len(list(registry.iter_tenants(status=TenantStatus.CONSENTED, page_size=20))) == 65


def test_recheck_ticket_is_single_secret_per_org_and_expires(registry):
    t, org = tid(), "https://a.crm.dynamics.com"
    registry.record(t, TenantStatus.PENDING_CONSENT, reason="r", actor="a", org_url=org)
    ticket = registry.issue_recheck_ticket(t, org)
    assert registry.check_recheck_ticket(t, ticket) == org
    assert registry.check_recheck_ticket(t, ticket + "x") is None
    assert registry.check_recheck_ticket(tid(), ticket) is None
    newer = registry.issue_recheck_ticket(t, org)
    assert registry.check_recheck_ticket(t, ticket) is None and registry.check_recheck_ticket(t, newer) == org
    expired = TenantRegistry(registry._tenants, registry._history, clock=lambda: 10**12)
    assert expired.check_recheck_ticket(t, newer) is None


@pytest.fixture
def states(azurite):
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    store = ConsentStateStore(service.get_table_client(f"states{uuid.uuid4().hex[:8]}"), ttl_seconds=600)
    store.create_table()
    return store


def msal_flow() -> dict[str, object]:
    """The shape of MSAL's auth code flow (state, nonce, PKCE verifier), which the state row keeps sealed."""
    return {
        "state": uuid.uuid4().hex,
        "nonce": uuid.uuid4().hex,
        "code_verifier": uuid.uuid4().hex + uuid.uuid4().hex,
        "scope": ["https://a.crm.dynamics.com/user_impersonation", "openid"],
        "auth_uri": "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize",
    }


def test_consent_state_round_trip_is_single_use(states):
    flow = msal_flow()
    issued = states.issue(flow, "https://a.crm.dynamics.com", "ops@example")
    consent = states.redeem(issued.state, issued.browser_nonce)
    assert consent.org_url == "https://a.crm.dynamics.com" and consent.contact == "ops@example"
    assert consent.flow == flow
    with pytest.raises(ConsentStateError) as replay:
        states.redeem(issued.state, issued.browser_nonce)
    assert replay.value.reason == "replayed"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "missing"),
        ("unknown", "unknown"),
        ("tampered", "unknown"),
        ("other_browser", "other_browser"),
        ("no_cookie", "other_browser"),
        ("huge", "unknown"),
    ],
)
def test_bad_states_are_refused(states, case, reason):
    issued = states.issue(msal_flow(), "https://a.crm.dynamics.com", None)
    args = {
        "missing": (None, issued.browser_nonce),
        "unknown": ("x" * 43, issued.browser_nonce),
        "tampered": (issued.state[:-1] + ("A" if issued.state[-1] != "A" else "B"), issued.browser_nonce),
        "other_browser": (issued.state, "someone-elses-cookie"),
        "no_cookie": (issued.state, None),
        "huge": ("s" * 5000, issued.browser_nonce),
    }[case]
    with pytest.raises(ConsentStateError) as info:
        states.redeem(*args)
    assert info.value.reason == reason


def test_other_browser_does_not_burn_the_state(states):
    issued = states.issue(msal_flow(), "https://a.crm.dynamics.com", None)
    with pytest.raises(ConsentStateError):
        states.redeem(issued.state, "attacker")
    assert states.redeem(issued.state, issued.browser_nonce).org_url == "https://a.crm.dynamics.com"


def test_expired_state_is_refused_and_purged(states, azurite):
    earlier = ConsentStateStore(states._table, ttl_seconds=600, clock=lambda: time.time() - 1000)
    expired = earlier.issue(msal_flow(), "https://a.crm.dynamics.com", None)  # expired 400 s ago
    fresh = states.issue(msal_flow(), "https://b.crm.dynamics.com", None)
    with pytest.raises(ConsentStateError) as info:
        states.redeem(expired.state, expired.browser_nonce)
    assert info.value.reason == "expired"
    # The service-side filter on ExpiresAt (a double) works on the real table service: only expired rows go.
    assert states.purge_expired() == 1
    assert states.redeem(fresh.state, fresh.browser_nonce).org_url == "https://b.crm.dynamics.com"
    with pytest.raises(ConsentStateError) as gone:
        states.redeem(expired.state, expired.browser_nonce)
    assert gone.value.reason == "unknown"
