"""Registry transitions and consent-state checks with an in-memory table (the Azurite versions are in
tests/integration)."""

from __future__ import annotations

import itertools
import threading
import uuid

import pytest

from shared.tenants.consent_states import ConsentStateError, ConsentStateStore
from shared.tenants.registry import (
    ALLOWED_TRANSITIONS,
    TenantRegistry,
    TenantStatus,
    TransitionNotAllowedError,
    transition_allowed,
)
from tests.unit.fake_table import FakeTable


def test_the_lifecycle_path_and_its_exits():
    path = [
        TenantStatus.PENDING_CONSENT,
        TenantStatus.CONSENTED,
        TenantStatus.AWAITING_APPLICATION_USER,
        TenantStatus.ACTIVE,
    ]
    assert all(transition_allowed(a, b) for a, b in itertools.pairwise(path))
    assert not transition_allowed(TenantStatus.PENDING_CONSENT, TenantStatus.ACTIVE)
    assert all(transition_allowed(s, TenantStatus.OFFBOARDED) for s in TenantStatus)
    assert ALLOWED_TRANSITIONS[TenantStatus.OFFBOARDED] == {TenantStatus.PENDING_CONSENT}
    assert transition_allowed(TenantStatus.ACTIVE, TenantStatus.CONSENT_REVOKED)


def make_registry():
    return TenantRegistry(FakeTable(), FakeTable())


def test_refused_transition_changes_nothing():
    registry, t = make_registry(), str(uuid.uuid4())
    registry.record(t, TenantStatus.PENDING_CONSENT, reason="r", actor="a")
    with pytest.raises(TransitionNotAllowedError):
        registry.record(t, TenantStatus.AWAITING_APPLICATION_USER, reason="r", actor="a")
    assert registry.get_tenant(t).status is TenantStatus.PENDING_CONSENT
    with pytest.raises(TransitionNotAllowedError):
        registry.record(t, TenantStatus.ACTIVE, reason="r", actor="a", require_from=frozenset({TenantStatus.CONSENTED}))


def test_concurrent_updates_each_land_exactly_once():
    registry, t = make_registry(), str(uuid.uuid4())
    registry.record(t, TenantStatus.PENDING_CONSENT, reason="r", actor="a")
    orgs = [f"https://o{i}.crm.dynamics.com" for i in range(16)]
    barrier = threading.Barrier(len(orgs))

    def add(org):
        barrier.wait()
        registry.record(t, TenantStatus.PENDING_CONSENT, reason="org", actor="a", org_url=org)

    threads = [threading.Thread(target=add, args=(o,)) for o in orgs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(registry.get_tenant(t).org_urls) == sorted(orgs)
    assert len(registry.history(t)) == 1  # same status: no transitions recorded


def test_racing_status_changes_leave_a_consistent_history():
    registry, t = make_registry(), str(uuid.uuid4())
    registry.record(t, TenantStatus.PENDING_CONSENT, reason="r", actor="a")
    registry.record(t, TenantStatus.CONSENTED, reason="r", actor="a")
    barrier = threading.Barrier(2)
    outcomes = []

    def move(status):
        barrier.wait()
        try:
            outcomes.append(registry.record(t, status, reason="race", actor="a").status)
        except TransitionNotAllowedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=move, args=(s,)) for s in (TenantStatus.ACTIVE, TenantStatus.FAILED)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    final = registry.get_tenant(t).status
    trail = [h.to_status for h in reversed(registry.history(t))]
    assert trail[-1] == final.value
    assert all(transition_allowed(TenantStatus(a), TenantStatus(b)) for a, b in itertools.pairwise(trail))


@pytest.fixture
def store():
    clock = {"now": 1_000_000.0}
    states = ConsentStateStore(FakeTable(), ttl_seconds=600, clock=lambda: clock["now"])
    return states, clock


def test_state_is_single_use_and_bound_to_browser_and_tenant(store):
    states, _ = store
    tenant = str(uuid.uuid4())
    issued = states.issue("https://a.crm.dynamics.com", tenant, None)
    assert states.redeem(issued.state, issued.browser_nonce, tenant).org_url == "https://a.crm.dynamics.com"
    with pytest.raises(ConsentStateError, match="already used"):
        states.redeem(issued.state, issued.browser_nonce, tenant)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda s, n, t: (None, n, t), "missing"),
        (lambda s, n, t: ("forged-" + s, n, t), "unknown"),
        (lambda s, n, t: (s[:-2] + "xx", n, t), "unknown"),
        (lambda s, n, t: (s, n + "x", t), "other_browser"),
        (lambda s, n, t: (s, None, t), "other_browser"),
        (lambda s, n, t: (s, n, str(uuid.uuid4())), "tenant_mismatch"),
        (lambda s, n, t: (s, n, None), "tenant_mismatch"),
    ],
)
def test_forged_tampered_and_misbound_states_are_refused(store, mutate, reason):
    states, _ = store
    tenant = str(uuid.uuid4())
    issued = states.issue("https://a.crm.dynamics.com", tenant, None)
    with pytest.raises(ConsentStateError) as info:
        states.redeem(*mutate(issued.state, issued.browser_nonce, tenant))
    assert info.value.reason == reason


def test_state_expires_after_its_ttl(store):
    states, clock = store
    tenant = str(uuid.uuid4())
    issued = states.issue("https://a.crm.dynamics.com", tenant, None)
    clock["now"] += 601
    with pytest.raises(ConsentStateError) as info:
        states.redeem(issued.state, issued.browser_nonce, tenant)
    assert info.value.reason == "expired"


def test_only_hashes_are_stored(store):
    states, _ = store
    issued = states.issue("https://a.crm.dynamics.com", str(uuid.uuid4()), None)
    stored = repr(states._table.rows)
    assert issued.state not in stored and issued.browser_nonce not in stored
