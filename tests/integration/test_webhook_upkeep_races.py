"""Review of the webhook upkeep (issue 17) under races and careless use: two rotations of one org at once, a rotation
of an org that offboarding disconnected, and an org with more than one endpoint of ours. Against the sandbox's
Dataverse and Azurite; assertions on what the org's endpoint sends against what the registry accepts.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from shared.bootstrap import get_services
from shared.tenants.webhook_upkeep import SecretRotation, UpkeepOutcome, WebhookUpkeep

from .test_onboarding_flow import Flow, flow  # noqa: F401 - `flow` is the fixture
from .test_sandbox_webhooks import Receiver
from .test_webhook_upkeep import (  # noqa: F401 - `receiver` is the fixture
    change_something,
    cli,
    post,
    provisioned,
    receiver,
    sent_secret,
    take_from_our_role,
)

pytestmark = pytest.mark.integration


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def test_two_rotations_at_once_leave_the_endpoint_with_the_secret_the_registry_calls_current(
    flow: Flow,  # noqa: F811
    receiver: Receiver,  # noqa: F811
) -> None:
    provisioned(flow, receiver)
    services = get_services()
    registry = services.registry
    upkeep = WebhookUpkeep(services.settings, registry, services.dataverse)
    issue = registry.set_webhook_secret
    inner: list[SecretRotation] = []
    raced = [False]

    def racing(*args: Any, **kwargs: Any) -> str:
        secret = issue(*args, **kwargs)
        if not raced[0]:  # a second operator's rotation runs whole between the first's registry write and its PATCH
            raced[0] = True
            inner.append(upkeep.rotate(flow.bare_tenant, flow.bare_org, actor="second operator"))
        return secret

    registry.set_webhook_secret = racing  # type: ignore[method-assign]
    try:
        outer = upkeep.rotate(flow.bare_tenant, flow.bare_org, actor="first operator")
    finally:
        del registry.set_webhook_secret

    assert [outer.endpoint, inner[0].endpoint] == [UpkeepOutcome.DONE, UpkeepOutcome.DONE]
    delivery = change_something(flow, receiver, "after two rotations")
    assert delivery is not None
    org = registry.get_tenant(flow.bare_tenant).org(flow.bare_org)
    # Both said "done": the endpoint sends the current secret, not the previous one (refused when the overlap ends).
    assert _hash(sent_secret(flow, delivery)) == org.webhook_secret_hash
    assert post(delivery) == 202


def test_a_disconnected_org_gets_no_webhook_secret(
    flow: Flow,  # noqa: F811
    receiver: Receiver,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    provisioned(flow, receiver)
    code, _ = cli(capsys, "tenants", "offboard", flow.bare_tenant)
    assert code == 0
    assert flow.registry.get_tenant(flow.bare_tenant).org(flow.bare_org).webhook_secret_hash == ""

    # A careless operator (or a rotation that read the org before the offboarding wrote) rotates it afterwards.
    code, answer = cli(capsys, "tenants", "webhook-secret", flow.bare_tenant, "--org", flow.bare_org)

    assert code != 0 and answer["error"] == "org_disconnected" and "secret" not in answer
    org = flow.registry.get_tenant(flow.bare_tenant).org(flow.bare_org)
    assert org.webhook_secret_hash == "" and org.previous_secret_hash == ""  # no secret that re-onboarding inherits


def test_every_endpoint_of_ours_is_rotated_and_removed_when_an_org_has_two(
    flow: Flow,  # noqa: F811
    receiver: Receiver,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two onboardings of one org at once (two tabs, two administrators) each find no endpoint and create one."""
    from shared.tenants.webhook_endpoint import WebhookRegistrar, WebhookTarget, auth_value, endpoint_name

    from .test_onboarding_provisioning import delegated

    provisioned(flow, receiver)
    st = flow.sandbox.state  # type: ignore[attr-defined]
    client = delegated(flow, flow.bare_org, flow.admins[flow.bare_tenant])
    target = WebhookTarget(
        receiver.url,
        "fk-0123",
        flow.settings.webhook_secret_header,
        (("account", ("Update",)),),
        endpoint_name(flow.client_id),
    )
    twin = client.create(
        "serviceendpoints",
        {
            "name": target.endpoint_name,
            "url": receiver.url,
            "contract": 8,
            "authtype": 5,
            "messageformat": 2,
            "authvalue": auth_value("fk-0123", flow.settings.webhook_secret_header, "twin"),
        },
    )
    WebhookRegistrar(target, lambda: "unused", has_secret=True).steps(client, twin)
    assert len(st.rows(flow.bare_org, "serviceendpoints")) == 2

    code, offboarded = cli(capsys, "tenants", "offboard", flow.bare_tenant)

    assert code == 0
    (left,) = offboarded["left_in_customer_environments"]
    assert st.rows(flow.bare_org, "serviceendpoints") == [] or left["error_code"] == "webhook_left_in_org"
    assert st.rows(flow.bare_org, "sdkmessageprocessingsteps") == [] or left["error_code"] == "webhook_left_in_org"


def test_a_retried_rotation_that_again_cannot_reach_the_endpoint_keeps_the_endpoints_secret_working(
    flow: Flow,  # noqa: F811
    receiver: Receiver,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A rotation refused by the org (a role made before the upkeep privileges) is naturally run again; if that one
    is refused too, the endpoint still sends the secret from before both, which must still work until the overlap
    the answers name ends (Dataverse does not retry a 401: a refused delivery is an event lost)."""
    provisioned(flow, receiver)
    take_from_our_role(flow, "prvWriteServiceEndpoint")

    _, first = cli(capsys, "tenants", "webhook-secret", flow.bare_tenant, "--org", flow.bare_org)
    _, second = cli(capsys, "tenants", "webhook-secret", flow.bare_tenant, "--org", flow.bare_org)

    assert first["endpoint"] == second["endpoint"] == "refused"
    assert second["previous_secret_valid_until"] is not None  # the answer says the old secret still works
    # ... and names the first rotation's deadline, the one that ends the secret the endpoint really sends.
    assert second["previous_secret_valid_until"] == first["previous_secret_valid_until"]
    flow.use(onboarding_provisioning=True, webhook_receiver_url=receiver.url, webhook_function_key="fk-0123")
    delivery = change_something(flow, receiver, "the endpoint still sends the secret from before both rotations")
    assert delivery is not None and post(delivery) == 202
