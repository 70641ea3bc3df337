"""Attacks on the webhook receiver first tried over HTTP against the running app (`make start`), pinned here on
Azurite with the real storage SDKs: what the receiver reads, queues and refuses, not only what it answers."""

from __future__ import annotations

import json
import time

import pytest

from shared.bootstrap import use_services
from tests.integration.test_webhooks import make_hook

pytestmark = pytest.mark.integration


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
