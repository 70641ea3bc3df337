"""Attacks on the webhook receiver first tried over HTTP against the running app (`make start`), pinned here on
Azurite with the real storage SDKs: what the receiver reads, queues and refuses, not only what it answers."""

from __future__ import annotations

import json
import time

import pytest

from shared.bootstrap import use_services
from tests.integration.test_webhooks import make_hook

pytestmark = pytest.mark.integration


@pytest.fixture
def hook(sandbox, sandbox_env, azurite, tmp_path):
    created = make_hook(sandbox, azurite.connection_string, tmp_path)
    yield created
    use_services(None)


class Counted:
    """Counts the calls of one method of a real object (the org index, the registry): each is a storage read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: object, name: str) -> None:
        self.calls = 0
        real = getattr(target, name)

        def counted(*args: object, **kwargs: object) -> object:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(target, name, counted)


def test_two_quick_refusals_read_storage_alike_for_a_customer_that_just_delivered_and_an_unknown_host(
    sandbox, sandbox_env, azurite, tmp_path, monkeypatch
):
    """Found against the running app: with the shared function key and a wrong secret, two 401s in a row for a
    customer whose own delivery had just cached its lookup took ~10 ms then ~2 ms (the second answered from the
    cache), for a host nobody delivers for ~9 ms twice (the second re-read storage): the second 401's time told a key
    holder which hosts are busy customers. Both now read storage for the first refusal only."""
    hook = make_hook(sandbox, azurite.connection_string, tmp_path)
    try:
        intake = hook.services.webhook_intake
        index = Counted(monkeypatch, hook.services.org_index, "find")
        registry = Counted(monkeypatch, hook.services.registry, "find_tenant")
        queue = hook.services.storage.queue("webhook-events")
        assert hook.deliver(hook.context()).status_code == 202  # the customer's own delivery caches its lookup
        later = time.monotonic() + 3  # past the 2 s re-read limit, inside the 30 s cache
        monkeypatch.setattr(intake, "_clock", lambda: later)
        queued = queue.get_queue_properties().approximate_message_count
        reads = {}
        for host in (hook.host_name, f"nobody-{hook.host_name}"):
            steps = []
            for _ in range(2):
                before = (index.calls, registry.calls)
                refused = hook.deliver(
                    hook.context(), **{"x-ms-dynamics-organization": host, "x-s2s-webhook-secret": "wrong"}
                )
                assert refused.status_code == 401
                assert json.loads(refused.get_body())["error"]["code"] == "unauthenticated"
                steps.append((index.calls - before[0], registry.calls - before[1]))
            reads[host] = steps
        assert reads[hook.host_name] == reads[f"nobody-{hook.host_name}"] == [(1, 1), (0, 0)]
        assert queue.get_queue_properties().approximate_message_count == queued  # nothing refused was queued
    finally:
        use_services(None)


def test_a_secret_offboarding_dropped_is_not_processed_under_the_re_onboarded_org_though_a_cached_lookup_let_it_in(
    hook,
):
    """Found against the running app: a delivery with Northwind's pre-offboarding secret, sent within the receiver's
    30 s cache after offboarding and a re-onboarding, was accepted (202) and processed under the re-onboarded org,
    though offboarding had dropped that secret. The receiver may still accept it from its cache, but the processor
    now poisons it unprocessed; the new secret's event is processed."""
    services = hook.services
    old_secret = hook.secret
    assert hook.deliver(hook.context()).status_code == 202  # caches the org's lookup, with the old secret
    assert hook.drain() == ["done"]
    services.onboarding.offboard(hook.tenant, actor="operator", reason="secret leaked")
    services.registry.connect_org(
        hook.tenant, hook.org_url, actor="admin", reason="re-onboarded", connected_by="admin@example.com", contact=None
    )
    services.onboarding.verify(hook.tenant, actor="admin", fresh_consent=True, org_urls=(hook.org_url,))
    assert hook.org_url in services.registry.get_tenant(hook.tenant).active_org_urls
    new_secret = services.registry.set_webhook_secret(hook.tenant, hook.org_url)
    stale = hook.context()
    # The receiver's cached lookup (30 s) still holds the old secret: it lets the delivery in ...
    assert hook.deliver(stale, **{"x-s2s-webhook-secret": old_secret}).status_code == 202
    assert hook.drain() == ["poisoned"]  # ... and the processor refuses it
    rows = {row["CorrelationId"] for row in hook.changes()}
    assert stale["CorrelationId"] not in rows  # nothing recorded for it
    poisoned = [m for m in services.webhook_store.list_poison() if m.get("correlation_id") == stale["CorrelationId"]]
    assert len(poisoned) == 1 and "is no longer one of" in poisoned[0]["poison_reason"]
    services.webhook_intake._cache.clear()  # past the cache: the old secret is refused outright
    assert hook.deliver(hook.context(), **{"x-s2s-webhook-secret": old_secret}).status_code == 401
    fresh = hook.context()
    assert hook.deliver(fresh, **{"x-s2s-webhook-secret": new_secret}).status_code == 202
    assert hook.drain() == ["done"]
    assert fresh["CorrelationId"] in {row["CorrelationId"] for row in hook.changes()}


def test_an_event_accepted_before_remove_org_is_not_processed_under_the_org_added_again(hook):
    """Found against the running app: remove-org deletes the org's record, so the org added again started its
    connection count at 0 once more. A delivery with the removed org's secret, let in by the receiver's cached lookup
    (30 s) right after remove-org, was poisoned ('no longer an active org') — and, once the administrator had
    onboarded the org again, `python -m cli poison replay` ran it under the new connection: recorded in
    processedchanges though the secret it carried had died with the removal. It now stays poisoned; the new
    connection's own event is processed."""
    services = hook.services
    store = services.webhook_store
    old_secret = hook.secret
    assert hook.deliver(hook.context()).status_code == 202  # caches the org's lookup, with its secret
    assert hook.drain() == ["done"]
    services.registry.remove_org(hook.tenant, hook.org_url, actor="operator", reason="secret leaked")
    assert services.registry.get_tenant(hook.tenant).org(hook.org_url) is None  # the record is gone
    stale = hook.context()
    assert hook.deliver(stale, **{"x-s2s-webhook-secret": old_secret}).status_code == 202  # the cached lookup
    assert hook.drain() == ["poisoned"]  # the org is not there any more
    services.registry.connect_org(
        hook.tenant, hook.org_url, actor="admin", reason="added again", connected_by="admin@example.com", contact=None
    )
    services.onboarding.verify(hook.tenant, actor="admin", fresh_consent=True, org_urls=(hook.org_url,))
    assert hook.org_url in services.registry.get_tenant(hook.tenant).active_org_urls
    (poisoned,) = [m for m in store.list_poison() if m.get("correlation_id") == stale["CorrelationId"]]
    store.replay_poison(poisoned["id"])  # what an operator does once the customer is back
    assert hook.drain() == ["poisoned"]  # ... and it is still not believed under the new connection
    assert stale["CorrelationId"] not in {row["CorrelationId"] for row in hook.changes()}
    (again,) = [m for m in store.list_poison() if m.get("correlation_id") == stale["CorrelationId"]]
    assert "is no longer one of" in again["poison_reason"]
    new_secret = services.registry.set_webhook_secret(hook.tenant, hook.org_url)
    services.webhook_intake._cache.clear()
    fresh = hook.context()
    assert hook.deliver(fresh, **{"x-s2s-webhook-secret": new_secret}).status_code == 202
    assert hook.drain() == ["done"]
    assert fresh["CorrelationId"] in {row["CorrelationId"] for row in hook.changes()}
