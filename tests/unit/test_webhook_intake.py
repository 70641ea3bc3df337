"""Every path through the webhook intake, with fakes for storage, the org index and the registry."""

from __future__ import annotations

import hashlib
import json

import pytest

from shared.tenants.org_index import OrgEntry
from shared.tenants.registry import Tenant, TenantStatus
from shared.webhooks.intake import WebhookIntake
from shared.webhooks.store import StorageUnavailableError
from tests.unit import webhook_samples as samples

TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
ORG_URL = "https://contoso.crm.dynamics.com"
HEADERS = {"x-ms-dynamics-organization": "contoso.crm.dynamics.com"}


class FakeStore:
    def __init__(self, fail=False):
        self.fail = fail
        self.queued = {}

    def seen(self, key):
        if self.fail:
            raise StorageUnavailableError("down")
        return key in self.queued

    def enqueue(self, key, envelope, payload):
        if self.fail:
            raise StorageUnavailableError("down")
        self.queued[key] = (envelope, payload)


class FakeIndex:
    def __init__(self, entries):
        self.entries = entries
        self.reads = 0

    def find(self, host):
        self.reads += 1
        return self.entries.get(host)


class FakeRegistry:
    def __init__(self, status=TenantStatus.ACTIVE, secret_hash=None):
        self.status = status
        self.secret_hash = secret_hash

    def find_tenant(self, tenant_id):
        return Tenant(tenant_id, self.status, (ORG_URL,), "t", "t")

    def webhook_secret_hash(self, tenant_id):
        return self.secret_hash


def intake(store=None, registry=None, index=None, max_body=300_000):
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
        header_secrets=registry.webhook_secret_hash,
    )


BODY = json.dumps(samples.update_contact()).encode()


def test_a_good_delivery_is_stored_then_acknowledged():
    store = FakeStore()
    result = intake(store).accept(BODY, HEADERS)
    assert (result.status, result.code) == (202, "accepted")
    envelope, payload = store.queued[result.key]
    assert payload == BODY
    assert envelope["tenant_id"] == TENANT and envelope["org_url"] == ORG_URL
    assert envelope["message"] == "Update" and envelope["row_id"] == samples.ROW_ID and envelope["truncated"] is False


def test_a_duplicate_delivery_is_acknowledged_without_new_work():
    store = FakeStore()
    receiver = intake(store)
    first = receiver.accept(BODY, HEADERS)
    second = receiver.accept(BODY, HEADERS)
    assert second.status == 200 and second.duplicate and second.key == first.key
    assert len(store.queued) == 1


def test_truncated_payloads_are_accepted_and_flagged():
    store = FakeStore()
    body = json.dumps(samples.truncated(samples.update_contact())).encode()
    result = intake(store).accept(body, {**HEADERS, "x-ms-dynamics-msg-size-exceeded": "true"})
    assert result.status == 202 and store.queued[result.key][0]["truncated"] is True


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"not json", HEADERS, 400, "invalid_json"),
        (b"\xff\xfe", HEADERS, 400, "invalid_json"),
        (b'{"hello": "world"}', HEADERS, 400, "not_remote_execution_context"),
        (b"[]", HEADERS, 400, "not_remote_execution_context"),
        (BODY, {}, 403, "unknown_organization"),
        (BODY, {"x-ms-dynamics-organization": "evil.crm.dynamics.com"}, 403, "unknown_organization"),
        (
            json.dumps(samples.update_contact(OrganizationId=samples.USER_OID)).encode(),
            HEADERS,
            403,
            "organization_mismatch",
        ),
    ],
)
def test_rejections_have_their_own_status_and_code_and_store_nothing(body, headers, status, code):
    store = FakeStore()
    result = intake(store).accept(body, headers)
    assert (result.status, result.code) == (status, code)
    assert store.queued == {}


def test_oversized_body_is_413():
    store = FakeStore()
    assert intake(store, max_body=1000).accept(BODY + b" " * 2000, HEADERS).status == 413
    assert store.queued == {}


@pytest.mark.parametrize(
    "status", [TenantStatus.AWAITING_APPLICATION_USER, TenantStatus.OFFBOARDED, TenantStatus.CONSENT_REVOKED]
)
def test_only_active_tenants_are_served(status):
    store = FakeStore()
    result = intake(store, registry=FakeRegistry(status)).accept(BODY, HEADERS)
    assert (result.status, result.code) == (403, "unknown_organization") and store.queued == {}


def test_storage_down_is_503_so_dataverse_retries():
    assert intake(FakeStore(fail=True)).accept(BODY, HEADERS).status == 503


def test_per_tenant_header_secret_is_checked_when_configured():
    secret_hash = hashlib.sha256(b"s3cret").hexdigest()
    store = FakeStore()
    receiver = intake(store, registry=FakeRegistry(secret_hash=secret_hash))
    assert receiver.accept(BODY, HEADERS).status == 401
    assert receiver.accept(BODY, {**HEADERS, "x-s2s-webhook-secret": "wrong"}).status == 401
    assert store.queued == {}
    assert receiver.accept(BODY, {**HEADERS, "x-s2s-webhook-secret": "s3cret"}).status == 202


def test_org_lookups_are_cached():
    index = FakeIndex(
        {"contoso.crm.dynamics.com": OrgEntry("contoso.crm.dynamics.com", ORG_URL, TENANT, samples.ORG_ID)}
    )
    receiver = intake(index=index)
    for _ in range(5):
        receiver.accept(BODY, HEADERS)
    assert index.reads == 1


@pytest.mark.parametrize(
    "header",
    ["-----BEGIN PRIVATE KEY-----", "contoso.crm.dynamics.com\nINFO forged line", "a" * 300 + ".com", "localhost"],
)
def test_an_organization_header_that_is_no_host_name_is_refused_without_a_lookup(header):
    index = FakeIndex({})
    store = FakeStore()
    result = intake(store, index=index).accept(BODY, {"x-ms-dynamics-organization": header})
    assert (result.status, result.code) == (403, "unknown_organization")
    assert index.reads == 0 and store.queued == {}
