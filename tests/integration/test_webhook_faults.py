"""Fault test: webhook deliveries over HTTP through the function app (development host) while Azurite is stopped
and restarted mid-run.

Dataverse waits 60 s for an answer, counts anything but a 2xx as a failure and tries once more only after a 502,
503 or 504 (protocol.md §5, sandbox/dataverse/webhooks/delivery.py). So during a storage outage every delivery must end
either acknowledged (2xx, and then processed exactly once) or refused with a status Dataverse retries; the retry,
sent once storage is back, must then be processed exactly once too.

What counts as a failure of the app here, besides a 4xx or 500:
- a connection error: the development host stays up for the whole run, so a refused or reset connection means the
  app dropped the delivery; Dataverse does not retry that (it is not 502/503/504), and an event not yet stored
  would be lost;
- no answer within Dataverse's 60 s: the same, Dataverse gives up without a retry. The test also wants the worst
  answer well inside that limit (half of it), leaving room for the network and the Functions front end.

N deliveries (default DEFAULT_DELIVERIES, `FAULT_WEBHOOK_DELIVERIES` for more, e.g. 10000) at concurrency 50 with
unique event ids; Azurite is stopped once STOP_AT of them were sent and started again, on the same ports and with
its data on disk, once RESTART_AT were sent.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
import requests

from devhost import DevHost
from devhost.server import LoopbackHttpServer
from sandbox.azurite import Azurite
from shared.bootstrap import Services, build_services, use_services
from shared.settings import CredentialSource, Settings
from shared.tenants.orgs import OrgStatus
from shared.tenants.registry import TenantStatus
from shared.webhooks.processing import HandlerRegistry, TransientProcessingError, WebhookProcessor
from shared.webhooks.store import EVENTS_QUEUE, POISON_QUEUE
from tests.unit.webhook_samples import update_contact

pytestmark = pytest.mark.integration

DEFAULT_DELIVERIES = 2000
DELIVERIES = int(os.environ.get("FAULT_WEBHOOK_DELIVERIES", DEFAULT_DELIVERIES))
CONCURRENCY = 50
STOP_AT, RESTART_AT = 0.30, 0.60  # fractions of the deliveries sent when Azurite is stopped / started again
DATAVERSE_TIMEOUT = 60.0  # protocol §5: Dataverse waits 60 s for the answer
LATENCY_LIMIT = DATAVERSE_TIMEOUT / 2
RETRIED = frozenset({502, 503, 504})  # protocol §5: the only statuses Dataverse tries again
# Bound for the whole test. Measured on the 2-core development machine: 2,000 in 1¾ min, 10,000 in 14½ min
# (storage is down for 30 % of the deliveries, each then answered 503 after the receiver's ~3 s budget).
TIMEOUT_SECONDS = max(120.0, DELIVERIES * 0.17)


@dataclass
class Delivery:
    index: int
    correlation_id: str
    body: bytes
    status: int | None = None
    error: str | None = None
    started: float = 0.0
    latency: float = 0.0

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Rig:
    azurite: Azurite
    services: Services
    url: str
    key: str
    host_name: str
    org_id: str
    secret: str


def webhook_app() -> func.FunctionApp:
    from functions.webhooks import bp

    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(bp)
    return app


@pytest.fixture
def quiet_sdk() -> Iterator[None]:
    """The SDKs log every storage request and response at INFO: tens of thousands of records in this test."""
    sdk = logging.getLogger("azure")
    level = sdk.level
    sdk.setLevel(logging.WARNING)
    yield
    sdk.setLevel(level)


@pytest.fixture
def rig(tmp_path: Path, quiet_sdk: None) -> Iterator[Rig]:
    # The development host listens with a backlog of 512 like the Functions host, so 50 senders connecting at once
    # are not reset by the listener: a reset in this test is the app's doing.
    assert LoopbackHttpServer.request_queue_size >= 512
    azurite = Azurite(persistent=True)  # its own instance: this test takes storage away
    try:
        cert = tmp_path / "unused.pem"
        cert.write_text("")  # the receiver and the counting handler never need a token
        settings = Settings(
            entra_client_id=str(uuid.uuid4()),
            entra_home_tenant_id=str(uuid.uuid4()),
            credential_source=CredentialSource.CERTIFICATE_FILE,
            certificate_path=str(cert),
            storage_connection_string=azurite.connection_string,
        )
        services = build_services(settings)
        tenant, org_id = str(uuid.uuid4()), str(uuid.uuid4())
        host_name = f"faults{uuid.uuid4().hex[:8]}.crm.dynamics.com"
        for status in (TenantStatus.PENDING_CONSENT, TenantStatus.CONSENTED, TenantStatus.ACTIVE):
            services.registry.record(tenant, status, reason="test", actor="test", org_url=f"https://{host_name}")
        services.registry.set_org_status(
            tenant, f"https://{host_name}", OrgStatus.ACTIVE, reason="WhoAmI ok", actor="test"
        )
        services.org_index.record(f"https://{host_name}", tenant, org_id)
        secret = services.registry.set_webhook_secret(tenant, f"https://{host_name}")
        services.webhook_intake  # noqa: B018 - build it (queues, tables, container) while storage is up
        use_services(services)
        host = DevHost(webhook_app()).start()
        try:
            yield Rig(
                azurite,
                services,
                f"{host.url}/api/webhooks/dataverse",
                host.keys.function_keys["dataverse_webhook"],
                host_name,
                org_id,
                secret,
            )
        finally:
            host.stop()
            use_services(None)
    finally:
        azurite.close()


class Sender:
    """POSTs deliveries as Dataverse does: one session per thread, straight to loopback, 60 s timeout."""

    def __init__(self, rig: Rig) -> None:
        self._rig = rig
        self._local = threading.local()
        self._lock = threading.Lock()
        self.started = 0

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no proxy from the environment: loopback only
            self._local.session = session
        return session

    def send(self, delivery: Delivery) -> Delivery:
        with self._lock:
            self.started += 1
        headers = {
            "x-ms-dynamics-organization": self._rig.host_name,
            "x-s2s-webhook-secret": self._rig.secret,
            "Content-Type": "application/json",
        }
        delivery.status, delivery.error = None, None
        delivery.started = time.monotonic()
        try:
            response = self._session().post(
                self._rig.url,
                params={"code": self._rig.key},
                data=delivery.body,
                headers=headers,
                timeout=DATAVERSE_TIMEOUT,
                allow_redirects=False,
            )
            delivery.status = response.status_code
        except requests.Timeout:
            delivery.error = "timeout"
        except requests.RequestException as exc:
            reason = str(exc).replace(self._rig.key, "<key>")[:200]  # the URL carries the function key
            delivery.error = f"connection error: {type(exc).__name__}: {reason}"
        delivery.latency = time.monotonic() - delivery.started
        return delivery


@dataclass
class Outage:
    stopped_at: float = 0.0  # monotonic time stop() was called
    back_at: float = 0.0  # monotonic time start() returned (Azurite said it listens again)
    error: BaseException | None = None


def take_storage_away(azurite: Azurite, sender: Sender, outage: Outage, done: threading.Event) -> None:
    """Stop Azurite once STOP_AT of the deliveries were sent, start it again once RESTART_AT were."""
    try:
        while sender.started < DELIVERIES * STOP_AT and not done.is_set():
            time.sleep(0.005)
        outage.stopped_at = time.monotonic()
        azurite.stop()
        while sender.started < DELIVERIES * RESTART_AT and not done.is_set():
            time.sleep(0.005)
        azurite.start()
        outage.back_at = time.monotonic()
    except BaseException as exc:  # reported by the test
        outage.error = exc


class CountingProcessor:
    """The real WebhookProcessor with one handler that counts the events it sees, drained from the queue by a few
    workers as the queue trigger would (a message that raises stays in the queue and comes back)."""

    def __init__(self, services: Services) -> None:
        registry = HandlerRegistry()
        self.handled: Counter[str] = Counter()
        self._lock = threading.Lock()

        @registry.on("*", "*")
        def count(event: Any, tools: Any) -> None:
            with self._lock:
                self.handled[event.context.correlation_id] += 1

        self.processor = WebhookProcessor(
            store=services.webhook_store,
            dataverse=services.dataverse,
            changes_table=None,
            registry=registry,
        )
        self.queue = services.storage.queue(EVENTS_QUEUE)
        self.outcomes: Counter[str] = Counter()

    def drain(self, workers: int = 8) -> None:
        with ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(self._work) for _ in range(workers)]:
                future.result()

    def _work(self) -> None:
        while True:
            batch = list(self.queue.receive_messages(max_messages=32, visibility_timeout=30))
            if not batch:
                if self.queue.get_queue_properties().approximate_message_count == 0:
                    return
                time.sleep(0.2)  # messages held by another worker, or coming back after a transient failure
                continue
            for message in batch:
                try:
                    outcome = self.processor.process(message.content, message.dequeue_count or 1)
                except TransientProcessingError:
                    outcome = "retry"  # e.g. a duplicate message whose twin another worker holds
                    self.queue.update_message(message, visibility_timeout=1)
                else:
                    self.queue.delete_message(message)
                with self._lock:
                    self.outcomes[outcome] += 1


def _summary(deliveries: list[Delivery]) -> str:
    statuses = Counter(d.status if d.status is not None else d.error for d in deliveries)
    return ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0])))


@pytest.mark.timeout(TIMEOUT_SECONDS)
def test_deliveries_survive_a_storage_restart_and_each_event_is_processed_once(rig: Rig) -> None:
    run_started = time.monotonic()
    deliveries = []
    for index in range(DELIVERIES):
        correlation_id = str(uuid.uuid4())
        context = update_contact(
            OrganizationId=rig.org_id,
            CorrelationId=correlation_id,
            OperationId=str(uuid.uuid4()),
            PrimaryEntityId=str(uuid.UUID(int=index + 1)),
        )
        deliveries.append(Delivery(index, correlation_id, json.dumps(context).encode()))
    sender = Sender(rig)
    outage, done = Outage(), threading.Event()
    controller = threading.Thread(target=take_storage_away, args=(rig.azurite, sender, outage, done), daemon=True)
    controller.start()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(sender.send, deliveries))
    sent = time.monotonic()
    done.set()
    controller.join(timeout=60)
    assert outage.error is None, f"stopping or starting Azurite failed: {outage.error!r}"
    assert outage.stopped_at and outage.back_at and rig.azurite.running

    # -- what Dataverse saw -----------------------------------------------------------------------------------
    summary = _summary(deliveries)
    dropped = [d for d in deliveries if d.status is None]
    assert not dropped, f"{len(dropped)} deliveries got no answer (Dataverse would not retry): {summary}"
    wrong = [d for d in deliveries if not d.acknowledged and d.status not in RETRIED]
    assert not wrong, f"{len(wrong)} answers are neither 2xx nor 502/503/504: {summary}"
    latencies = sorted(d.latency for d in deliveries)
    slowest = latencies[-1]
    assert slowest < LATENCY_LIMIT, f"the slowest answer took {slowest:.1f} s"
    failed = [d for d in deliveries if not d.acknowledged]
    assert any(d.status == 503 for d in failed), f"the outage did not bite: {summary}"
    before = [d for d in deliveries if d.started + d.latency < outage.stopped_at]
    after = [d for d in deliveries if d.started > outage.back_at]
    assert before and all(d.acknowledged for d in before), "a delivery failed before storage was stopped"
    assert after, "no delivery was sent after storage came back: move RESTART_AT earlier"
    late = [d for d in after if not d.acknowledged]
    assert not late, f"{len(late)} deliveries sent after storage came back failed: {_summary(late)}"

    # -- each acknowledged event processed exactly once ---------------------------------------------------------
    counting = CountingProcessor(rig.services)
    counting.drain()
    drained = time.monotonic()
    acknowledged = [d for d in deliveries if d.acknowledged]
    not_once = [d.index for d in acknowledged if counting.handled[d.correlation_id] != 1]
    assert not not_once, f"{len(not_once)} acknowledged events were not processed exactly once"
    twice = [cid for cid, n in counting.handled.items() if n > 1]
    assert not twice, f"{len(twice)} events were processed more than once"

    # -- Dataverse's one retry of each failed delivery, once storage is back ------------------------------------
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        retried = list(pool.map(sender.send, failed))
    assert all(d.acknowledged for d in retried), f"retries not acknowledged: {_summary(retried)}"
    counting.drain()
    finished = time.monotonic()
    not_once = [d.index for d in deliveries if counting.handled[d.correlation_id] != 1]
    assert not not_once, f"{len(not_once)} of {DELIVERIES} events were not processed exactly once in the end"
    assert sum(counting.handled.values()) == DELIVERIES
    assert counting.outcomes["poisoned"] == 0
    storage = rig.services.storage
    assert storage.queue(POISON_QUEUE).get_queue_properties().approximate_message_count == 0
    assert storage.queue(EVENTS_QUEUE).get_queue_properties().approximate_message_count == 0

    print(
        f"\n{DELIVERIES} deliveries at concurrency {CONCURRENCY}: {summary}; "
        f"storage down {outage.back_at - outage.stopped_at:.1f} s; "
        f"ack latency median {latencies[len(latencies) // 2] * 1000:.0f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.0f} ms, max {slowest:.2f} s; "
        f"retries {_summary(retried)}; processor outcomes {dict(counting.outcomes)}; "
        f"sending {sent - run_started:.1f} s, first drain {drained - sent:.1f} s, "
        f"retry + drain {finished - drained:.1f} s, total {finished - run_started:.1f} s"
    )
