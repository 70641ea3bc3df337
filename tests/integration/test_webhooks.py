"""Webhook receiver and processor on Azurite with the real storage SDKs, calling the emulator back."""

from __future__ import annotations

import base64
import json
import os
import uuid
from dataclasses import dataclass

import azure.functions as func
import pytest

from cli.main import main as cli_main
from functions import webhooks as fn
from sandbox.azurite import Azurite
from shared.bootstrap import Services, build_services, use_services
from shared.tenants.orgs import OrgStatus
from shared.tenants.registry import TenantStatus
from tests.integration.conftest import app_with_certificate, cert_file_settings, customer_org
from tests.unit import webhook_samples as samples

pytestmark = pytest.mark.integration


@dataclass
class Hook:
    sandbox: object
    services: Services
    tenant: str
    org_url: str
    org_id: str
    client_id: str
    host_name: str
    secret: str = ""  # the org's own webhook secret (tenants webhook-secret --org)
    receiver_url: str = ""
    function_key: str = ""

    def deliver(self, body: dict, **headers: str) -> func.HttpResponse:
        req = func.HttpRequest(
            "POST",
            "/api/webhooks/dataverse",
            body=json.dumps(body).encode(),
            headers={"x-ms-dynamics-organization": self.host_name, "x-s2s-webhook-secret": self.secret, **headers},
        )
        return fn.dataverse_webhook(req)

    def context(self, **overrides) -> dict:
        return samples.update_contact(
            OrganizationId=self.org_id, CorrelationId=str(uuid.uuid4()), OperationId=str(uuid.uuid4()), **overrides
        )

    def only_message(self):
        """This tenant's one queued event message, hidden from other receivers for 5 s."""
        queue = self.services.storage.queue("webhook-events")
        (message,) = [
            m
            for m in queue.receive_messages(max_messages=32, visibility_timeout=5)
            if json.loads(m.content)["tenant_id"] == self.tenant
        ]
        return message

    def drain(self, dequeue_count: int = 1) -> list[str]:
        """Process this tenant's queued events (the queue is shared by every test on the Azurite session)."""
        queue = self.services.storage.queue("webhook-events")
        outcomes = []
        for message in queue.receive_messages(max_messages=32, visibility_timeout=1):
            if json.loads(message.content).get("tenant_id") != self.tenant:
                continue  # another test's event: it becomes visible again in a second
            try:
                outcomes.append(self.services.webhook_processor.process(message.content, dequeue_count))
            except Exception as exc:  # the host would retry later
                outcomes.append(type(exc).__name__)
                continue
            queue.delete_message(message)
        return outcomes

    def changes(self) -> list[dict]:
        table = self.services.storage.table("processedchanges")
        return list(table.query_entities("PartitionKey eq @pk", parameters={"pk": self.tenant}))


def make_hook(sandbox, connection_string, tmp_path) -> Hook:
    st = sandbox.state
    client_id, _, cert = app_with_certificate(st, "Webhook test", tmp_path)
    tenant, org_url, _ = customer_org(st, client_id, "hook")
    host_name = org_url.removeprefix("https://")
    org = st.get_org(org_url)
    settings = cert_file_settings(
        sandbox,
        client_id,
        cert,
        storage_connection_string=connection_string,
        dataverse_retry_budget_seconds=5,
    )
    services = build_services(settings)
    registry = services.registry
    for status in (TenantStatus.PENDING_CONSENT, TenantStatus.CONSENTED, TenantStatus.ACTIVE):
        registry.record(tenant, status, reason="test", actor="test", org_url=org_url)
    registry.set_org_status(tenant, org_url, OrgStatus.ACTIVE, reason="seed", actor="test")
    services.org_index.record(org_url, tenant, org.org_id)
    secret = registry.set_webhook_secret(tenant, org_url)
    use_services(services)
    return Hook(sandbox, services, tenant, org_url, org.org_id, client_id, host_name, secret)


@pytest.fixture
def hook(sandbox, sandbox_env, azurite, tmp_path):
    created = make_hook(sandbox, azurite.connection_string, tmp_path)
    yield created
    use_services(None)


def test_delivery_is_queued_processed_once_and_recorded(hook):
    body = hook.context()
    first = hook.deliver(body)
    assert first.status_code == 202
    assert hook.deliver(body).status_code == 202  # Dataverse's retry of the same delivery: queued again
    assert sorted(hook.drain()) == ["done", "duplicate"]  # ... and skipped by the processor's claim
    (change,) = hook.changes()
    assert change["Entity"] == "contact" and change["Message"] == "Update" and change["RowId"] == samples.ROW_ID
    assert "firstname" in json.loads(change["ChangedAttributes"])
    assert change["CorrelationId"] == body["CorrelationId"]


def test_a_duplicate_message_is_not_processed_twice(hook):
    body = hook.context()
    assert hook.deliver(body).status_code == 202
    message = hook.only_message()
    assert hook.services.webhook_processor.process(message.content, 1) == "done"
    assert hook.services.webhook_processor.process(message.content, 2) == "duplicate"
    assert len(hook.changes()) == 1


def test_truncated_event_rereads_the_row_from_dataverse(hook):
    (row_id,) = hook.sandbox.state.seed_rows(hook.org_url, "contacts", 1)
    body = samples.truncated(hook.context(PrimaryEntityId=row_id))
    assert hook.deliver(body, **{"x-ms-dynamics-msg-size-exceeded": "true"}).status_code == 202
    assert hook.drain() == ["done"]
    (change,) = hook.changes()
    assert change["Truncated"] is True and change["ReRead"] is True
    assert "contactid" in json.loads(change["ChangedAttributes"])


def test_large_payload_goes_through_a_blob(hook):
    body = hook.context(SharedVariables=[{"key": "padding", "value": "x" * 60_000}])
    assert hook.deliver(body).status_code == 202
    blobs = list(hook.services.storage.container("webhook-payloads").list_blobs())
    assert blobs
    assert hook.drain() == ["done"]


def test_a_payload_small_in_bytes_but_large_once_queued_goes_through_a_blob(hook):
    # ~38 KB of Japanese text is under any payload-size cut, but JSON-escaped and base64-encoded it would pass
    # the queue's 64 KiB message limit: the decision is made on the message as queued.
    text = "データ同期" * 2_300
    body = hook.context(SharedVariables=[{"key": "note", "value": text}])
    raw = json.dumps(body, ensure_ascii=False).encode()
    assert len(raw) < 40 * 1024
    before = {b.name for b in hook.services.storage.container("webhook-payloads").list_blobs()}
    req = func.HttpRequest(
        "POST",
        "/api/webhooks/dataverse",
        body=raw,
        headers={"x-ms-dynamics-organization": hook.host_name, "x-s2s-webhook-secret": hook.secret},
    )
    assert fn.dataverse_webhook(req).status_code == 202
    after = {b.name for b in hook.services.storage.container("webhook-payloads").list_blobs()}
    assert len(after - before) == 1
    queue = hook.services.storage.queue("webhook-events")
    mine = [m for m in queue.peek_messages(max_messages=32) if json.loads(m.content)["tenant_id"] == hook.tenant]
    assert mine and all(len(base64.b64encode(m.content.encode())) <= 64 * 1024 for m in mine)
    assert hook.drain() == ["done"]


def test_permanent_failure_is_poisoned_with_its_reason_and_can_be_replayed(hook, capsys):
    (row_id,) = hook.sandbox.state.seed_rows(hook.org_url, "contacts", 1)
    hook.sandbox.state.remove_application_user(hook.org_url, hook.client_id)
    body = samples.truncated(hook.context(PrimaryEntityId=row_id))
    assert hook.deliver(body, **{"x-ms-dynamics-msg-size-exceeded": "true"}).status_code == 202
    assert hook.drain() == ["poisoned"]
    assert cli_main(["--json", "poison", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)["messages"]
    mine = [m for m in listed if m.get("correlation_id") == body["CorrelationId"]]
    assert mine and "ApplicationUserMissingError" in mine[0]["poison_reason"]
    hook.sandbox.state.add_application_user(hook.org_url, hook.client_id)
    assert cli_main(["--json", "poison", "replay", mine[0]["id"]]) == 0
    capsys.readouterr()
    assert hook.drain() == ["done"]
    assert len(hook.changes()) == 1


def test_transient_failures_retry_then_poison_at_the_dequeue_limit(hook, monkeypatch):
    from shared.dataverse.errors import DataverseUnreachableError
    from shared.webhooks.processing import handlers

    calls = []

    def flaky(event, tools):
        calls.append(event.key)
        raise DataverseUnreachableError("down", org_url=hook.org_url, is_transient=True)

    monkeypatch.setattr(handlers, "_handlers", [("*", "*", flaky)])
    assert hook.deliver(hook.context()).status_code == 202
    queue = hook.services.storage.queue("webhook-events")
    message = hook.only_message()
    processor = hook.services.webhook_processor
    for attempt in range(1, 5):
        with pytest.raises(Exception, match="down"):
            processor.process(message.content, attempt)
    assert processor.process(message.content, 5) == "poisoned"
    assert len(calls) == 5
    queue.delete_message(message)


def test_a_redelivery_takes_over_the_lease_its_own_ended_attempt_left(hook, monkeypatch):
    assert hook.deliver(hook.context()).status_code == 202
    queue = hook.services.storage.queue("webhook-events")
    message = hook.only_message()
    processor = hook.services.webhook_processor
    store = hook.services.webhook_store
    real_complete = store.complete

    def storage_gone(claim):
        raise ConnectionError("storage went away before the event was marked done")

    monkeypatch.setattr(store, "complete", storage_gone)
    with pytest.raises(ConnectionError):
        processor.process(message.content, 1, message.id)  # handlers ran; the lease is left behind
    monkeypatch.setattr(store, "complete", real_complete)
    # Another message carrying the same event (a duplicate delivery) must still wait for the lease...
    with pytest.raises(Exception, match="Another worker"):
        processor.process(message.content, 1, "another-message")
    # ...but the host's redelivery of the same message belongs to the ended attempt: it takes over and finishes.
    assert processor.process(message.content, 2, message.id) == "done"
    assert processor.process(message.content, 3, message.id) == "duplicate"
    assert len(hook.changes()) == 1
    queue.delete_message(message)


def test_storage_down_answers_503_and_keeps_what_was_acknowledged(sandbox, sandbox_env, tmp_path):
    private = Azurite()
    try:
        hook = make_hook(sandbox, private.connection_string, tmp_path)
        acknowledged = [hook.context() for _ in range(3)]
        assert [hook.deliver(b).status_code for b in acknowledged] == [202, 202, 202]
        queue_before = hook.services.storage.queue("webhook-events").get_queue_properties().approximate_message_count
        private.stop()
        assert hook.deliver(hook.context()).status_code == 503
        assert queue_before == 3
    finally:
        use_services(None)
        private.stop()
    assert os.environ.get("STORAGE_CONNECTION_STRING") is None


def test_another_customers_secret_with_this_orgs_host_and_id_is_refused_before_anything_is_revealed(
    sandbox, sandbox_env, azurite, tmp_path
):
    """Cross-tenant spoof: org A's secret (and the shared function key) with org B's host and organisation id is a
    401 like any unknown host, and nothing is queued; B's own secret is accepted."""
    org_a = make_hook(sandbox, azurite.connection_string, tmp_path)
    org_b = make_hook(sandbox, azurite.connection_string, tmp_path)
    queue = org_b.services.storage.queue("webhook-events")
    before = queue.get_queue_properties().approximate_message_count
    spoof = org_b.deliver(org_b.context(), **{"x-s2s-webhook-secret": org_a.secret})
    unknown = org_b.deliver(org_b.context(), **{"x-ms-dynamics-organization": "nobody.crm.dynamics.com"})
    assert spoof.status_code == unknown.status_code == 401
    assert json.loads(spoof.get_body())["error"]["code"] == json.loads(unknown.get_body())["error"]["code"]
    assert queue.get_queue_properties().approximate_message_count == before
    assert org_b.deliver(org_b.context()).status_code == 202
    use_services(None)


def test_rotating_an_orgs_secret_refuses_the_old_one(hook):
    old = hook.secret
    hook.secret = hook.services.registry.set_webhook_secret(hook.tenant, hook.org_url)
    hook.services.webhook_intake._cache.clear()  # the receiver caches an org's lookup for 30 s
    assert hook.deliver(hook.context(), **{"x-s2s-webhook-secret": old}).status_code == 401
    assert hook.deliver(hook.context()).status_code == 202


def test_an_event_queued_before_its_org_was_offboarded_is_poisoned_not_processed(hook):
    assert hook.deliver(hook.context()).status_code == 202
    hook.services.onboarding.offboard(hook.tenant, actor="operator", reason="contract ended")
    assert hook.drain() == ["poisoned"]
    assert hook.changes() == []  # nothing ran with the offboarded org's token
    poisoned = hook.services.webhook_store.list_poison()
    assert any(
        "org_not_active" in m.get("poison_reason", "") or "no longer an active org" in m.get("poison_reason", "")
        for m in poisoned
    )


def test_a_rotated_secret_is_accepted_at_once_though_the_old_lookup_was_cached(hook, monkeypatch):
    import time as _time

    assert hook.deliver(hook.context()).status_code == 202  # the receiver now caches this org's lookup
    old = hook.secret
    hook.secret = hook.services.registry.set_webhook_secret(hook.tenant, hook.org_url)
    intake = hook.services.webhook_intake
    monkeypatch.setattr(intake, "_clock", lambda: _time.monotonic() + 5)  # the cached lookup is 5 s old
    assert hook.deliver(hook.context()).status_code == 202  # re-read once instead of refusing with a stale secret
    assert hook.deliver(hook.context(), **{"x-s2s-webhook-secret": old}).status_code == 401
    assert set(hook.drain()) == {"done"}


def test_replaying_a_poisoned_copy_of_a_done_event_does_not_run_it_again(hook):
    body = hook.context()
    assert hook.deliver(body).status_code == 202
    message = hook.only_message()
    envelope = json.loads(message.content)
    store, processor = hook.services.webhook_store, hook.services.webhook_processor
    assert processor.process(message.content, 1, message.id) == "done"
    hook.services.storage.queue("webhook-events").delete_message(message)
    store.to_poison(envelope, "a copy the host gave up on while the event was busy", 5)
    (mine,) = [m for m in store.list_poison() if m.get("correlation_id") == body["CorrelationId"]]
    store.replay_poison(mine["id"])
    assert hook.drain() == ["duplicate"]
    assert len(hook.changes()) == 1
