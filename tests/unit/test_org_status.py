"""Status per organisation in the tenant registry: the rule that sums orgs up into the tenant's status, an org's
failure never demoting the tenant's other orgs, per-org re-check tickets, removing an org, and the migration of
rows written before per-org status (schema 1) without losing anything."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest

from shared.tenants.orgs import OrgRecord, OrgStatus, OrgVerification, dump_orgs, load_orgs, summarize
from shared.tenants.registry import (
    OrgNotFoundError,
    OrgUpdate,
    TenantRegistry,
    TenantStatus,
    Verification,
)
from tests.unit.fake_table import FakeTable

A, B = "https://a.crm.dynamics.com", "https://b.crm4.dynamics.com"


def orgs(*statuses: OrgStatus) -> tuple[OrgRecord, ...]:
    return tuple(OrgRecord(f"https://o{n}.crm.dynamics.com", status, "t") for n, status in enumerate(statuses))


@pytest.mark.parametrize(
    ("current", "org_statuses", "expected"),
    [
        ("consented", (OrgStatus.ACTIVE, OrgStatus.AWAITING_APPLICATION_USER), "active"),
        ("active", (OrgStatus.FAILED, OrgStatus.ACTIVE), "active"),
        ("active", (OrgStatus.AWAITING_APPLICATION_USER, OrgStatus.FAILED), "awaiting_application_user"),
        ("active", (OrgStatus.FAILED, OrgStatus.FAILED), "failed"),
        ("consented", (OrgStatus.PENDING_VERIFICATION,), "consented"),
        ("consented", (), "consented"),
        ("consent_revoked", (OrgStatus.ACTIVE,), "consent_revoked"),
        ("offboarded", (OrgStatus.ACTIVE,), "offboarded"),
        ("pending_consent", (OrgStatus.ACTIVE,), "pending_consent"),
    ],
)
def test_the_tenant_status_is_the_documented_sum_of_its_orgs(current, org_statuses, expected):
    assert summarize(current, orgs(*org_statuses)) == expected


def active_tenant(registry: TenantRegistry) -> str:
    t = str(uuid.uuid4())
    for status in (TenantStatus.PENDING_CONSENT, TenantStatus.CONSENTED):
        registry.record(t, status, reason="r", actor="a", org_url=A)
    registry.record_verification(
        t,
        {A: OrgUpdate(OrgStatus.ACTIVE, OrgVerification("t", "active"))},
        reason="ok",
        actor="a",
        verification=Verification("t", "verified"),
    )
    return t


def test_a_new_org_without_application_user_waits_and_the_working_one_stays_active():
    registry = TenantRegistry(FakeTable(), FakeTable())
    t = active_tenant(registry)
    registry.record(t, TenantStatus.ACTIVE, reason="second org", actor="admin", org_url=B)
    tenant = registry.record_verification(
        t,
        {
            B: OrgUpdate(
                OrgStatus.AWAITING_APPLICATION_USER, OrgVerification("t", "awaiting_application_user", "0x80072560")
            )
        },
        reason="no app user in B",
        actor="admin",
        verification=Verification("t", "verified"),
    )
    assert tenant.status is TenantStatus.ACTIVE
    assert {o.url: o.status for o in tenant.orgs} == {A: OrgStatus.ACTIVE, B: OrgStatus.AWAITING_APPLICATION_USER}
    assert tenant.active_org_urls == (A,)
    org_rows = [(h.org, h.from_status, h.to_status) for h in registry.history(t) if h.org]
    assert (B, "pending_verification", "awaiting_application_user") in org_rows


def test_an_inconclusive_verification_keeps_the_org_status_and_records_the_attempt():
    registry = TenantRegistry(FakeTable(), FakeTable())
    t = active_tenant(registry)
    tenant = registry.record_verification(
        t,
        {A: OrgUpdate(None, OrgVerification("t2", "error", "429"))},
        reason="throttled",
        actor="health",
        verification=Verification("t2", "error", "429"),
    )
    assert tenant.status is TenantStatus.ACTIVE and tenant.org(A).status is OrgStatus.ACTIVE
    assert tenant.org(A).last_verification == OrgVerification("t2", "error", "429")


def test_tickets_are_per_org_expire_and_are_not_replaced_by_verification():
    clock = {"now": 1_000.0}
    registry = TenantRegistry(FakeTable(), FakeTable(), clock=lambda: clock["now"])
    t = active_tenant(registry)
    registry.record(t, TenantStatus.ACTIVE, reason="second org", actor="admin", org_url=B)
    ticket = registry.issue_recheck_ticket(t, B, ttl_seconds=60)
    assert registry.check_recheck_ticket(t, ticket) == B
    assert registry.check_recheck_ticket(t, ticket, B) == B
    assert registry.check_recheck_ticket(t, ticket, A) is None  # bound to its org
    assert registry.check_recheck_ticket(str(uuid.uuid4()), ticket) is None
    registry.record_verification(  # background verification: the ticket stays
        t,
        {B: OrgUpdate(OrgStatus.AWAITING_APPLICATION_USER, OrgVerification("t", "awaiting_application_user"))},
        reason="health",
        actor="health job",
        verification=Verification("t", "verified"),
    )
    assert registry.check_recheck_ticket(t, ticket) == B
    assert ticket not in json.dumps(registry._tenants.rows[("tenant", t)])  # only its hash is stored
    clock["now"] += 61
    assert registry.check_recheck_ticket(t, ticket) is None
    with pytest.raises(OrgNotFoundError):
        registry.issue_recheck_ticket(t, "https://nope.crm.dynamics.com")


def test_removing_an_org_sums_the_tenant_up_again_and_is_recorded():
    registry = TenantRegistry(FakeTable(), FakeTable())
    t = active_tenant(registry)
    registry.record(t, TenantStatus.ACTIVE, reason="second org", actor="admin", org_url=B)
    registry.record_verification(
        t,
        {B: OrgUpdate(OrgStatus.AWAITING_APPLICATION_USER, OrgVerification("t", "awaiting_application_user"))},
        reason="r",
        actor="a",
        verification=Verification("t", "verified"),
    )
    tenant = registry.remove_org(t, A, actor="operator", reason="customer asked")
    assert tenant.org_urls == (B,) and tenant.status is TenantStatus.AWAITING_APPLICATION_USER
    removed = next(h for h in registry.history(t) if h.org == A and h.to_status == "removed")
    assert removed.actor == "operator" and removed.reason == "customer asked"
    with pytest.raises(OrgNotFoundError):
        registry.remove_org(t, A, actor="operator", reason="again")


def schema_1_row(status: str, ticket_hash: str = "") -> dict[str, object]:
    """A registry row as written before per-org status."""
    return {
        "PartitionKey": "tenant",
        "RowKey": "11111111-2222-3333-4444-555555555555",
        "Status": status,
        "OrgUrls": json.dumps([A, B]),
        "CreatedAt": "2026-01-01T00:00:00+00:00",
        "UpdatedAt": "2026-02-01T00:00:00+00:00",
        "OnboardedBy": "admin@contoso.example",
        "LastVerification": json.dumps(
            {"at": "2026-02-01T00:00:00+00:00", "outcome": status, "error_code": "0x80072560", "message": "m"}
        ),
        "RecheckTicketHash": ticket_hash,
        "RecheckTicketExpires": 99_999_999_999 if ticket_hash else 0,
        "WebhookSecretHash": "whs",
    }


@pytest.mark.parametrize(
    ("status", "org_status"),
    [
        ("active", OrgStatus.ACTIVE),
        ("awaiting_application_user", OrgStatus.AWAITING_APPLICATION_USER),
        ("failed", OrgStatus.FAILED),
        ("consented", OrgStatus.PENDING_VERIFICATION),
    ],
)
def test_schema_1_rows_read_as_per_org_status_without_losing_anything(status, org_status):
    from shared.tenants.registry import _hash

    tickets = FakeTable()
    row = schema_1_row(status, _hash("old-ticket"))
    tickets.rows[("tenant", row["RowKey"])] = row
    tickets.etags[("tenant", row["RowKey"])] = 'W/"1"'
    registry = TenantRegistry(tickets, FakeTable())
    tenant = registry.get_tenant(str(row["RowKey"]))
    assert tenant.status.value == status and tenant.org_urls == (A, B)
    assert all(org.status is org_status for org in tenant.orgs)
    assert all(
        org.last_verification == OrgVerification(**json.loads(str(row["LastVerification"]))) for org in tenant.orgs
    )
    # The tenant's old ticket still opens a re-check (of each of its orgs) until it expires.
    assert registry.check_recheck_ticket(tenant.tenant_id, "old-ticket") == A
    assert registry.check_recheck_ticket(tenant.tenant_id, "old-ticket", B) == B
    assert all(org.webhook_secret_hash == "whs" for org in tenant.orgs)  # the tenant's secret, on every org
    # ... which lets each org pass as the other: the operator's view says so until each gets its own.
    shown = {org["url"]: org.get("webhook_secret_shared_with") for org in tenant.to_dict()["orgs"]}
    assert shown == {A: [B], B: [A]}
    # The next write stores schema 2 and keeps every other field.
    registry.record(tenant.tenant_id, TenantStatus(status), reason="touch", actor="migration test")
    stored = tickets.rows[("tenant", row["RowKey"])]
    assert stored["SchemaVersion"] == 2 and [o.url for o in load_orgs(stored)] == [A, B]
    for kept in ("CreatedAt", "OnboardedBy", "LastVerification", "WebhookSecretHash", "Status"):
        assert stored[kept] == row[kept], kept
    assert registry.check_recheck_ticket(tenant.tenant_id, "old-ticket") == A
    assert all(org.webhook_secret_hash == "whs" for org in load_orgs(stored))
    registry.set_webhook_secret(tenant.tenant_id, A)
    after = {
        org["url"]: org.get("webhook_secret_shared_with")
        for org in registry.get_tenant(tenant.tenant_id).to_dict()["orgs"]
    }
    assert after == {A: None, B: None}


def offboard(registry: TenantRegistry, t: str) -> None:
    """What OnboardingService.offboard writes: A disconnected, the tenant offboarded."""
    registry.record_verification(
        t,
        {A: OrgUpdate(OrgStatus.DISCONNECTED, OrgVerification("t", "offboarded"))},
        reason="left",
        actor="op",
        tenant_status=TenantStatus.OFFBOARDED,
    )


def test_a_verification_racing_an_offboarding_leaves_the_orgs_disconnected():
    registry = TenantRegistry(FakeTable(), FakeTable())
    t = active_tenant(registry)
    offboard(registry, t)
    late = registry.record_verification(  # the health job's answer, computed before the offboarding landed
        t,
        {A: OrgUpdate(OrgStatus.ACTIVE, OrgVerification("t2", "active"))},
        reason="ok",
        actor="health job",
    )
    assert late.status is TenantStatus.OFFBOARDED and late.org(A).status is OrgStatus.DISCONNECTED
    assert late.org(A).last_verification == OrgVerification("t2", "active")  # the attempt is still on record


def test_connecting_a_disconnected_org_again_starts_a_new_connection_and_nothing_else_does():
    registry = TenantRegistry(FakeTable(), FakeTable())
    t = active_tenant(registry)
    registry.set_webhook_secret(t, A, overlap_seconds=60)
    registry.connect_org(t, A, actor="admin", reason="again", connected_by="admin@x", contact=None)  # still connected
    assert registry.get_tenant(t).org(A).reconnections == 0
    offboard(registry, t)
    registry.connect_org(t, A, actor="admin", reason="back", connected_by="admin@x", contact=None)
    assert registry.get_tenant(t).org(A).reconnections == 1


def test_an_org_removed_and_added_again_has_a_connection_it_never_had_though_its_count_starts_over():
    """remove-org deletes the record, count included: the connection id is what tells the new connection from the
    first (shared.webhooks.processing poisons an event accepted under the first)."""
    tenants = FakeTable()
    registry = TenantRegistry(tenants, FakeTable())
    t = active_tenant(registry)
    first = registry.get_tenant(t).org(A)
    assert first is not None and first.connection_id
    registry.set_webhook_secret(t, A)  # a rotation keeps the connection
    registry.connect_org(t, A, actor="admin", reason="again", connected_by="admin@x", contact=None)  # still connected
    kept = registry.get_tenant(t).org(A)
    assert kept is not None and kept.connection_id == first.connection_id and kept.reconnections == 0
    registry.remove_org(t, A, actor="op", reason="leak")
    registry.connect_org(t, A, actor="admin", reason="back", connected_by="admin@x", contact=None)
    again = registry.get_tenant(t).org(A)
    assert again is not None and again.reconnections == first.reconnections == 0  # the count starts over ...
    assert again.connection_id not in {"", first.connection_id}  # ... the connection does not
    stored = json.loads(tenants.get_entity("tenant", t)["Orgs"])  # the row as stored
    assert [org["connection_id"] for org in stored] == [again.connection_id]
    offboard(registry, t)
    registry.connect_org(t, A, actor="admin", reason="back", connected_by="admin@x", contact=None)
    reconnected = registry.get_tenant(t).org(A)
    assert reconnected is not None and reconnected.reconnections == 1
    assert reconnected.connection_id not in {"", first.connection_id, again.connection_id}


def test_rotations_keep_every_replaced_secret_inside_its_own_overlap_and_no_more():
    from shared.tenants.orgs import MAX_PREVIOUS_SECRETS, OrgRecord

    org = OrgRecord(A, OrgStatus.ACTIVE, "t", webhook_secret_hash="h0")
    org = replace(org, **org.rotated("h1", now=1000, overlap_seconds=3600))
    org = replace(org, **org.rotated("h2", now=1100, overlap_seconds=3600))
    # h0 keeps its first deadline (a retry does not extend it); the earliest deadline is the one to beat.
    assert org.previous_secrets == (("h1", 4700), ("h0", 4600)) and org.previous_secret_until == 4600
    assert org.accepted_secret_hashes(4650) == ("h2", "h1")  # h0's overlap is over
    org = replace(org, **org.rotated("h3", now=4650, overlap_seconds=3600))
    assert [digest for digest, _ in org.previous_secrets] == ["h2", "h1"]  # the expired one is not carried on
    for n in range(4, 10):
        org = replace(org, **org.rotated(f"h{n}", now=5000 + n, overlap_seconds=3600))
    assert len(org.previous_secrets) == MAX_PREVIOUS_SECRETS
    assert replace(org, **org.rotated("h10", now=6000, overlap_seconds=0)).accepted_secret_hashes(6000) == ("h10",)
    stored = load_orgs({"SchemaVersion": 2, "Orgs": dump_orgs((org,))})
    assert stored[0].previous_secrets == org.previous_secrets
