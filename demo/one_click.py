"""`make demo`, one-click onboarding: with ONBOARDING_PROVISIONING the administrator's sign-in creates our security
role, application user and webhook in an environment that has none of them, and a change there reaches the app;
then the app rotates that org's webhook secret onto the endpoint, and offboarding removes the webhook."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sandbox import Sandbox
from shared.settings import Settings


def one_click_part(
    sb: Sandbox, settings: Settings, host: Any, step: Callable[[str], None], sign_in: Callable[..., tuple[Any, str]]
) -> bool:
    from sandbox.entra.directory import GLOBAL_ADMINISTRATOR
    from shared.auth.token_provider import AccessToken
    from shared.bootstrap import build_services, use_services
    from shared.tenants.security_role import required_role

    st = sb.state
    receiver = f"{host.url}/api/webhooks/dataverse"
    key = host.keys.function_keys["dataverse_webhook"]
    one_click = replace(settings, onboarding_provisioning=True, webhook_receiver_url=receiver, webhook_function_key=key)
    services = build_services(one_click)
    use_services(services)
    role = required_role(one_click)
    step(f"One-click onboarding: the form shows the role it will create, '{role.name}'")
    for privilege in role.privileges:
        print(f"   {privilege.name:<34} {privilege.depth:<7} {'; '.join(privilege.reasons)}")
    org = "https://fourthcoffee.crm4.dynamics.com"
    tenant = st.add_tenant(display_name="Fourth Coffee")
    st.add_org(tenant, org, name="Fourth Coffee")
    admin = st.add_user(tenant, display_name="Fourth Coffee Admin", directory_roles=(GLOBAL_ADMINISTRATOR,))
    st.add_org_user(org, admin.object_id, "Fourth Coffee Admin", roles=("System Administrator",))
    step(f"Fourth Coffee: {org} has no application user, role or webhook of ours; its administrator signs in")
    done, _ = sign_in(host.url, org, admin)
    heading = re.search(r"<h1>(.*?)</h1>", done.text)
    summary = re.search(r"<p>(Provisioned in [^<]*)</p>", done.text)
    title = heading.group(1) if heading else ""
    print(f'   callback -> {done.status_code} page "{title}"; registry: {services.registry.get_tenant(tenant).status}')
    print(f"   {summary.group(1) if summary else 'no provisioning summary'}")
    endpoints = st.rows(org, "serviceendpoints")
    steps = st.rows(org, "sdkmessageprocessingsteps")
    print(f"   in the org: {len(endpoints)} service endpoint (HttpHeader) -> {receiver}, {len(steps)} steps")
    step("Fourth Coffee: a user changes an account; the org's own webhook delivers it")
    token = st.issue_user_token(
        admin, audience=org, scopes=("user_impersonation",), client_id=one_click.entra_client_id
    )
    as_admin = services.dataverse.delegated(org, AccessToken(token, time.time() + 3600, tenant, org, "demo"))
    as_admin.create("accounts", {"name": "Fourth Coffee"})
    st.wait_for_webhooks()
    statuses = [d.status for d in st.webhook_deliveries(org)]
    print(f"   Dataverse -> Create account answered {statuses} (function key and the org's secret in headers)")
    upkept = _upkeep_part(
        sb, one_click, services, tenant=tenant, org=org, step=step, change=lambda row: as_admin.create("accounts", row)
    )
    return title == "Connected" and statuses == [202] and len(endpoints) == 1 and upkept


def _upkeep_part(
    sb: Sandbox,
    settings: Settings,
    services: Any,
    *,
    tenant: str,
    org: str,
    step: Callable[[str], None],
    change: Callable[[dict[str, str]], object],
) -> bool:
    """The app looks after that webhook with its own token: a secret rotation, then offboarding."""
    from shared.tenants.webhook_upkeep import WebhookUpkeep

    st = sb.state
    upkeep = WebhookUpkeep(settings, services.registry, services.dataverse)
    step("Fourth Coffee: the operator rotates the org's webhook secret; the app puts it on the endpoint itself")
    rotation = upkeep.rotate(tenant, org, actor="demo operator")
    print(f"   endpoint: {rotation.endpoint.value}; secret shown to anyone: {rotation.secret is not None}")
    change({"name": "Fourth Coffee (after the rotation)"})
    st.wait_for_webhooks()
    after_rotation = st.webhook_deliveries(org)[-1].status
    print(f"   the next change is delivered with the new secret -> {after_rotation}")
    step("Fourth Coffee offboarded: the app removes its webhook and names what stays in the org")
    result = services.onboarding.offboard(tenant, actor="demo operator", reason="contract ended")
    (report,) = upkeep.left_in_orgs(result.removals)
    print(f"   webhook: {report['webhook']}, {report['steps_removed']} steps removed; left for their administrator:")
    for item in report["left"]:
        print(f"     - {item[:100]}")
    before = len(st.webhook_deliveries(org))
    change({"name": "Fourth Coffee (after offboarding)"})
    st.wait_for_webhooks()
    sent = len(st.webhook_deliveries(org)) - before
    left_endpoints = len(st.rows(org, "serviceendpoints"))
    print(f"   a change after offboarding: {sent} deliveries; service endpoints left in the org: {left_endpoints}")
    return rotation.secret is None and after_rotation == 202 and report["webhook"] == "done" and sent == 0
