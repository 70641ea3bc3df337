"""Onboarding provisions the app in the org (shared.tenants.provisioning, ONBOARDING_PROVISIONING=true): the signed-in
System Administrator's delegated token creates the custom security role with exactly its privileges and the
application user, and the S2S check then finds the org active, with no manual step. Also the provisioner alone
against the sandbox: run twice, interrupted and finished, refused with the privilege named.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Iterator
from html import unescape
from typing import Any

import pytest
import requests

from sandbox.dataverse.provisioning.access import org_state
from sandbox.dataverse.security import role_id
from shared.auth.token_provider import AccessToken
from shared.bootstrap import get_services
from shared.tenants.orgs import OrgStatus
from shared.tenants.provisioning import OrgProvisioner, StepOutcome
from shared.tenants.registry import TenantStatus
from shared.tenants.security_role import required_role
from tests.unit.test_onboarding_functions import retry_fields

from .test_onboarding_flow import Flow, back, flow, onboard, sign_in  # noqa: F401 - `flow` is the fixture
from .test_sandbox_webhooks import Receiver

pytestmark = pytest.mark.integration


def org_facts(world: Flow, org: str) -> dict[str, Any]:
    """What the org holds about our app: its application users, the roles named like ours, our role's privileges."""
    st = world.sandbox.state  # type: ignore[attr-defined]
    store = st.find_org_store(org.removeprefix("https://"))
    name = world.settings.security_role_name
    app_users = [u for u in st.rows(org, "systemusers") if u["applicationid"] == world.client_id]
    our_role = role_id(store.org.org_id, name)
    user = store.find_user(app_users[0]["systemuserid"]) if app_users else None
    return {
        "app_users": app_users,
        "roles": [r for r in st.rows(org, "roles") if r["name"] == name],
        "privileges": dict(org_state(store).role_privileges.get(our_role, {})),
        "user_roles": user.roles if user else (),
        "enabled": bool(user and user.enabled),
    }


def delegated(world: Flow, org: str, user: Any) -> Any:
    token = world.sandbox.state.issue_user_token(  # type: ignore[attr-defined]
        user, audience=org, scopes=("user_impersonation",), client_id=world.client_id
    )
    access = AccessToken(token, time.time() + 3600, user.tenant_id, org, "identity_provider")
    return get_services().dataverse.delegated(org, access)


def expected_privileges(world: Flow) -> dict[str, str]:
    """The role for the settings the app runs with now (flow.use changes them: a receiver adds the upkeep ones)."""
    return {p.name: p.depth for p in required_role(get_services().settings).privileges}


def test_a_bare_org_goes_from_nothing_to_active_with_no_manual_step(flow: Flow) -> None:  # noqa: F811
    flow.use(onboarding_provisioning=True)
    assert org_facts(flow, flow.bare_org)["app_users"] == []

    page = onboard(flow, flow.bare_org, flow.admins[flow.bare_tenant])

    assert page.status_code == 200 and "Your environment is connected" in page.text
    assert "Provisioned in" in page.text and "application_user created" in page.text
    # Without WEBHOOK_RECEIVER_URL the page says that no webhook was registered, and why.
    assert "No webhook was registered" in page.text and "WEBHOOK_RECEIVER_URL" in page.text
    assert flow.sandbox.state.rows(flow.bare_org, "serviceendpoints") == []  # type: ignore[attr-defined]
    tenant = flow.registry.get_tenant(flow.bare_tenant)
    assert tenant.status is TenantStatus.ACTIVE and tenant.org(flow.bare_org).status is OrgStatus.ACTIVE
    facts = org_facts(flow, flow.bare_org)
    assert len(facts["app_users"]) == 1 and len(facts["roles"]) == 1 and facts["enabled"]
    assert facts["privileges"] == expected_privileges(flow)
    assert facts["user_roles"] == (flow.settings.security_role_name,)
    # The application user now reads what the role grants, with the app's own S2S token.
    client = get_services().dataverse.for_org(flow.bare_tenant, flow.bare_org)
    assert client.whoami().user_id == facts["app_users"][0]["systemuserid"]
    assert next(client.query("accounts", select=["name"], page_size=10)).rows == []


def test_onboarding_twice_leaves_the_org_as_once(flow: Flow) -> None:  # noqa: F811
    flow.use(onboarding_provisioning=True)
    admin = flow.admins[flow.bare_tenant]
    first = onboard(flow, flow.bare_org, admin)
    second = onboard(flow, flow.bare_org, admin)

    assert first.status_code == second.status_code == 200
    assert "application_user unchanged" in second.text and "role_assignment unchanged" in second.text
    facts = org_facts(flow, flow.bare_org)
    assert len(facts["app_users"]) == 1 and len(facts["roles"]) == 1
    assert facts["user_roles"] == (flow.settings.security_role_name,)


def test_without_the_setting_onboarding_still_waits_for_the_manual_step(flow: Flow) -> None:  # noqa: F811
    flow.use(onboarding_provisioning=False)
    page = onboard(flow, flow.bare_org, flow.admins[flow.bare_tenant])
    assert page.status_code == 200 and "Create the application user" in page.text
    assert org_facts(flow, flow.bare_org)["app_users"] == []


def test_a_disabled_application_user_is_enabled_and_a_widened_role_put_back(flow: Flow) -> None:  # noqa: F811
    st = flow.sandbox.state  # type: ignore[attr-defined]
    st.add_application_user(flow.bare_org, flow.client_id, enabled=False, roles=())
    admin = flow.admins[flow.bare_tenant]
    # An earlier, interrupted run (or a person) left our role with a privilege the app does not need.
    client = delegated(flow, flow.bare_org, admin)
    unit = next(client.query("businessunits", select=["businessunitid"], top=1)).rows[0]["businessunitid"]
    role = client.create(
        "roles", {"name": flow.settings.security_role_name, "businessunitid@odata.bind": f"/businessunits({unit})"}
    )
    widened = {"prvDeleteAccount": "Global"}
    org_state(st.find_org_store(flow.bare_org.removeprefix("https://"))).role_privileges[role] = widened

    flow.use(onboarding_provisioning=True)
    page = onboard(flow, flow.bare_org, admin)

    assert page.status_code == 200 and "Your environment is connected" in page.text
    facts = org_facts(flow, flow.bare_org)
    assert facts["enabled"] and len(facts["roles"]) == 1 and facts["roles"][0]["roleid"] == role
    assert facts["privileges"] == expected_privileges(flow)


def test_a_person_without_the_privileges_is_refused_with_it_named_and_an_administrator_finishes(
    flow: Flow,  # noqa: F811
) -> None:
    st = flow.sandbox.state  # type: ignore[attr-defined]
    org, admin = flow.bare_org, flow.admins[flow.bare_tenant]
    st.grant_consent(flow.bare_tenant, flow.client_id)  # what the sign-in does (creates our service principal)
    maker = st.add_user(flow.bare_tenant, display_name="Rita Rolemaker")
    st.add_org_user(org, maker.object_id, "Rita Rolemaker", read_depth="organization", roles=("Role maker",))
    wanted = {**expected_privileges(flow), "prvCreateRole": "Global", "prvReadRole": "Global", "prvWriteRole": "Global"}
    _grant_role(flow, org, admin, "Role maker", wanted)
    role = required_role(flow.settings)
    provisioner = OrgProvisioner(role, flow.client_id)

    stopped = provisioner.provision(delegated(flow, org, maker))

    assert [(s.name, s.outcome) for s in stopped.steps] == [
        ("role", StepOutcome.CREATED),
        ("privileges", StepOutcome.UPDATED),
        ("application_user", StepOutcome.REFUSED),
    ]
    assert stopped.stopped_at is not None and stopped.stopped_at.missing_privilege == "prvCreateUser"
    assert "missing the prvCreateUser privilege" in stopped.summary()
    assert org_facts(flow, org)["app_users"] == []

    finished = provisioner.provision(delegated(flow, org, admin))

    assert finished.complete
    assert [(s.name, s.outcome) for s in finished.steps] == [
        ("role", StepOutcome.UNCHANGED),
        ("privileges", StepOutcome.UPDATED),
        ("application_user", StepOutcome.CREATED),
        ("role_assignment", StepOutcome.CREATED),
    ]
    facts = org_facts(flow, org)
    assert len(facts["roles"]) == 1 and facts["privileges"] == expected_privileges(flow)


def test_a_user_without_any_privilege_changes_nothing(flow: Flow) -> None:  # noqa: F811
    st = flow.sandbox.state  # type: ignore[attr-defined]
    org = flow.bare_org
    clerk = st.add_user(flow.bare_tenant, display_name="Carl Clerk")
    st.add_org_user(org, clerk.object_id, "Carl Clerk", read_depth="organization", roles=("Salesperson",))

    report = OrgProvisioner(required_role(flow.settings), flow.client_id).provision(delegated(flow, org, clerk))

    assert [(s.name, s.outcome, s.missing_privilege) for s in report.steps] == [
        ("role", StepOutcome.REFUSED, "prvReadRole")  # the first thing it does is look for the role
    ]
    facts = org_facts(flow, org)
    assert facts["roles"] == [] and facts["app_users"] == []


def _grant_role(world: Flow, org: str, admin: Any, name: str, privileges: dict[str, str]) -> None:
    """Create a role with these privileges through the Web API (the administrator's token)."""
    token = world.sandbox.state.issue_user_token(  # type: ignore[attr-defined]
        admin, audience=org, scopes=("user_impersonation",), client_id=world.client_id
    )
    api = f"{org}/api/data/v9.2"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    unit = requests.get(
        f"{api}/businessunits?$filter=_parentbusinessunitid_value eq null", headers=headers, timeout=10
    ).json()["value"][0]["businessunitid"]
    created = requests.post(
        f"{api}/roles",
        json={"name": name, "businessunitid@odata.bind": f"/businessunits({unit})"},
        headers=headers,
        timeout=10,
    )
    assert created.status_code == 204, created.text
    new_role = created.headers["OData-EntityId"][-37:-1]
    items = []
    for privilege, depth in privileges.items():
        found = requests.get(f"{api}/privileges?$filter=name eq '{privilege}'", headers=headers, timeout=10).json()
        items.append({"PrivilegeId": found["value"][0]["privilegeid"], "Depth": depth})
    replaced = requests.post(
        f"{api}/roles({new_role})/Microsoft.Dynamics.CRM.ReplacePrivilegesRole",
        json={"Privileges": items},
        headers=headers,
        timeout=10,
    )
    assert replaced.status_code == 204, replaced.text
    assert uuid.UUID(new_role)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.stop()


def test_onboarding_registers_the_webhook_and_a_change_reaches_the_receiver(
    flow: Flow,  # noqa: F811
    receiver: Receiver,
) -> None:
    import azure.functions as func

    from functions.webhooks import dataverse_webhook

    st = flow.sandbox.state  # type: ignore[attr-defined]
    flow.use(onboarding_provisioning=True, webhook_receiver_url=receiver.url, webhook_function_key="fk-0123")
    admin = flow.admins[flow.bare_tenant]
    page = onboard(flow, flow.bare_org, admin)
    assert page.status_code == 200 and "webhook_steps updated" in page.text
    again = onboard(flow, flow.bare_org, admin)  # idempotent: the same endpoint, steps and secret
    assert "webhook_endpoint unchanged" in again.text and "webhook_steps unchanged" in again.text
    endpoints = st.rows(flow.bare_org, "serviceendpoints")
    steps = st.rows(flow.bare_org, "sdkmessageprocessingsteps")
    assert [(e["url"], e["authtype"], e["contract"]) for e in endpoints] == [(receiver.url, 5, 8)]
    subscribed = sum(len(messages) for _, messages in flow.settings.webhook_subscriptions)
    assert len(steps) == subscribed and {(s["mode"], s["stage"]) for s in steps} == {(1, 40)}

    (account,) = st.seed_rows(flow.bare_org, "accounts", 1)
    changed = delegated(flow, flow.bare_org, admin)
    changed.update("accounts", account, {"name": "Changed in Northwind"})
    st.wait_for_webhooks()

    (delivery,) = receiver.received
    assert delivery.headers["x-functions-key"] == "fk-0123" and delivery.query == {}
    secret = delivery.headers[flow.settings.webhook_secret_header]
    assert hashlib.sha256(secret.encode()).hexdigest() == flow.registry.webhook_secret_hash(
        flow.bare_tenant, flow.bare_org
    )
    hook = dataverse_webhook(
        func.HttpRequest("POST", "/api/webhooks/dataverse", body=delivery.body, headers=delivery.headers)
    )
    assert hook.status_code == 202, hook.get_body()
    forged = {**delivery.headers, flow.settings.webhook_secret_header: "not-the-secret"}
    refused = dataverse_webhook(func.HttpRequest("POST", "/api/webhooks/dataverse", body=delivery.body, headers=forged))
    assert refused.status_code == 401


def test_the_webhook_is_skipped_without_a_usable_function_key(flow: Flow, receiver: Receiver) -> None:  # noqa: F811
    unresolved = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/webhook-function-key/)"
    flow.use(onboarding_provisioning=True, webhook_receiver_url=receiver.url, webhook_function_key=unresolved)
    page = onboard(flow, flow.bare_org, flow.admins[flow.bare_tenant])
    assert page.status_code == 200 and "Your environment is connected" in page.text
    # The role and application user are made; the page says that no webhook was registered, and why.
    assert "application_user created" in page.text and "webhook_endpoint" not in page.text
    assert "No webhook was registered" in page.text and "WEBHOOK_FUNCTION_KEY" in page.text
    assert "kv.vault.azure.net" not in page.text  # the setting is named, its value never shown
    assert 'class="retry"' not in page.text  # a new sign-in would not change that: the operator's setting does
    assert flow.sandbox.state.rows(flow.bare_org, "serviceendpoints") == []  # type: ignore[attr-defined]
    assert flow.registry.webhook_secret_hash(flow.bare_tenant, flow.bare_org) is None


def test_the_form_shows_the_role_and_its_privileges_before_sign_in(flow: Flow) -> None:  # noqa: F811
    flow.use(onboarding_provisioning=False)
    plain = requests.get(f"{flow.host.url}/api/onboard", timeout=30).text
    flow.use(onboarding_provisioning=True)
    shown = requests.get(f"{flow.host.url}/api/onboard", timeout=30).text
    assert flow.settings.security_role_name not in plain and "prvReadAccount" not in plain
    assert flow.settings.security_role_name in shown
    for privilege in required_role(flow.settings).privileges:
        assert f"<code>{privilege.name}</code> ({privilege.depth})" in shown
    assert "sync reads accounts" in shown


def press_retry(flow: Flow, fields: dict[str, str], admin: Any) -> requests.Response:  # noqa: F811
    """The page's "Sign in again to finish setting up": its form posted from the page's origin to the start route,
    then the administrator's new sign-in; the page the sign-in comes back to."""
    started = requests.post(
        f"{flow.host.url}/api/onboard",
        data=fields,
        headers={"Origin": flow.host.url},
        allow_redirects=False,
        timeout=30,
    )
    assert started.status_code == 302, started.text
    cookie = re.match(r"s2s_onboarding=([^;]+);", started.headers["Set-Cookie"]).group(1)  # type: ignore[union-attr]
    return back(flow, sign_in(started.headers["Location"], admin), cookie)


@pytest.mark.parametrize(
    "case",
    [
        # the role is made, its privileges are not set, there is no application user yet
        ("POST $batch", 0, "privileges", OrgStatus.AWAITING_APPLICATION_USER),
        ("POST systemusers", 0, "application_user", OrgStatus.AWAITING_APPLICATION_USER),
        # the application user works (the org is active) but no webhook is registered yet
        ("POST serviceendpoints", 0, "webhook_endpoint", OrgStatus.ACTIVE),
        # the endpoint and two of its steps are made: cut half-way through the steps
        ("POST sdkmessageprocessingsteps", 2, "webhook_steps", OrgStatus.ACTIVE),
    ],
)
def test_an_interrupted_set_up_is_finished_by_signing_in_again_from_the_page(
    flow: Flow,  # noqa: F811
    receiver: Receiver,
    case: tuple[str, int, str, OrgStatus],
) -> None:
    import azure.functions as func

    from functions.webhooks import dataverse_webhook

    request_line, after, stopped_at, first_status = case
    st = flow.sandbox.state  # type: ignore[attr-defined]
    org, admin, contact = flow.bare_org, flow.admins[flow.bare_tenant], "ops@northwind.example"
    flow.use(onboarding_provisioning=True, webhook_receiver_url=receiver.url, webhook_function_key="fk-0123")
    # Dataverse answers 503 to that request (after letting `after` of them through) until it recovers. A POST
    # that creates a row is not retried by the client (it may have been done), so the run stops there.
    st.inject_fault("dataverse", status=503, org=org, endpoint=request_line, after=after)

    first = onboard(flow, org, admin, contact)

    assert first.status_code == 200 and f"stopped at {stopped_at} (failed)" in first.text
    assert flow.registry.get_tenant(flow.bare_tenant).org(org).status is first_status
    fields = retry_fields(first.text)
    assert fields == {"org_url": org, "contact": contact}
    st.clear_faults("dataverse")

    # The page's button: its form posted from the page's origin to the start route, then the same administrator's
    # new sign-in. No token was kept in between; the new one does the rest.
    second = press_retry(flow, fields, admin)

    assert second.status_code == 200 and "Your environment is connected" in second.text, second.text
    assert "Provisioned in" in second.text and 'class="retry"' not in second.text
    tenant = flow.registry.get_tenant(flow.bare_tenant)
    assert tenant.status is TenantStatus.ACTIVE and tenant.org(org).status is OrgStatus.ACTIVE
    assert tenant.org(org).contact == contact
    # Exactly one of everything in the org: role (with exactly its privileges), application user, association,
    # service endpoint, and one step per subscribed (table, message).
    facts = org_facts(flow, org)
    assert len(facts["roles"]) == 1 and facts["privileges"] == expected_privileges(flow)
    assert len(facts["app_users"]) == 1 and facts["enabled"]
    assert facts["user_roles"] == (flow.settings.security_role_name,)
    endpoints = st.rows(org, "serviceendpoints")
    assert [(e["url"], e["authtype"], e["contract"]) for e in endpoints] == [(receiver.url, 5, 8)]
    steps = st.rows(org, "sdkmessageprocessingsteps")
    wanted = sorted(
        f"S2S webhook {flow.client_id}: {message} of {table}"
        for table, messages in flow.settings.webhook_subscriptions
        for message in messages
    )
    assert sorted(str(step["name"]) for step in steps) == wanted
    assert {step["_eventhandler_value"] for step in steps} == {endpoints[0]["serviceendpointid"]}
    # The endpoint sends the secret whose hash the registry holds: a change reaches the receiver once, accepted.
    (account,) = st.seed_rows(org, "accounts", 1)
    delegated(flow, org, admin).update("accounts", account, {"name": "Changed after the retry"})
    st.wait_for_webhooks()
    (delivery,) = receiver.received
    secret = delivery.headers[flow.settings.webhook_secret_header]
    assert hashlib.sha256(secret.encode()).hexdigest() == flow.registry.webhook_secret_hash(flow.bare_tenant, org)
    hook = dataverse_webhook(
        func.HttpRequest("POST", "/api/webhooks/dataverse", body=delivery.body, headers=delivery.headers)
    )
    assert hook.status_code == 202, hook.get_body()


def test_a_recheck_of_an_org_still_waiting_offers_the_sign_in_that_sets_it_up(flow: Flow) -> None:  # noqa: F811
    """The org was onboarded while provisioning was off (the manual path); the app now provisions. The awaiting
    page's re-check cannot set it up (no administrator token is kept) and offers the sign-in that does."""
    org, admin = flow.bare_org, flow.admins[flow.bare_tenant]
    flow.use(onboarding_provisioning=False)
    waiting = onboard(flow, org, admin)
    assert 'class="retry"' not in waiting.text
    recheck = {k: unescape(v) for k, v in re.findall(r'name="(tenant|org|ticket)" value="([^"]+)"', waiting.text)}

    flow.use(onboarding_provisioning=True)
    again = requests.post(f"{flow.host.url}/api/onboard/recheck", data=recheck, timeout=30)

    assert again.status_code == 200 and "Almost there" in again.text
    assert org_facts(flow, org)["app_users"] == []  # a re-check changes nothing in the org
    fields = retry_fields(again.text)
    assert fields == {"org_url": org, "contact": ""}
    done = press_retry(flow, fields, admin)
    assert "Your environment is connected" in done.text
    assert flow.registry.get_tenant(flow.bare_tenant).org(org).status is OrgStatus.ACTIVE
    facts = org_facts(flow, org)
    assert len(facts["app_users"]) == 1 and facts["user_roles"] == (flow.settings.security_role_name,)
