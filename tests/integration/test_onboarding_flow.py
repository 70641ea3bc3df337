"""The onboarding flow over real HTTP: the function app on the development host, the sandbox's Entra sign-in
page and Dataverse orgs, the registry on Azurite; MSAL does the code flow for real. The browser is played by
`requests` here (see tests/e2e for Chromium)."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, replace
from html import unescape
from urllib.parse import parse_qs, urlsplit

import azure.functions as func
import pytest
import requests

from devhost import DevHost
from sandbox.entra.authorize import read_sign_in_form
from sandbox.entra.directory import GLOBAL_ADMINISTRATOR
from sandbox.entra.user_tokens import SandboxUser
from sandbox.net.pki import make_certificate
from shared.bootstrap import build_services, use_services
from shared.settings import AppMode, Settings
from shared.tenants.registry import TenantStatus
from tests.integration.conftest import cert_file_settings

pytestmark = pytest.mark.integration


def fresh_app() -> func.FunctionApp:
    from functions.health import bp as health_bp
    from functions.onboarding import bp as onboarding_bp

    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(health_bp)
    app.register_functions(onboarding_bp)
    return app


@dataclass
class Flow:
    sandbox: object
    host: DevHost
    settings: Settings
    client_id: str
    ready_tenant: str
    ready_org: str
    bare_tenant: str
    bare_org: str
    second_org: str  # the ready tenant's other environment, without our application user
    admins: dict[str, SandboxUser]  # tenant -> a Global Administrator who is System Administrator of its orgs
    clerk: SandboxUser  # a user of the ready tenant and org without the System Administrator role

    def use(self, **changes: object) -> None:
        use_services(build_services(replace(self.settings, **changes)))

    @property
    def registry(self):
        from shared.bootstrap import get_services

        return get_services().registry


@pytest.fixture
def flow(sandbox, sandbox_env, azurite, tmp_path):
    st = sandbox.state
    client_id = st.register_application(display_name="Contoso Sync")
    bundle = make_certificate("onboarding-flow")
    st.add_application_certificate(client_id, bundle.cert_pem)
    cert_file = tmp_path / "client.pem"
    cert_file.write_text(bundle.key_pem + bundle.cert_pem)
    ready_tenant = st.add_tenant(display_name=f"Fabrikam{uuid.uuid4().hex[:6]}")
    bare_tenant = st.add_tenant(display_name=f"Northwind{uuid.uuid4().hex[:6]}")
    ready_org = f"https://fab{uuid.uuid4().hex[:8]}.crm4.dynamics.com"
    second_org = f"https://fabtest{uuid.uuid4().hex[:8]}.crm4.dynamics.com"
    bare_org = f"https://nw{uuid.uuid4().hex[:8]}.crm.dynamics.com"
    st.add_org(ready_tenant, ready_org)
    st.add_application_user(ready_org, client_id)
    st.add_org(ready_tenant, second_org)
    st.add_org(bare_tenant, bare_org)
    admins = {}
    for tenant, orgs in ((ready_tenant, (ready_org, second_org)), (bare_tenant, (bare_org,))):
        admins[tenant] = st.add_user(tenant, display_name="Grace Admin", directory_roles=(GLOBAL_ADMINISTRATOR,))
        for org in orgs:
            st.add_org_user(org, admins[tenant].object_id, "Grace Admin", roles=("System Administrator",))
    clerk = st.add_user(ready_tenant, display_name="Carl Clerk")
    st.add_org_user(ready_org, clerk.object_id, "Carl Clerk", roles=("Salesperson",))
    host = DevHost(fresh_app()).start()
    redirect_uri = f"{host.url}/api/consent/callback"
    st.add_redirect_uri(client_id, redirect_uri)
    settings = cert_file_settings(
        sandbox,
        client_id,
        cert_file,
        storage_connection_string=azurite.connection_string,
        onboarding_redirect_uri=redirect_uri,
        app_display_name="Contoso Sync",
        verification_retry_delays=(1,),
    )
    flow = Flow(
        sandbox, host, settings, client_id, ready_tenant, ready_org, bare_tenant, bare_org, second_org, admins, clerk
    )
    flow.use()
    yield flow
    host.stop()
    use_services(None)


def start(flow: Flow, org: str, contact: str = "") -> tuple[str, str]:
    """POST the form from our own page; return (Entra's sign-in URL, the browser cookie value)."""
    resp = requests.post(
        f"{flow.host.url}/api/onboard",
        data={"org_url": org, "contact": contact},
        headers={"Origin": flow.host.url},
        allow_redirects=False,
        timeout=30,
    )
    assert resp.status_code == 302, resp.text
    cookie = re.match(r"s2s_onboarding=([^;]+);", resp.headers["Set-Cookie"]).group(1)
    return resp.headers["Location"], cookie


def sign_in(url: str, user: SandboxUser, decision: str = "accept") -> str:
    """Play the person on the sandbox's sign-in page; return where Entra sends the browser."""
    page = requests.get(url, timeout=30)
    assert page.status_code == 200, page.text
    form = read_sign_in_form(page.text)
    answer = requests.post(url, data=form.submission(decision, user=user), allow_redirects=False, timeout=30)
    assert answer.status_code == 302, answer.text
    return answer.headers["Location"]


def back(flow: Flow, callback: str, cookie: str) -> requests.Response:
    return requests.get(callback, headers={"Cookie": f"s2s_onboarding={cookie}"}, timeout=30)


def onboard(flow: Flow, org: str, user: SandboxUser, contact: str = "") -> requests.Response:
    url, cookie = start(flow, org, contact)
    return back(flow, sign_in(url, user), cookie)


def tenant_rows(flow: Flow, tenant: str) -> tuple[object, ...]:
    """Everything a forged step must not touch: the row (status, orgs, contact, who, ticket) and the history."""
    from shared.bootstrap import get_services

    row = dict(get_services().storage.table("tenants").get_entity("tenant", tenant))
    return row, [(h.to_status, h.reason, h.actor, h.at) for h in flow.registry.history(tenant)]


def test_form_then_administrator_sign_in_then_active(flow):
    assert "Environment URL" in requests.get(f"{flow.host.url}/api/onboard", timeout=30).text
    url, cookie = start(flow, flow.ready_org, "ops@fabrikam.example")
    assert url.startswith(f"{flow.sandbox.authority_host}/organizations/oauth2/v2.0/authorize?")
    query = parse_qs(urlsplit(url).query)
    assert query["client_id"] == [flow.client_id]
    assert query["redirect_uri"] == [flow.settings.onboarding_redirect_uri]
    assert query["code_challenge_method"] == ["S256"] and query["scope"][0].startswith(f"{flow.ready_org}/")
    admin = flow.admins[flow.ready_tenant]
    callback = sign_in(url, admin)
    assert callback.startswith(flow.settings.onboarding_redirect_uri)
    done = back(flow, callback, cookie)
    assert done.status_code == 200 and "is connected" in done.text
    tenant = flow.registry.get_tenant(flow.ready_tenant)
    assert tenant.status is TenantStatus.ACTIVE and tenant.org_urls == (flow.ready_org,)
    assert tenant.contact == "ops@fabrikam.example" and tenant.onboarded_by == admin.upn
    history = flow.registry.history(flow.ready_tenant)
    assert [h.to_status for h in history if h.org is None] == ["active", "consented", "pending_consent"]
    assert [h.to_status for h in history if h.org == flow.ready_org] == ["active", "pending_verification"]
    assert all(admin.object_id in h.actor and admin.upn in h.actor for h in history)
    replayed = back(flow, callback, cookie)
    assert replayed.status_code == 400 and "already used" in replayed.text
    from shared.bootstrap import get_services

    # MSAL's cache keeps no account (and so no delegated or refresh token) of the administrator after the flow.
    assert get_services().administrator_sign_in._client().get_accounts() == []


def test_missing_application_user_gets_instructions_then_recheck(flow):
    flow.use(onboarding_provisioning=False)  # the manual path: the administrator creates the application user
    page = onboard(flow, flow.bare_org, flow.admins[flow.bare_tenant])
    assert page.status_code == 200 and "create the application user" in page.text
    assert flow.client_id in page.text
    assert flow.registry.get_tenant(flow.bare_tenant).status is TenantStatus.AWAITING_APPLICATION_USER
    fields = dict(re.findall(r'name="(tenant|ticket)" value="([^"]+)"', page.text))
    flow.sandbox.state.add_application_user(flow.bare_org, flow.client_id)
    again = requests.post(
        f"{flow.host.url}/api/onboard/recheck", data={k: unescape(v) for k, v in fields.items()}, timeout=30
    )
    assert again.status_code == 200 and "is connected" in again.text
    assert flow.registry.get_tenant(flow.bare_tenant).status is TenantStatus.ACTIVE


def test_cancel_shows_entra_error_and_records_nothing(flow):
    url, cookie = start(flow, flow.ready_org)
    callback = sign_in(url, flow.admins[flow.ready_tenant], "cancel")
    assert "error=access_denied" in callback
    page = back(flow, callback, cookie)
    assert page.status_code == 400 and "Sign-in did not complete" in page.text and "AADSTS65004" in page.text
    assert flow.registry.find_tenant(flow.ready_tenant) is None


def test_the_forged_consent_callback_of_the_review_changes_nothing_of_an_active_tenant(flow):
    """The attack found in review, step by step: an anonymous client starts onboarding for another environment of
    an active customer, then answers the callback itself with admin_consent=True and the customer's tenant."""
    onboard(flow, flow.ready_org, flow.admins[flow.ready_tenant], "ops@fabrikam.example")
    before = tenant_rows(flow, flow.ready_tenant)
    assert flow.registry.get_tenant(flow.ready_tenant).status is TenantStatus.ACTIVE

    url, cookie = start(flow, flow.second_org, "attacker@evil.example")  # step 1: no call to the org is made
    state = parse_qs(urlsplit(url).query)["state"][0]
    forged = requests.get(  # step 2: the callback, with the attacker's own valid state and cookie
        flow.settings.onboarding_redirect_uri,
        params={"admin_consent": "True", "tenant": flow.ready_tenant, "state": state},
        headers={"Cookie": f"s2s_onboarding={cookie}"},
        timeout=30,
    )
    assert forged.status_code == 400 and 'data-error-code="sign_in_' in forged.text
    assert tenant_rows(flow, flow.ready_tenant) == before  # step 3 never happens
    webhook_facing = flow.registry.get_tenant(flow.ready_tenant)
    assert webhook_facing.status is TenantStatus.ACTIVE and webhook_facing.org_urls == (flow.ready_org,)


def test_other_browser_and_forged_states_record_nothing(flow):
    url, _cookie = start(flow, flow.ready_org)
    callback = sign_in(url, flow.admins[flow.ready_tenant])
    stolen = back(flow, callback, "not-mine")
    assert stolen.status_code == 400 and "different browser" in stolen.text
    forged = requests.get(f"{flow.settings.onboarding_redirect_uri}?code=abc&state=forged", timeout=30)
    assert forged.status_code == 400
    assert flow.registry.find_tenant(flow.ready_tenant) is None


def test_a_replayed_code_and_a_code_of_another_flow_are_refused_by_entra(flow):
    admin = flow.admins[flow.ready_tenant]
    url_a, _cookie_a = start(flow, flow.ready_org)
    url_b, cookie_b = start(flow, flow.ready_org)
    code_a = parse_qs(urlsplit(sign_in(url_a, admin)).query)["code"][0]
    state_b = parse_qs(urlsplit(url_b).query)["state"][0]
    # The code of flow A with flow B's state: MSAL sends B's PKCE verifier, which A's challenge does not match.
    wrong = requests.get(
        flow.settings.onboarding_redirect_uri,
        params={"code": code_a, "state": state_b},
        headers={"Cookie": f"s2s_onboarding={cookie_b}"},
        timeout=30,
    )
    assert wrong.status_code == 400 and 'data-error-code="sign_in_refused"' in wrong.text
    assert "AADSTS501481" in wrong.text
    assert flow.registry.find_tenant(flow.ready_tenant) is None
    url_c, cookie_c = start(flow, flow.ready_org)
    state_c = parse_qs(urlsplit(url_c).query)["state"][0]
    replayed = requests.get(
        flow.settings.onboarding_redirect_uri,
        params={"code": code_a, "state": state_c},
        headers={"Cookie": f"s2s_onboarding={cookie_c}"},
        timeout=30,
    )
    assert replayed.status_code == 400 and "AADSTS54005" in replayed.text
    assert flow.registry.find_tenant(flow.ready_tenant) is None


def test_a_user_who_is_not_system_administrator_is_told_which_role_is_missing(flow):
    flow.sandbox.state.grant_consent(flow.ready_tenant, flow.client_id)  # the app is approved; the clerk is not admin
    page = onboard(flow, flow.ready_org, flow.clerk)
    assert page.status_code == 403 and 'data-error-code="not_org_administrator"' in page.text
    assert "System Administrator" in page.text and flow.clerk.upn in page.text
    assert flow.registry.find_tenant(flow.ready_tenant) is None


def test_an_administrator_of_another_tenant_cannot_onboard_this_org(flow):
    page = onboard(flow, flow.ready_org, flow.admins[flow.bare_tenant])
    assert page.status_code == 403 and 'data-error-code="org_not_in_tenant"' in page.text
    assert flow.registry.find_tenant(flow.ready_tenant) is None
    assert flow.registry.find_tenant(flow.bare_tenant) is None


def test_a_second_org_without_our_application_user_waits_and_the_working_one_stays_active(flow):
    """Issue: an org added to an active tenant that lacks the application user never demotes the tenant; webhooks
    from the working org are still accepted (202) and its users still served (/api/me 200)."""
    from functions.user_api import me
    from functions.webhooks import dataverse_webhook
    from shared.bootstrap import get_services
    from tests.unit import webhook_samples as samples

    flow.use(onboarding_provisioning=False)  # the manual path: the administrator creates the application user
    admin = flow.admins[flow.ready_tenant]
    onboard(flow, flow.ready_org, admin)
    page = onboard(flow, flow.second_org, admin)
    assert page.status_code == 200 and "Almost there" in page.text and flow.second_org in page.text
    tenant = flow.registry.get_tenant(flow.ready_tenant)
    assert tenant.status is TenantStatus.ACTIVE
    assert {o.url: o.status.value for o in tenant.orgs} == {
        flow.ready_org: "active",
        flow.second_org: "awaiting_application_user",
    }
    host = flow.ready_org.removeprefix("https://")
    org_id = flow.sandbox.state.get_org(flow.ready_org).org_id
    secret = get_services().registry.set_webhook_secret(flow.ready_tenant, flow.ready_org)
    body = samples.update_contact(OrganizationId=org_id, CorrelationId=str(uuid.uuid4()))
    hook = dataverse_webhook(
        func.HttpRequest(
            "POST",
            "/api/webhooks/dataverse",
            body=json.dumps(body).encode(),
            headers={"x-ms-dynamics-organization": host, "x-s2s-webhook-secret": secret},
        )
    )
    assert hook.status_code == 202
    flow.use(oidc_v1_issuer_template=f"{flow.sandbox.authority_host}/{{tenantid}}/")
    token = flow.sandbox.state.issue_user_token(flow.clerk, audience=flow.client_id)
    answer = me(func.HttpRequest("GET", "/api/me", body=b"", headers={"authorization": f"Bearer {token}"}))
    assert answer.status_code == 200 and json.loads(answer.get_body())["tenant_status"] == "active"
    assert get_services().registry.get_tenant(flow.ready_tenant).active_org_urls == (flow.ready_org,)

    # The customer creates the application user and re-checks with the code from the page (a POST body).
    fields = dict(re.findall(r'name="(tenant|org|ticket)" value="([^"]+)"', page.text))
    flow.sandbox.state.add_application_user(flow.second_org, flow.client_id)
    again = requests.post(
        f"{flow.host.url}/api/onboard/recheck", data={k: unescape(v) for k, v in fields.items()}, timeout=30
    )
    assert again.status_code == 200 and "is connected" in again.text
    assert flow.registry.get_tenant(flow.ready_tenant).org(flow.second_org).status.value == "active"


def test_background_verification_never_replaces_the_customers_ticket(flow):
    from shared.bootstrap import get_services

    flow.use(onboarding_provisioning=False)  # the manual path: the administrator creates the application user
    page = onboard(flow, flow.bare_org, flow.admins[flow.bare_tenant])
    fields = {k: unescape(v) for k, v in re.findall(r'name="(tenant|org|ticket)" value="([^"]+)"', page.text)}
    services = get_services()
    services.onboarding.verify(flow.bare_tenant, actor="health job")
    services.onboarding.verify(flow.bare_tenant, actor="admin API")
    assert services.registry.check_recheck_ticket(flow.bare_tenant, fields["ticket"]) == flow.bare_org
    refused = requests.post(f"{flow.host.url}/api/onboard/recheck", data={**fields, "ticket": "guessed"}, timeout=30)
    assert refused.status_code == 400
    # A ticket in the query string is not read.
    query = requests.post(f"{flow.host.url}/api/onboard/recheck", params=fields, timeout=30)
    assert query.status_code == 400


def test_an_offboarded_tenant_comes_back_only_through_a_signed_in_administrator(flow):
    from shared.bootstrap import get_services

    admin = flow.admins[flow.ready_tenant]
    onboard(flow, flow.ready_org, admin)
    get_services().onboarding.offboard(flow.ready_tenant, actor="operator", reason="contract ended")
    before = tenant_rows(flow, flow.ready_tenant)
    url, cookie = start(flow, flow.ready_org)
    state = parse_qs(urlsplit(url).query)["state"][0]
    forged = requests.get(
        flow.settings.onboarding_redirect_uri,
        params={"admin_consent": "True", "tenant": flow.ready_tenant, "state": state},
        headers={"Cookie": f"s2s_onboarding={cookie}"},
        timeout=30,
    )
    assert forged.status_code == 400 and tenant_rows(flow, flow.ready_tenant) == before
    assert onboard(flow, flow.ready_org, admin).status_code == 200
    history = flow.registry.history(flow.ready_tenant)
    reentry = next(h for h in history if h.from_status == "offboarded" and h.org is None)
    assert "re-onboarded after offboarding" in reentry.reason and admin.object_id in reentry.actor
    assert flow.registry.get_tenant(flow.ready_tenant).status is TenantStatus.ACTIVE


def test_bad_org_url_is_shown_back(flow):
    resp = requests.post(
        f"{flow.host.url}/api/onboard",
        data={"org_url": "https://evil.example.com"},
        headers={"Origin": flow.host.url},
        allow_redirects=False,
        timeout=30,
    )
    assert resp.status_code == 400 and "Dataverse domain" in resp.text and "Location" not in resp.headers


def test_a_cross_site_form_post_is_refused(flow):
    for headers in ({}, {"Origin": "https://evil.example"}):
        resp = requests.post(
            f"{flow.host.url}/api/onboard",
            data={"org_url": flow.ready_org},
            headers=headers,
            allow_redirects=False,
            timeout=30,
        )
        assert resp.status_code == 403 and 'data-error-code="cross_site_request"' in resp.text
        assert "Set-Cookie" not in resp.headers


def test_single_tenant_mode_refuses_other_tenants_after_sign_in_before_recording(flow):
    flow.use(app_mode=AppMode.SINGLE_TENANT)
    url, cookie = start(flow, flow.ready_org)
    assert url.startswith(f"{flow.sandbox.authority_host}/{flow.sandbox.state.home_tenant_id}/oauth2/v2.0/authorize")
    page = requests.get(url, timeout=30)
    # The home tenant's authority offers only the home tenant's people: a customer's admin cannot even pick theirs.
    assert flow.admins[flow.ready_tenant].object_id not in page.text
    assert flow.registry.find_tenant(flow.ready_tenant) is None
    assert cookie


def test_admin_verify_needs_the_master_key(flow):
    onboard(flow, flow.ready_org, flow.admins[flow.ready_tenant])
    endpoint = f"{flow.host.url}/api/tenants/{flow.ready_tenant}/verify"
    assert requests.post(endpoint, timeout=30).status_code == 401
    assert requests.post(endpoint, params={"code": flow.host.keys.host_key}, timeout=30).status_code == 401
    flow.sandbox.state.remove_application_user(flow.ready_org, flow.client_id)
    resp = requests.post(endpoint, headers={"x-functions-key": flow.host.keys.master_key}, timeout=30)
    assert resp.status_code == 200
    assert resp.json()["status"] == "awaiting_application_user" and resp.json()["error_code"] == "0x80072560"
