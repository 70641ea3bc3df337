"""The onboarding flow over real HTTP: the function app on the development host, the sandbox's Entra consent
page and Dataverse orgs, the registry on Azurite. The browser is played by `requests` here (see tests/e2e for
Chromium)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from html import unescape
from urllib.parse import parse_qs, urlsplit

import azure.functions as func
import pytest
import requests

from devhost import DevHost
from sandbox.entra.consent_page import read_consent_form
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
    bare_org = f"https://nw{uuid.uuid4().hex[:8]}.crm.dynamics.com"
    st.add_org(ready_tenant, ready_org)
    st.add_application_user(ready_org, client_id)
    st.add_org(bare_tenant, bare_org)
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
    flow = Flow(sandbox, host, settings, client_id, ready_tenant, ready_org, bare_tenant, bare_org)
    flow.use()
    yield flow
    host.stop()
    use_services(None)


def start(flow: Flow, org: str) -> tuple[str, str]:
    """POST the form; return (the admin-consent URL, the browser cookie value)."""
    resp = requests.post(f"{flow.host.url}/api/onboard", data={"org_url": org}, allow_redirects=False, timeout=30)
    assert resp.status_code == 302, resp.text
    cookie = re.match(r"s2s_onboarding=([^;]+);", resp.headers["Set-Cookie"]).group(1)
    return resp.headers["Location"], cookie


def consent(url: str, decision: str) -> str:
    """Play the administrator on the sandbox consent page; return where Entra sends the browser."""
    page = requests.get(url, timeout=30)
    assert page.status_code == 200
    form = read_consent_form(page.text)
    answer = requests.post(url, data=form.submission(decision), allow_redirects=False, timeout=30)
    assert answer.status_code == 302
    return answer.headers["Location"]


def test_form_then_consent_then_active(flow):
    assert "Environment URL" in requests.get(f"{flow.host.url}/api/onboard", timeout=30).text
    url, cookie = start(flow, flow.ready_org)
    assert url.startswith(f"{flow.sandbox.authority_host}/{flow.ready_tenant}/adminconsent?")
    query = parse_qs(urlsplit(url).query)
    assert query["client_id"] == [flow.client_id]
    assert query["redirect_uri"] == [flow.settings.onboarding_redirect_uri]
    callback = consent(url, "accept")
    assert callback.startswith(flow.settings.onboarding_redirect_uri)
    done = requests.get(callback, headers={"Cookie": f"s2s_onboarding={cookie}"}, timeout=30)
    assert done.status_code == 200 and "is connected" in done.text
    tenant = flow.registry.get_tenant(flow.ready_tenant)
    assert tenant.status is TenantStatus.ACTIVE and tenant.org_urls == (flow.ready_org,)
    history = [h.to_status for h in flow.registry.history(flow.ready_tenant)]
    assert history == ["active", "consented", "pending_consent"]
    replayed = requests.get(callback, headers={"Cookie": f"s2s_onboarding={cookie}"}, timeout=30)
    assert replayed.status_code == 400 and "already used" in replayed.text


def test_missing_application_user_gets_instructions_then_recheck(flow):
    url, cookie = start(flow, flow.bare_org)
    page = requests.get(consent(url, "accept"), headers={"Cookie": f"s2s_onboarding={cookie}"}, timeout=30)
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
    callback = consent(url, "cancel")
    assert "error=" in callback
    page = requests.get(callback, headers={"Cookie": f"s2s_onboarding={cookie}"}, timeout=30)
    assert page.status_code == 400 and "Consent was not granted" in page.text
    assert flow.registry.find_tenant(flow.ready_tenant) is None


def test_other_browser_and_forged_states_record_nothing(flow):
    url, _cookie = start(flow, flow.ready_org)
    callback = consent(url, "accept")
    stolen = requests.get(callback, headers={"Cookie": "s2s_onboarding=not-mine"}, timeout=30)
    assert stolen.status_code == 400 and "another browser" in stolen.text.replace(
        "a different browser", "another browser"
    )
    forged = requests.get(
        f"{flow.settings.onboarding_redirect_uri}?tenant={flow.ready_tenant}&state=forged&admin_consent=True",
        timeout=30,
    )
    assert forged.status_code == 400
    assert flow.registry.find_tenant(flow.ready_tenant) is None


def test_bad_org_url_is_shown_back(flow):
    resp = requests.post(
        f"{flow.host.url}/api/onboard", data={"org_url": "https://evil.example.com"}, allow_redirects=False, timeout=30
    )
    assert resp.status_code == 400 and "Dataverse domain" in resp.text and "Location" not in resp.headers


def test_single_tenant_mode_refuses_other_tenants_before_recording(flow):
    flow.use(app_mode=AppMode.SINGLE_TENANT)
    resp = requests.post(
        f"{flow.host.url}/api/onboard", data={"org_url": flow.ready_org}, allow_redirects=False, timeout=30
    )
    assert resp.status_code == 403 and "Nothing was recorded" in resp.text
    assert flow.registry.find_tenant(flow.ready_tenant) is None


def test_admin_verify_needs_the_master_key(flow):
    url, cookie = start(flow, flow.ready_org)
    requests.get(consent(url, "accept"), headers={"Cookie": f"s2s_onboarding={cookie}"}, timeout=30)
    endpoint = f"{flow.host.url}/api/tenants/{flow.ready_tenant}/verify"
    assert requests.post(endpoint, timeout=30).status_code == 401
    assert requests.post(endpoint, params={"code": flow.host.keys.host_key}, timeout=30).status_code == 401
    flow.sandbox.state.remove_application_user(flow.ready_org, flow.client_id)
    resp = requests.post(endpoint, headers={"x-functions-key": flow.host.keys.master_key}, timeout=30)
    assert resp.status_code == 200
    assert resp.json()["status"] == "awaiting_application_user" and resp.json()["error_code"] == "0x80072560"
