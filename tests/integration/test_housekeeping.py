"""The housekeeping job as the timer runs it (the composition root's wiring, the real azure-data-tables SDK against
Azurite): the rows left afterwards are exactly the live ones."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from shared.bootstrap import build_services, use_services
from shared.settings import Settings
from shared.storage import StorageClients
from shared.tenants import registry as registry_module
from shared.tenants.consent_states import CONSENT_STATES_TABLE, ConsentStateStore
from shared.tenants.registry import HISTORY_TABLE, TenantRegistry, TenantStatus
from shared.webhooks.store import EVENTS_TABLE, WebhookStore

pytestmark = pytest.mark.integration
DAY = 86400.0


@pytest.fixture
def services(azurite: Any) -> Any:
    settings = Settings.from_env(
        {
            "ENTRA_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
            "ENTRA_HOME_TENANT_ID": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            "CREDENTIAL_SOURCE": "certificate_file",
            "CERTIFICATE_PATH": "/nonexistent.pem",  # never read: no token is requested
            "STORAGE_CONNECTION_STRING": azurite.connection_string,
            "TENANT_HISTORY_KEEP": "2",
            "TENANT_HISTORY_RETENTION_DAYS": "90",
            "WEBHOOK_EVENT_RETENTION_DAYS": "14",
        }
    )
    built = build_services(settings, assertion_source=object(), storage=StorageClients(settings))  # type: ignore[arg-type]
    use_services(built)
    yield built
    use_services(None)


def keys(table: Any, partition: str) -> set[str]:
    return {row["RowKey"] for row in table.query_entities("PartitionKey eq @pk", parameters={"pk": partition})}


def test_the_timer_deletes_expired_states_old_events_and_old_history_and_nothing_else(
    services: Any, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.functions.timer import TimerRequest

    from functions.housekeeping import housekeeping

    tables = TableServiceClient.from_connection_string(azurite.connection_string)
    now = time.time()

    # Onboarding states: one expired an hour ago (used or not, it goes), one live.
    states_table = tables.get_table_client(CONSENT_STATES_TABLE)
    live_states = services.consent_states  # creates the table
    old_state = ConsentStateStore(states_table, 600, clock=lambda: now - 3600).issue(
        {"state": f"old-{uuid.uuid4()}"}, "https://a.crm.dynamics.com", None
    )
    live_state = live_states.issue({"state": f"live-{uuid.uuid4()}"}, "https://a.crm.dynamics.com", None)

    # Webhook event records: received 20 days ago (past the 14-day retention), 10 days ago, and now.
    assert services.webhook_store is not None  # creates queue, table and container
    events = tables.get_table_client(EVENTS_TABLE)
    prefix = uuid.uuid4().hex
    for age, name in ((20 * DAY, "old"), (10 * DAY, "mid"), (0.0, "new")):
        store = WebhookStore(queue=None, poison_queue=None, table=events, container=None, clock=lambda a=age: now - a)
        store.complete(store.claim(f"{prefix}-{name}"))

    # Tenant history: five transitions 200+ days old, then one recent (retention 90 days, keep the newest 2).
    tenant = str(uuid.uuid4())
    registry = TenantRegistry(tables.get_table_client("tenants"), tables.get_table_client(HISTORY_TABLE))
    registry.create_tables()
    cycle = ["pending_consent", "consented", "active", "awaiting_application_user", "active"]
    for i, status in enumerate([*cycle, "failed"]):
        at = now - (210 - i) * DAY if i < len(cycle) else now - DAY
        registry._clock = lambda at=at: at  # the history's row order follows the registry's clock
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(at))
        monkeypatch.setattr(registry_module, "utc_now", lambda stamp=stamp: stamp)
        registry.record(tenant, TenantStatus(status), reason=status, actor="test")
    history = tables.get_table_client(HISTORY_TABLE)
    newest_two = sorted(keys(history, tenant))[:2]

    housekeeping(TimerRequest(past_due=False))
    housekeeping(TimerRequest(past_due=True))  # a second run changes nothing

    state_keys = keys(states_table, "state")  # rows are keyed by the state's SHA-256
    assert hashlib.sha256(live_state.state.encode()).hexdigest() in state_keys
    assert hashlib.sha256(old_state.state.encode()).hexdigest() not in state_keys
    mine = "RowKey ge @low and RowKey lt @high"
    left = {row["RowKey"] for row in events.query_entities(mine, parameters={"low": prefix, "high": prefix + "~"})}
    assert left == {f"{prefix}-mid", f"{prefix}-new"}
    assert sorted(keys(history, tenant)) == newest_two
    assert [t.to_status for t in registry.history(tenant)] == ["failed", "active"]
    assert registry.get_tenant(tenant).status is TenantStatus.FAILED
