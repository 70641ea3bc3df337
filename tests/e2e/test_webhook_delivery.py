"""A change made through the Dataverse emulator's Web API reaches our handler exactly once: emulator webhook →
function app on the development host → Azurite queue → processor → processed-change record."""

from __future__ import annotations

import json

import azure.functions as func
import pytest

from devhost import DevHost
from tests.integration.test_webhooks import make_hook

pytestmark = pytest.mark.integration


def webhook_app() -> func.FunctionApp:
    from functions.webhooks import bp

    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(bp)
    return app


@pytest.fixture
def wired(sandbox, sandbox_env, azurite, tmp_path):
    from shared.bootstrap import use_services

    hook = make_hook(sandbox, azurite.connection_string, tmp_path)
    host = DevHost(webhook_app()).start()
    key = host.keys.function_keys["dataverse_webhook"]
    hook.receiver_url = f"{host.url}/api/webhooks/dataverse"
    # The HttpHeader auth type (protocol §5): the function key in x-functions-key, so no key travels in a URL, and
    # the org's own secret beside it.
    sandbox.state.register_webhook(
        hook.org_url,
        hook.receiver_url,
        auth_type="HttpHeader",
        auth_value={"x-functions-key": key, "x-s2s-webhook-secret": hook.secret},
        entity="account",
    )
    hook.function_key = key
    yield hook
    host.stop()
    use_services(None)


def test_a_change_in_dataverse_reaches_the_handler_once(wired):
    client = wired.services.dataverse.for_org(wired.tenant, wired.org_url)
    row_id = client.create("accounts", {"name": "Contoso", "accountnumber": "E2E-1"})
    client.update("accounts", row_id, {"name": "Contoso Ltd"})
    wired.sandbox.state.wait_for_webhooks()
    deliveries = [d for d in wired.sandbox.state.webhook_deliveries(wired.org_url) if d.row_id == row_id]
    assert [d.status for d in deliveries] == [202, 202]
    assert wired.drain() == ["done", "done"]
    changes = [c for c in wired.changes() if c["RowId"] == row_id]
    assert sorted(c["Message"] for c in changes) == ["Create", "Update"]
    update = next(c for c in changes if c["Message"] == "Update")
    assert "name" in json.loads(update["ChangedAttributes"])
    assert wired.drain() == []  # nothing left, nothing processed twice


@pytest.mark.parametrize(
    "auth",
    [
        {"x-functions-key": "wrong"},  # no function key: the host refuses it
        {"x-s2s-webhook-secret": "wrong"},  # the function key, a wrong org secret: the receiver refuses it
    ],
)
def test_a_wrong_key_or_secret_is_refused_and_nothing_is_queued(wired, sandbox, auth):
    headers = {"x-functions-key": wired.function_key, "x-s2s-webhook-secret": wired.secret, **auth}
    sandbox.state.register_webhook(
        wired.org_url, wired.receiver_url, auth_type="HttpHeader", auth_value=headers, entity="contact"
    )
    client = wired.services.dataverse.for_org(wired.tenant, wired.org_url)
    client.create("contacts", {"firstname": "Ada"})
    sandbox.state.wait_for_webhooks()
    refused = [d for d in sandbox.state.webhook_deliveries(wired.org_url) if d.entity == "contact"]
    assert [d.status for d in refused] == [401]
    assert wired.drain() == []
