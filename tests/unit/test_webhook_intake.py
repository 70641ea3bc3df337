"""Every path through the webhook intake, with fakes for storage, the org index and the registry."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from shared.tenants.org_index import OrgEntry
from shared.tenants.orgs import OrgRecord, OrgStatus
from shared.tenants.registry import Tenant, TenantStatus
from shared.webhooks.intake import WebhookIntake
from shared.webhooks.store import StorageUnavailableError
from tests.unit import webhook_samples as samples

TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
ORG_URL = "https://contoso.crm.dynamics.com"
HEADERS = {"x-ms-dynamics-organization": "contoso.crm.dynamics.com"}


class FakeStore:
    """The receiver's one storage call: the queue write (a list, so a redelivery shows as a second message)."""

    def __init__(self, fail=False):
        self.fail = fail
        self.messages = []

    @property
    def queued(self):
        return {key: (envelope, payload) for key, envelope, payload in self.messages}

    def seen(self, key):  # the receiver must not read before it writes
        raise AssertionError("the receiver acknowledges with one write, without a dedupe read")

    def enqueue(self, key, envelope, payload):
        if self.fail:
            raise StorageUnavailableError("down")
        self.messages.append((key, envelope, payload))


class FakeIndex:
    def __init__(self, entries):
        self.entries = entries
        self.reads = 0

    def find(self, host):
        self.reads += 1
        return self.entries.get(host)


SECRET = "s3cret-of-contoso"
SECRET_HASH = hashlib.sha256(SECRET.encode()).hexdigest()
SIGNED = {**HEADERS, "x-s2s-webhook-secret": SECRET}


class FakeRegistry:
    """The tenant row: ORG_URL, with its own secret hash (and, after a rotation, the previous one)."""

    def __init__(self, status=TenantStatus.ACTIVE, secret_hash=SECRET_HASH, previous=("", 0)):
        self.status = status
        self.secret_hash = secret_hash
        self.previous = previous
        self.asked = []

    def find_tenant(self, tenant_id):
        self.asked.append(tenant_id)
        org_status = OrgStatus.ACTIVE if self.status is TenantStatus.ACTIVE else OrgStatus.AWAITING_APPLICATION_USER
        org = OrgRecord(
            ORG_URL,
            org_status,
            "t",
            webhook_secret_hash=self.secret_hash or "",
            previous_secrets=(self.previous,) if self.previous[0] else (),
        )
        return Tenant(tenant_id, self.status, (ORG_URL,), "t", "t", orgs=(org,))


def intake(store=None, registry=None, index=None, max_body=300_000, required=True):
    index = index or FakeIndex(
        {"contoso.crm.dynamics.com": OrgEntry("contoso.crm.dynamics.com", ORG_URL, TENANT, samples.ORG_ID)}
    )
    registry = registry or FakeRegistry()
    return WebhookIntake(
        store=store or FakeStore(),
        org_index=index,
        registry=registry,
        max_body_bytes=max_body,
        header_secret_name="x-s2s-webhook-secret",
        secret_required=required,
    )


BODY = json.dumps(samples.update_contact()).encode()


def test_a_good_delivery_is_stored_with_one_write_then_acknowledged():
    store = FakeStore()
    registry = FakeRegistry()
    result = intake(store, registry).accept(BODY, SIGNED)
    assert (result.status, result.code) == (202, "accepted")
    envelope, payload = store.queued[result.key]
    assert payload == BODY and len(store.messages) == 1
    assert envelope["tenant_id"] == TENANT and envelope["org_url"] == ORG_URL and envelope["authenticated"] is True
    assert envelope["message"] == "Update" and envelope["row_id"] == samples.ROW_ID and envelope["truncated"] is False
    assert registry.asked == [TENANT]  # one registry read: the org's own secret comes from the same row


def test_an_unknown_host_costs_the_same_reads_as_a_customer_so_timing_does_not_tell_them_apart():
    """Review finding: a known active host took ~3 storage reads, an unknown one 1, so the 401's timing told a key
    holder which hosts are customers. Both now make one index read and one registry read."""
    for host in ("contoso.crm.dynamics.com", "nobody.crm.dynamics.com"):
        index = FakeIndex(
            {"contoso.crm.dynamics.com": OrgEntry("contoso.crm.dynamics.com", ORG_URL, TENANT, samples.ORG_ID)}
        )
        registry = FakeRegistry()
        result = intake(FakeStore(), registry, index).accept(
            BODY, {"x-ms-dynamics-organization": host, "x-s2s-webhook-secret": "wrong"}
        )
        assert (result.status, index.reads, len(registry.asked)) == (401, 1, 1)


def test_after_a_rotation_the_previous_secret_works_until_its_overlap_ends():
    import time

    new_hash = hashlib.sha256(b"the-new-secret").hexdigest()
    store = FakeStore()
    overlapping = FakeRegistry(secret_hash=new_hash, previous=(SECRET_HASH, int(time.time()) + 600))
    assert intake(store, overlapping).accept(BODY, SIGNED).status == 202  # the old secret, still in its overlap
    assert intake(store, overlapping).accept(BODY, {**HEADERS, "x-s2s-webhook-secret": "the-new-secret"}).status == 202
    ended = FakeRegistry(secret_hash=new_hash, previous=(SECRET_HASH, int(time.time()) - 1))
    assert intake(store, ended).accept(BODY, SIGNED).status == 401
    assert len(store.messages) == 2


def test_a_redelivery_is_queued_again_under_the_same_identity_for_the_processor_to_skip():
    store = FakeStore()
    receiver = intake(store)
    first = receiver.accept(BODY, SIGNED)
    second = receiver.accept(BODY, SIGNED)
    assert (first.status, second.status) == (202, 202) and second.key == first.key
    assert [key for key, _, _ in store.messages] == [first.key, first.key]


def test_truncated_payloads_are_accepted_and_flagged():
    store = FakeStore()
    body = json.dumps(samples.truncated(samples.update_contact())).encode()
    result = intake(store).accept(body, {**SIGNED, "x-ms-dynamics-msg-size-exceeded": "true"})
    assert result.status == 202 and store.queued[result.key][0]["truncated"] is True


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"not json", SIGNED, 400, "invalid_json"),
        (b"\xff\xfe", SIGNED, 400, "invalid_json"),
        (b'{"hello": "world"}', SIGNED, 400, "not_remote_execution_context"),
        (b"[]", SIGNED, 400, "not_remote_execution_context"),
        (BODY, {"x-s2s-webhook-secret": SECRET}, 401, "unauthenticated"),
        (
            BODY,
            {"x-ms-dynamics-organization": "evil.crm.dynamics.com", "x-s2s-webhook-secret": SECRET},
            401,
            "unauthenticated",
        ),
        (BODY, HEADERS, 401, "unauthenticated"),
        (BODY, {**HEADERS, "x-s2s-webhook-secret": "wrong"}, 401, "unauthenticated"),
        (
            json.dumps(samples.update_contact(OrganizationId=samples.USER_OID)).encode(),
            SIGNED,
            403,
            "organization_mismatch",
        ),
    ],
)
def test_rejections_have_their_own_status_and_code_and_store_nothing(body, headers, status, code):
    store = FakeStore()
    result = intake(store).accept(body, headers)
    assert (result.status, result.code) == (status, code)
    assert store.messages == []


def test_an_unknown_host_a_wrong_secret_and_a_wrong_org_id_without_the_secret_all_look_the_same():
    """Nothing about an org is revealed before its own secret proves the sender: the same status, code and
    message whatever is wrong (issue: another customer's host and id with a stolen function key)."""
    store = FakeStore()
    receiver = intake(store)
    spoofed_id = json.dumps(samples.update_contact(OrganizationId=samples.USER_OID)).encode()
    answers = {
        (r.status, r.code, r.message)
        for r in (
            receiver.accept(BODY, {"x-ms-dynamics-organization": "nobody.crm.dynamics.com"}),
            receiver.accept(BODY, {**HEADERS, "x-s2s-webhook-secret": "org-a-secret"}),
            receiver.accept(spoofed_id, {**HEADERS, "x-s2s-webhook-secret": "org-a-secret"}),
            receiver.accept(spoofed_id, HEADERS),
            intake(store, registry=FakeRegistry(TenantStatus.OFFBOARDED)).accept(BODY, SIGNED),
        )
    }
    assert len(answers) == 1 and next(iter(answers))[:2] == (401, "unauthenticated")
    assert store.messages == []


def test_without_a_secret_on_record_only_the_migration_setting_lets_a_delivery_in_and_it_is_not_trusted():
    store = FakeStore()
    assert intake(store, FakeRegistry(secret_hash=None)).accept(BODY, HEADERS).status == 401
    result = intake(store, FakeRegistry(secret_hash=None), required=False).accept(BODY, HEADERS)
    assert result.status == 202 and store.queued[result.key][0]["authenticated"] is False


def test_the_event_key_cannot_be_forged_by_moving_a_separator_between_parts():
    from shared.webhooks.intake import event_key
    from shared.webhooks.remote_context import parse_context

    base = parse_context(samples.update_contact())
    one = replace(base, operation_id="a|b", request_id="c")  # neighbouring parts: "a|b" + "c" ...
    other = replace(base, operation_id="a", request_id="b|c")  # ... and "a" + "b|c" joined with "|" were one key
    assert event_key(samples.ORG_ID, one) != event_key(samples.ORG_ID, other)
    assert event_key(samples.ORG_ID, one) == event_key(samples.ORG_ID.upper(), one)  # case is not identity


def test_oversized_body_is_413():
    store = FakeStore()
    assert intake(store, max_body=1000).accept(BODY + b" " * 2000, SIGNED).status == 413
    assert store.messages == []


@pytest.mark.parametrize(
    "status", [TenantStatus.AWAITING_APPLICATION_USER, TenantStatus.OFFBOARDED, TenantStatus.CONSENT_REVOKED]
)
def test_only_active_tenants_are_served(status):
    store = FakeStore()
    result = intake(store, registry=FakeRegistry(status)).accept(BODY, SIGNED)
    assert (result.status, result.code) == (401, "unauthenticated") and store.messages == []


def test_storage_down_is_503_so_dataverse_retries():
    assert intake(FakeStore(fail=True)).accept(BODY, SIGNED).status == 503


def test_org_lookups_are_cached():
    index = FakeIndex(
        {"contoso.crm.dynamics.com": OrgEntry("contoso.crm.dynamics.com", ORG_URL, TENANT, samples.ORG_ID)}
    )
    receiver = intake(index=index)
    for _ in range(5):
        receiver.accept(BODY, SIGNED)
    assert index.reads == 1


@pytest.mark.parametrize(
    "header",
    ["-----BEGIN PRIVATE KEY-----", "contoso.crm.dynamics.com\nINFO forged line", "a" * 300 + ".com", "localhost"],
)
def test_an_organization_header_that_is_no_host_name_is_refused_without_a_lookup(header):
    index = FakeIndex({})
    store = FakeStore()
    result = intake(store, index=index).accept(
        BODY, {"x-ms-dynamics-organization": header, "x-s2s-webhook-secret": SECRET}
    )
    assert (result.status, result.code) == (401, "unauthenticated")
    assert index.reads == 0 and store.messages == []


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def timed_intake(store, registry, index, clock):
    return WebhookIntake(
        store=store,
        org_index=index,
        registry=registry,
        max_body_bytes=300_000,
        header_secret_name="x-s2s-webhook-secret",
        clock=clock,
    )


def contoso_index():
    return FakeIndex(
        {"contoso.crm.dynamics.com": OrgEntry("contoso.crm.dynamics.com", ORG_URL, TENANT, samples.ORG_ID)}
    )


def test_a_secret_rotated_right_after_the_lookup_was_cached_is_accepted_not_lost():
    """Dataverse does not retry a 401: a delivery with the new secret, half a second after an earlier delivery
    cached the old one, re-reads instead of being refused."""
    clock, store, registry = Clock(), FakeStore(), FakeRegistry()
    receiver = timed_intake(store, registry, contoso_index(), clock)
    assert receiver.accept(BODY, SIGNED).status == 202  # caches the org with SECRET
    registry.secret_hash = hashlib.sha256(b"rotated").hexdigest()
    clock.now += 0.5
    rotated = {**HEADERS, "x-s2s-webhook-secret": "rotated"}
    assert receiver.accept(BODY, rotated).status == 202
    assert len(store.messages) == 2


def test_refusals_on_a_cached_lookup_re_read_at_most_once_per_host_every_two_seconds_known_or_not():
    for host in ("contoso.crm.dynamics.com", "nobody.crm.dynamics.com"):
        clock, index, registry = Clock(), contoso_index(), FakeRegistry()
        receiver = timed_intake(FakeStore(), registry, index, clock)
        wrong = {"x-ms-dynamics-organization": host, "x-s2s-webhook-secret": "wrong"}
        for _ in range(5):  # the first looks up (that is its read); the rest are inside the two seconds
            assert receiver.accept(BODY, wrong).status == 401
            clock.now += 0.1
        assert (index.reads, len(registry.asked)) == (1, 1), host
        clock.now += 2
        assert receiver.accept(BODY, wrong).status == 401  # on the cached lookup: re-reads it
        assert (index.reads, len(registry.asked)) == (2, 2), host


@pytest.mark.parametrize("delivered_before", [0.5, 5.0, 29.0])
def test_two_quick_refusals_cost_the_same_reads_whether_a_customer_just_delivered_or_nobody_ever_did(
    delivered_before,
):
    """Attack on the running app: a key holder sent two 401-bound deliveries in a row for a host. For a customer
    whose own delivery had cached the lookup, the first re-read it and the second answered from the cache (~2 ms);
    for a host nobody delivers for, the first looked up and the second re-read (~9 ms): the second 401's time told
    which hosts are (busy) customers. Each host now costs the same reads."""
    reads = {}
    for host in ("contoso.crm.dynamics.com", "nobody.crm.dynamics.com"):
        clock, index, registry = Clock(), contoso_index(), FakeRegistry()
        store = FakeStore()
        receiver = timed_intake(store, registry, index, clock)
        assert receiver.accept(BODY, SIGNED).status == 202  # the customer's own delivery caches contoso's lookup
        clock.now += delivered_before
        before = (index.reads, len(registry.asked))
        wrong = {"x-ms-dynamics-organization": host, "x-s2s-webhook-secret": "wrong"}
        steps = []
        for _ in range(2):
            assert receiver.accept(BODY, wrong).status == 401
            steps.append((index.reads - before[0], len(registry.asked) - before[1]))
            clock.now += 0.05
        reads[host] = steps
        assert len(store.messages) == 1  # only the customer's own delivery was queued
    assert reads["contoso.crm.dynamics.com"] == reads["nobody.crm.dynamics.com"] == [(1, 1), (1, 1)]


def test_a_flood_of_made_up_hosts_pushes_out_the_oldest_lookups_not_every_customers():
    clock, index, registry = Clock(), contoso_index(), FakeRegistry()
    receiver = timed_intake(FakeStore(), registry, index, clock)
    assert receiver.accept(BODY, SIGNED).status == 202  # contoso's lookup is cached
    for n in range(10_500):
        receiver._lookup(f"made-up-{n}.crm.dynamics.com")
    assert len(receiver._cache) <= 10_000
    # contoso was the oldest entry, so the first trim dropped it; but the table was not emptied wholesale.
    assert len(receiver._cache) > 9_000
    reads = index.reads
    receiver.accept(BODY, SIGNED)
    receiver.accept(BODY, SIGNED)
    assert index.reads == reads + 1  # looked up once again, then cached as the newest entry


def test_a_replaced_secret_is_refused_the_moment_its_overlap_ends_though_the_lookup_is_cached():
    clock, wall = Clock(), Clock()
    wall.now = 10_000.0
    registry = FakeRegistry(secret_hash=hashlib.sha256(b"new").hexdigest(), previous=(SECRET_HASH, 10_010))
    store = FakeStore()
    receiver = WebhookIntake(
        store=store,
        org_index=contoso_index(),
        registry=registry,
        max_body_bytes=300_000,
        header_secret_name="x-s2s-webhook-secret",
        clock=clock,
        wall_clock=wall,
    )
    assert receiver.accept(BODY, SIGNED).status == 202  # the old secret, inside its overlap; the lookup is cached
    wall.now += 11  # the overlap ended 1 s ago; the cached lookup has 29.5 s to go
    clock.now += 0.5
    assert receiver.accept(BODY, SIGNED).status == 401  # (the cache used to keep the hash until it ran out)
    assert receiver.accept(BODY, {**HEADERS, "x-s2s-webhook-secret": "new"}).status == 202
    assert len(store.messages) == 2
