"""The app looks after the webhook onboarding registered, with its own S2S token (shared.tenants.webhook_upkeep):
`tenants webhook-secret --org` puts the new secret on the org's service endpoint, the old one working for the
overlap only; offboarding removes the steps and the endpoint and drops the org's secrets; a role without the
upkeep privileges gets the secret shown once instead, with the privilege named. Against the sandbox's Dataverse
(which delivers with the endpoint's auth values) and Azurite; assertions on the org's rows, the registry and
what reaches the receiver.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest

from cli.main import main as cli_main
from functions.webhooks import dataverse_webhook
from sandbox.dataverse.provisioning.access import org_state
from sandbox.dataverse.security import role_id
from shared.tenants.registry import TenantStatus

from .test_onboarding_flow import Flow, flow, onboard  # noqa: F401 - `flow` is the fixture
from .test_onboarding_provisioning import delegated
from .test_sandbox_webhooks import Received, Receiver

pytestmark = pytest.mark.integration

KEY = "fk-0123"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.stop()


def provisioned(flow: Flow, receiver: Receiver, **settings: Any) -> None:  # noqa: F811
    flow.use(onboarding_provisioning=True, webhook_receiver_url=receiver.url, webhook_function_key=KEY, **settings)
    page = onboard(flow, flow.bare_org, flow.admins[flow.bare_tenant])
    assert page.status_code == 200 and "Your environment is connected" in page.text, page.text


def take_from_our_role(flow: Flow, privilege: str) -> None:  # noqa: F811
    """Drop one privilege from our role in the bare org, as a role made by hand (or trimmed) would lack it."""
    store = flow.sandbox.state.find_org_store(flow.bare_org.removeprefix("https://"))  # type: ignore[attr-defined]
    org_state(store).role_privileges[role_id(store.org.org_id, flow.settings.security_role_name)].pop(privilege)


def change_something(flow: Flow, receiver: Receiver, name: str) -> Received | None:  # noqa: F811
    """Change an account in the org as its administrator; the delivery that reached the receiver, if any."""
    st = flow.sandbox.state  # type: ignore[attr-defined]
    before = len(receiver.received)
    (account,) = st.seed_rows(flow.bare_org, "accounts", 1)
    delegated(flow, flow.bare_org, flow.admins[flow.bare_tenant]).update("accounts", account, {"name": name})
    st.wait_for_webhooks()
    return receiver.received[-1] if len(receiver.received) > before else None


def post(delivery: Received, **headers: str) -> int:
    request = func.HttpRequest(
        "POST", "/api/webhooks/dataverse", body=delivery.body, headers={**delivery.headers, **headers}
    )
    return dataverse_webhook(request).status_code


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = cli_main(["--json", *args])
    return code, json.loads(capsys.readouterr().out)


def sent_secret(flow: Flow, delivery: Received) -> str:  # noqa: F811
    return delivery.headers[flow.settings.webhook_secret_header]


def test_rotation_puts_the_new_secret_on_the_endpoint_and_the_old_one_works_for_the_overlap_only(
    flow: Flow,  # noqa: F811
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    provisioned(flow, receiver)
    first = change_something(flow, receiver, "before rotation")
    assert first is not None

    code, rotated = cli(capsys, "tenants", "webhook-secret", flow.bare_tenant, "--org", flow.bare_org)

    assert code == 0 and rotated["endpoint"] == "done"
    assert "secret" not in rotated  # on the endpoint already: not shown to anyone
    second = change_something(flow, receiver, "after rotation")
    assert second is not None and sent_secret(flow, second) != sent_secret(flow, first)
    org = flow.registry.get_tenant(flow.bare_tenant).org(flow.bare_org)
    assert hashlib.sha256(sent_secret(flow, second).encode()).hexdigest() == org.webhook_secret_hash
    assert org.previous_secret_until == rotated["previous_secret_valid_until"]
    assert post(second) == 202
    assert post(first) == 202  # sent before the rotation: accepted while the overlap lasts
    (endpoint,) = flow.sandbox.state.rows(flow.bare_org, "serviceendpoints")  # type: ignore[attr-defined]
    assert endpoint["authtype"] == 5

    # Without an overlap the old secret stops at once (fresh services: the receiver's cache starts empty).
    flow.use(
        onboarding_provisioning=True,
        webhook_receiver_url=receiver.url,
        webhook_function_key=KEY,
        webhook_secret_overlap_seconds=0,
    )
    code, again = cli(capsys, "tenants", "webhook-secret", flow.bare_tenant, "--org", flow.bare_org)
    assert code == 0 and again["endpoint"] == "done" and again["previous_secret_valid_until"] is None
    third = change_something(flow, receiver, "after the second rotation")
    assert third is not None
    assert post(second) == 401 and post(third) == 202


def test_a_role_without_the_upkeep_privileges_gets_the_secret_shown_once_with_the_privilege_named(
    flow: Flow,  # noqa: F811
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    provisioned(flow, receiver)
    st = flow.sandbox.state  # type: ignore[attr-defined]
    take_from_our_role(flow, "prvWriteServiceEndpoint")  # a role made by hand before the app looked after its endpoint
    before = st.rows(flow.bare_org, "serviceendpoints")

    code, rotated = cli(capsys, "tenants", "webhook-secret", flow.bare_tenant, "--org", flow.bare_org)

    assert code == 0 and rotated["endpoint"] == "refused" and "prvWriteServiceEndpoint" in rotated["detail"]
    assert rotated["secret"] and rotated["header"] == flow.settings.webhook_secret_header
    assert rotated["error_code"] == "webhook_endpoint_not_updated"
    assert st.rows(flow.bare_org, "serviceendpoints") == before  # nothing changed in the org
    org = flow.registry.get_tenant(flow.bare_tenant).org(flow.bare_org)
    assert org.webhook_secret_hash == hashlib.sha256(rotated["secret"].encode()).hexdigest()
    # The endpoint still sends the old secret, which works until the operator has put the new one there.
    delivery = change_something(flow, receiver, "old secret still on the endpoint")
    assert delivery is not None and post(delivery) == 202
    assert post(delivery, **{flow.settings.webhook_secret_header: rotated["secret"]}) == 202


def test_offboarding_removes_the_steps_and_endpoint_and_the_orgs_secret(
    flow: Flow,  # noqa: F811
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    provisioned(flow, receiver)
    st = flow.sandbox.state  # type: ignore[attr-defined]
    delivery = change_something(flow, receiver, "before offboarding")
    assert delivery is not None
    subscribed = sum(len(messages) for _, messages in flow.settings.webhook_subscriptions)
    assert len(st.rows(flow.bare_org, "sdkmessageprocessingsteps")) == subscribed

    code, offboarded = cli(capsys, "tenants", "offboard", flow.bare_tenant, "--reason", "contract ended")

    assert code == 0 and offboarded["status"] == "offboarded"
    (left,) = offboarded["left_in_customer_environments"]
    assert (left["org_url"], left["webhook"], left["steps_removed"]) == (flow.bare_org, "done", subscribed)
    assert left["error_code"] is None
    assert not any("service endpoint" in item for item in left["left"])  # removed: not reported as left
    assert any(flow.client_id in item for item in left["left"])  # the application user stays, named
    assert st.rows(flow.bare_org, "serviceendpoints") == []
    assert st.rows(flow.bare_org, "sdkmessageprocessingsteps") == []
    tenant = flow.registry.get_tenant(flow.bare_tenant)
    assert tenant.status is TenantStatus.OFFBOARDED
    assert tenant.org(flow.bare_org).webhook_secret_hash == "" and tenant.org(flow.bare_org).previous_secret_hash == ""
    assert change_something(flow, receiver, "after offboarding") is None  # nothing is sent any more
    assert post(delivery) == 401


def test_offboarding_an_org_the_app_cannot_reach_names_the_endpoint_as_left(
    flow: Flow,  # noqa: F811
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    provisioned(flow, receiver)
    st = flow.sandbox.state  # type: ignore[attr-defined]
    take_from_our_role(flow, "prvDeleteSdkMessageProcessingStep")

    code, offboarded = cli(capsys, "tenants", "offboard", flow.bare_tenant)

    assert code == 0
    (left,) = offboarded["left_in_customer_environments"]
    assert left["webhook"] == "refused" and "prvDeleteSdkMessageProcessingStep" in left["detail"]
    assert left["error_code"] == "webhook_left_in_org"
    assert any("service endpoint" in item for item in left["left"])
    assert len(st.rows(flow.bare_org, "serviceendpoints")) == 1  # still there, and said so
    assert flow.registry.get_tenant(flow.bare_tenant).org(flow.bare_org).webhook_secret_hash == ""


def test_after_the_receiver_moves_and_the_key_is_rotated_one_command_repoints_every_org(
    flow: Flow,  # noqa: F811
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    provisioned(flow, receiver)
    moved = Receiver()
    try:
        flow.use(onboarding_provisioning=True, webhook_receiver_url=moved.url, webhook_function_key="fk-rotated")

        code, refused = cli(capsys, "tenants", "webhook-secret", flow.bare_tenant, "--all")  # not both
        assert (code, refused["error"]) == (2, "invalid_argument") and "--all" in refused["message"]
        code, answer = cli(capsys, "tenants", "webhook-secret", "--all")

        assert code == 0
        mine = [r for r in answer["rotations"] if r["org_url"] == flow.bare_org]
        assert [r["endpoint"] for r in mine] == ["done"] and "secret" not in mine[0]
        (endpoint,) = flow.sandbox.state.rows(flow.bare_org, "serviceendpoints")  # type: ignore[attr-defined]
        assert endpoint["url"] == moved.url
        before = len(receiver.received)
        delivery = change_something(flow, moved, "after the move")
        assert delivery is not None and len(receiver.received) == before  # only the new receiver hears of it
        assert delivery.headers["x-functions-key"] == "fk-rotated"
        assert post(delivery) == 202
    finally:
        moved.stop()


def test_update_steps_carry_the_filtering_attributes_the_setting_gives_and_follow_it_when_it_changes(
    flow: Flow,  # noqa: F811
    receiver: Receiver,
) -> None:
    from shared.tenants.webhook_endpoint import WebhookRegistrar, WebhookTarget, endpoint_name

    st = flow.sandbox.state  # type: ignore[attr-defined]
    admin = flow.admins[flow.bare_tenant]
    st.grant_consent(flow.bare_tenant, flow.client_id)
    client = delegated(flow, flow.bare_org, admin)

    def register(filtering: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
        target = WebhookTarget(
            receiver.url,
            KEY,
            flow.settings.webhook_secret_header,
            (("account", ("Create", "Update")),),
            endpoint_name(flow.client_id),
            filtering,
        )
        registrar = WebhookRegistrar(target, lambda: "a-secret", has_secret=False)
        _, endpoint = registrar.endpoint(client)
        outcome, _ = registrar.steps(client, endpoint)
        return outcome.value

    def filtering_of_steps() -> set[object]:
        return {s.get("filteringattributes") for s in st.rows(flow.bare_org, "sdkmessageprocessingsteps")}

    assert register((("account", ("name", "telephone1")),)) == "updated"
    assert filtering_of_steps() == {None, "name,telephone1"}  # Create fires always; Update on those columns only
    assert register((("account", ("telephone1", "name")),)) == "unchanged"  # the same set: nothing to change

    (account,) = st.seed_rows(flow.bare_org, "accounts", 1)
    before = len(receiver.received)
    client.update("accounts", account, {"accountnumber": "A-1"})  # not a filtered column
    st.wait_for_webhooks()
    assert len(receiver.received) == before
    client.update("accounts", account, {"name": "Renamed"})
    st.wait_for_webhooks()
    assert len(receiver.received) == before + 1

    assert register(()) == "updated"  # the setting dropped: the Update step fires on every change again
    assert filtering_of_steps() == {None}
    client.update("accounts", account, {"accountnumber": "A-2"})
    st.wait_for_webhooks()
    assert len(receiver.received) == before + 2


def test_onboarding_registers_update_steps_with_the_filtering_attributes_setting(
    flow: Flow,  # noqa: F811
    receiver: Receiver,
) -> None:
    provisioned(flow, receiver, webhook_filtering_attributes=(("account", ("name",)),))
    steps = flow.sandbox.state.rows(flow.bare_org, "sdkmessageprocessingsteps")  # type: ignore[attr-defined]
    filtered = {s["name"].rsplit(": ", 1)[1]: s.get("filteringattributes") for s in steps}
    assert filtered["Update of account"] == "name"
    assert filtered["Create of account"] is None and filtered["Update of contact"] is None


def test_rotating_every_org_without_a_function_key_rotates_nothing_and_prints_no_secret(
    flow: Flow,  # noqa: F811
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    provisioned(flow, receiver)
    before = flow.registry.get_tenant(flow.bare_tenant).org(flow.bare_org).webhook_secret_hash
    flow.use(onboarding_provisioning=True, webhook_receiver_url=receiver.url, webhook_function_key=None)

    code, answer = cli(capsys, "tenants", "webhook-secret", "--all")

    assert code == 2 and answer["error"] == "configuration_error" and "WEBHOOK_FUNCTION_KEY" in answer["message"]
    assert "secret" not in json.dumps(answer).replace("webhook-secret", "")
    assert flow.registry.get_tenant(flow.bare_tenant).org(flow.bare_org).webhook_secret_hash == before


def test_a_leaked_secret_is_cut_off_at_once_and_the_endpoint_goes_on_with_the_new_one(
    flow: Flow,  # noqa: F811
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    provisioned(flow, receiver)
    leaked = change_something(flow, receiver, "before the leak was noticed")
    assert leaked is not None

    code, rotated = cli(capsys, "tenants", "webhook-secret", flow.bare_tenant, "--org", flow.bare_org, "--at-once")

    assert code == 0 and rotated["endpoint"] == "done" and rotated["previous_secret_valid_until"] is None
    org = flow.registry.get_tenant(flow.bare_tenant).org(flow.bare_org)
    assert org.previous_secrets == ()  # nothing but the new secret is accepted
    fresh_services = dict(onboarding_provisioning=True, webhook_receiver_url=receiver.url, webhook_function_key=KEY)
    flow.use(**fresh_services)  # the receiver's cache starts empty, as it would 30 s later
    assert post(leaked) == 401
    after = change_something(flow, receiver, "after the rotation")
    assert after is not None and post(after) == 202
    code, refused = cli(capsys, "tenants", "webhook-secret", "--all", "--at-once")
    assert (code, refused["error"]) == (2, "invalid_argument")
