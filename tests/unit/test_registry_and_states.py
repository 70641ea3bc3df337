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
    history = registry.history(t)
    assert [h.to_status for h in history if h.org is None] == ["pending_consent"]  # the tenant's status never moved
    assert sorted(h.org for h in history if h.org) == sorted(orgs)  # each addition recorded exactly once


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


def msal_flow() -> dict[str, object]:
    """The shape of MSAL's auth code flow: what must stay server-side between the form and the answer."""
    return {
        "state": f"st-{uuid.uuid4().hex}",
        "nonce": f"nonce-{uuid.uuid4().hex}",
        "code_verifier": f"verifier-{uuid.uuid4().hex}",
        "scope": ["https://a.crm.dynamics.com/user_impersonation"],
        "auth_uri": "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize?state=x",
    }


def test_state_is_single_use_bound_to_the_browser_and_gives_the_flow_back(store):
    states, _ = store
    flow = msal_flow()
    issued = states.issue(flow, "https://a.crm.dynamics.com", "ops@customer.example")
    assert issued.state == flow["state"]
    redeemed = states.redeem(issued.state, issued.browser_nonce)
    assert (redeemed.org_url, redeemed.contact, redeemed.flow) == (
        "https://a.crm.dynamics.com",
        "ops@customer.example",
        flow,
    )
    with pytest.raises(ConsentStateError, match="already used"):
        states.redeem(issued.state, issued.browser_nonce)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda s, n: (None, n), "missing"),
        (lambda s, n: ("forged-" + s, n), "unknown"),
        (lambda s, n: (s[:-2] + "xx", n), "unknown"),
        (lambda s, n: ("x" * 201, n), "unknown"),
        (lambda s, n: (s, n + "x"), "other_browser"),
        (lambda s, n: (s, None), "other_browser"),
    ],
)
def test_forged_tampered_and_misbound_states_are_refused_and_stay_unused(store, mutate, reason):
    states, _ = store
    issued = states.issue(msal_flow(), "https://a.crm.dynamics.com", None)
    with pytest.raises(ConsentStateError) as info:
        states.redeem(*mutate(issued.state, issued.browser_nonce))
    assert info.value.reason == reason
    # A stranger cannot burn the real browser's sign-in.
    assert states.redeem(issued.state, issued.browser_nonce).org_url == "https://a.crm.dynamics.com"


def test_state_expires_after_its_ttl(store):
    states, clock = store
    issued = states.issue(msal_flow(), "https://a.crm.dynamics.com", None)
    clock["now"] += 601
    with pytest.raises(ConsentStateError) as info:
        states.redeem(issued.state, issued.browser_nonce)
    assert info.value.reason == "expired"


def test_only_hashes_and_a_sealed_flow_are_stored(store):
    states, _ = store
    flow = msal_flow()
    issued = states.issue(flow, "https://a.crm.dynamics.com", None)
    stored = repr(states._table.rows)
    for secret in (issued.state, issued.browser_nonce, flow["nonce"], flow["code_verifier"]):
        assert secret not in stored


def test_a_tampered_sealed_flow_is_unusable(store):
    states, _ = store
    issued = states.issue(msal_flow(), "https://a.crm.dynamics.com", None)
    (key,) = states._table.rows
    sealed = states._table.rows[key]["Flow"]
    states._table.rows[key]["Flow"] = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(ConsentStateError) as info:
        states.redeem(issued.state, issued.browser_nonce)
    assert info.value.reason == "unknown"


def test_purge_deletes_expired_states_only(store):
    states, clock = store
    old = [states.issue(msal_flow(), "https://a.crm.dynamics.com", None) for _ in range(3)]
    states.redeem(old[0].state, old[0].browser_nonce)  # used ones go too once expired
    clock["now"] += 601
    fresh = states.issue(msal_flow(), "https://b.crm.dynamics.com", None)
    assert states.purge_expired() == 3
    assert len(states._table.rows) == 1
    assert states.redeem(fresh.state, fresh.browser_nonce).org_url == "https://b.crm.dynamics.com"
