"""The sandbox's admin-consent page (protocol §1) driven with plain `requests`, as a browser would: GET the page,
read the form, POST Accept or Cancel, and check the redirect back to the app against Entra's documented shapes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import msal
import pytest
import requests

from sandbox import Sandbox
from sandbox.entra.consent_page import ConsentForm, read_consent_form

from .conftest import RegisteredApp

pytestmark = pytest.mark.integration

CALLBACK = "https://app.example.com/consent/callback"
DATAVERSE_SCOPE = "https://contoso.crm.dynamics.com/.default"

AppFactory = Callable[..., RegisteredApp]
CcaFactory = Callable[..., msal.ConfidentialClientApplication]


@dataclass
class Browser:
    """Plain requests against the sandbox's Entra, never following redirects."""

    sandbox: Sandbox

    def get(self, path: str, **params: str) -> requests.Response:
        return requests.get(
            f"{self.sandbox.authority_host}{path}",
            params=params,
            verify=str(self.sandbox.ca_bundle_path),
            allow_redirects=False,
            timeout=5,
        )

    def submit(self, page: requests.Response, data: dict[str, str]) -> requests.Response:
        form = read_consent_form(page.text)
        return requests.post(
            urljoin(page.url, form.action),
            data=data,
            verify=str(self.sandbox.ca_bundle_path),
            allow_redirects=False,
            timeout=5,
        )

    def decide(self, page: requests.Response, decision: str, tenant: str | None = None) -> requests.Response:
        assert page.status_code == 200, page.text
        return self.submit(page, read_consent_form(page.text).submission(decision, tenant))


@pytest.fixture
def browser(sandbox: Sandbox) -> Browser:
    return Browser(sandbox)


@pytest.fixture
def unconsented(new_app: AppFactory, sandbox: Sandbox) -> RegisteredApp:
    """An app with the callback registered and a customer tenant that has not consented yet."""
    app = new_app(consent=False, display_name="Contoso Sync")
    sandbox.state.add_redirect_uri(app.client_id, CALLBACK)
    return app


def _query(location: str) -> list[tuple[str, str]]:
    return [tuple(pair.split("=", 1)) for pair in urlsplit(location).query.split("&")]  # type: ignore[misc]


# -- v1 ----------------------------------------------------------------------------------------------------


def test_v1_accept_for_named_tenant_redirects_with_tenant_state_and_admin_consent(
    sandbox: Sandbox, browser: Browser, unconsented: RegisteredApp
) -> None:
    tenant = unconsented.tenant_id
    page = browser.get(f"/{tenant}/adminconsent", client_id=unconsented.client_id, state="s-123", redirect_uri=CALLBACK)
    form = read_consent_form(page.text)

    response = browser.decide(page, "accept")

    assert form.fields["tenant"] == tenant and form.tenant_options == []  # fixed, no choice
    assert response.status_code == 302
    assert response.headers["Location"] == f"{CALLBACK}?tenant={tenant}&state=s-123&admin_consent=True"
    assert sandbox.state.find_service_principal(tenant, unconsented.client_id).consented
    assert sandbox.state.count("admin_consent", tenant=tenant, client_id=unconsented.client_id, decision="accept") == 1


def test_v1_at_common_consents_in_the_tenant_the_admin_chose(
    sandbox: Sandbox, browser: Browser, unconsented: RegisteredApp
) -> None:
    other = sandbox.state.add_tenant(display_name="Other Customer")
    page = browser.get("/common/adminconsent", client_id=unconsented.client_id, state="x", redirect_uri=CALLBACK)
    form = read_consent_form(page.text)

    response = browser.decide(page, "accept", unconsented.tenant_id)

    assert {unconsented.tenant_id, other, sandbox.state.home_tenant_id} <= set(form.tenant_options)
    assert response.headers["Location"] == f"{CALLBACK}?tenant={unconsented.tenant_id}&state=x&admin_consent=True"
    assert sandbox.state.find_service_principal(unconsented.tenant_id, unconsented.client_id) is not None
    assert sandbox.state.find_service_principal(other, unconsented.client_id) is None


def test_v1_cancel_redirects_with_permission_denied_and_grants_nothing(
    sandbox: Sandbox, browser: Browser, unconsented: RegisteredApp
) -> None:
    page = browser.get(
        "/organizations/adminconsent", client_id=unconsented.client_id, state="s1", redirect_uri=CALLBACK
    )

    response = browser.decide(page, "cancel", unconsented.tenant_id)

    assert response.status_code == 302
    assert response.headers["Location"] == (
        f"{CALLBACK}?error=permission_denied&error_description=The+admin+canceled+the+request&state=s1"
    )
    assert sandbox.state.find_service_principal(unconsented.tenant_id, unconsented.client_id) is None
    assert (
        sandbox.state.count(
            "admin_consent", tenant=unconsented.tenant_id, client_id=unconsented.client_id, decision="cancel"
        )
        == 1
    )


def test_tenant_named_by_domain_redirects_with_its_guid(
    sandbox: Sandbox, browser: Browser, unconsented: RegisteredApp
) -> None:
    domain = sandbox.state.get_tenant(unconsented.tenant_id).domains[0]
    page = browser.get(f"/{domain}/adminconsent", client_id=unconsented.client_id, redirect_uri=CALLBACK)

    response = browser.decide(page, "accept")

    assert response.headers["Location"] == f"{CALLBACK}?tenant={unconsented.tenant_id}&admin_consent=True"


# -- v2 ----------------------------------------------------------------------------------------------------


def test_v2_accept_redirects_with_admin_consent_tenant_scope_state(
    sandbox: Sandbox, browser: Browser, unconsented: RegisteredApp
) -> None:
    page = browser.get(
        "/organizations/v2.0/adminconsent",
        client_id=unconsented.client_id,
        scope=DATAVERSE_SCOPE,
        redirect_uri=CALLBACK,
        state="v2-state",
    )
    response = browser.decide(page, "accept", unconsented.tenant_id)

    expected = urlencode(
        {"admin_consent": "True", "tenant": unconsented.tenant_id, "scope": DATAVERSE_SCOPE, "state": "v2-state"}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"{CALLBACK}?{expected}"
    assert DATAVERSE_SCOPE in page.text
    assert sandbox.state.find_service_principal(unconsented.tenant_id, unconsented.client_id).consented


def test_v2_cancel_redirects_with_consent_required_and_admin_consent_true(
    sandbox: Sandbox, browser: Browser, unconsented: RegisteredApp
) -> None:
    page = browser.get(
        f"/{unconsented.tenant_id}/v2.0/adminconsent",
        client_id=unconsented.client_id,
        scope=DATAVERSE_SCOPE,
        redirect_uri=CALLBACK,
        state="v2-cancel",
    )
    response = browser.decide(page, "cancel")

    assert response.headers["Location"] == (
        f"{CALLBACK}?admin_consent=True&error=consent_required&error_description="
        "AADSTS65004%3A+User+declined+to+consent+to+access+the+app.&state=v2-cancel"
    )
    assert sandbox.state.find_service_principal(unconsented.tenant_id, unconsented.client_id) is None


def test_v2_rejects_common_and_a_missing_scope_with_an_error_page(browser: Browser, unconsented: RegisteredApp) -> None:
    at_common = browser.get(
        "/common/v2.0/adminconsent", client_id=unconsented.client_id, scope=DATAVERSE_SCOPE, redirect_uri=CALLBACK
    )
    no_scope = browser.get(
        f"/{unconsented.tenant_id}/v2.0/adminconsent", client_id=unconsented.client_id, redirect_uri=CALLBACK
    )

    assert at_common.status_code == 400 and "Location" not in at_common.headers
    assert "AADSTS50059" in at_common.text and "common" in at_common.text
    assert no_scope.status_code == 400 and "Location" not in no_scope.headers
    assert "AADSTS900144" in no_scope.text and "scope" in no_scope.text


# -- refusals before any redirect ------------------------------------------------------------------------


def test_unregistered_redirect_uri_gets_error_page_and_no_redirect(
    sandbox: Sandbox, browser: Browser, unconsented: RegisteredApp
) -> None:
    elsewhere = "https://attacker.example/steal"
    response = browser.get(
        f"/{unconsented.tenant_id}/adminconsent", client_id=unconsented.client_id, redirect_uri=elsewhere
    )

    assert response.status_code == 400
    assert "Location" not in response.headers
    assert response.headers["Content-Type"].startswith("text/html")
    assert "AADSTS50011" in response.text
    assert f"The redirect URI &#x27;{elsewhere}&#x27; specified in the request does not match" in response.text
    assert "does not match the redirect URIs configured for the application" in response.text
    assert sandbox.state.count("admin_consent_error", code=50011) >= 1


def test_redirect_uri_swapped_on_the_post_gets_no_redirect(browser: Browser, unconsented: RegisteredApp) -> None:
    page = browser.get(f"/{unconsented.tenant_id}/adminconsent", client_id=unconsented.client_id, redirect_uri=CALLBACK)
    form = read_consent_form(page.text)

    response = requests.post(
        f"{browser.sandbox.authority_host}/{unconsented.tenant_id}/adminconsent",
        params={"client_id": unconsented.client_id, "redirect_uri": "https://attacker.example/"},
        data=form.submission("accept"),
        verify=str(browser.sandbox.ca_bundle_path),
        allow_redirects=False,
        timeout=5,
    )

    assert response.status_code == 400 and "Location" not in response.headers
    assert "AADSTS50011" in response.text


def test_unknown_client_id_gets_700016_page(browser: Browser, unconsented: RegisteredApp) -> None:
    stranger = str(uuid.uuid4())
    response = browser.get(f"/{unconsented.tenant_id}/adminconsent", client_id=stranger, redirect_uri=CALLBACK)

    assert response.status_code == 400 and "Location" not in response.headers
    assert f"AADSTS700016: Application with identifier &#x27;{stranger}&#x27; was not found" in response.text


def test_unknown_tenant_gets_90002_page(browser: Browser, unconsented: RegisteredApp) -> None:
    response = browser.get(
        "/nobody.onmicrosoft.com/adminconsent", client_id=unconsented.client_id, redirect_uri=CALLBACK
    )

    assert response.status_code == 400 and "Location" not in response.headers
    assert "AADSTS90002" in response.text


def test_nonce_is_single_use_and_required(sandbox: Sandbox, browser: Browser, unconsented: RegisteredApp) -> None:
    page = browser.get(f"/{unconsented.tenant_id}/adminconsent", client_id=unconsented.client_id, redirect_uri=CALLBACK)
    form = read_consent_form(page.text)

    forged = browser.submit(page, {**form.submission("accept"), "consent_nonce": "forged"})
    missing = browser.submit(page, {"tenant": unconsented.tenant_id, "decision": "accept"})
    first = browser.submit(page, form.submission("cancel"))
    replayed = browser.submit(page, form.submission("accept"))

    assert forged.status_code == 400 and "Location" not in forged.headers
    assert missing.status_code == 400 and "Location" not in missing.headers
    assert first.status_code == 302
    assert replayed.status_code == 400 and "Location" not in replayed.headers
    assert sandbox.state.find_service_principal(unconsented.tenant_id, unconsented.client_id) is None


def test_nonce_is_bound_to_its_request(browser: Browser, unconsented: RegisteredApp) -> None:
    page_a = browser.get(
        f"/{unconsented.tenant_id}/adminconsent", client_id=unconsented.client_id, redirect_uri=CALLBACK, state="a"
    )
    page_b = browser.get(
        f"/{unconsented.tenant_id}/adminconsent", client_id=unconsented.client_id, redirect_uri=CALLBACK, state="b"
    )

    # page B's URL (state=b) with page A's nonce: refused, and page A's nonce still works afterwards.
    crossed = browser.submit(page_b, read_consent_form(page_a.text).submission("accept"))
    honest = browser.decide(page_a, "accept")

    assert crossed.status_code == 400 and "Location" not in crossed.headers
    assert honest.status_code == 302 and honest.headers["Location"].endswith("state=a&admin_consent=True")


def test_tenant_outside_the_offered_ones_is_refused(
    sandbox: Sandbox, browser: Browser, unconsented: RegisteredApp
) -> None:
    other = sandbox.state.add_tenant(display_name="Not Offered")
    page = browser.get(f"/{unconsented.tenant_id}/adminconsent", client_id=unconsented.client_id, redirect_uri=CALLBACK)

    response = browser.decide(page, "accept", other)

    assert response.status_code == 400 and "Location" not in response.headers
    assert sandbox.state.find_service_principal(other, unconsented.client_id) is None


# -- encoding ----------------------------------------------------------------------------------------------


def test_state_with_special_characters_round_trips_and_existing_query_is_kept(
    sandbox: Sandbox, browser: Browser, unconsented: RegisteredApp
) -> None:
    with_query = "https://app.example.com/cb?tenant_hint=x&lang=en"
    sandbox.state.add_redirect_uri(unconsented.client_id, with_query)
    state = "a b&c=d/é?#%+\"'<>;ünï"
    page = browser.get(
        f"/{unconsented.tenant_id}/adminconsent", client_id=unconsented.client_id, redirect_uri=with_query, state=state
    )

    location = browser.decide(page, "accept").headers["Location"]

    assert location.startswith("https://app.example.com/cb?tenant_hint=x&lang=en&tenant=")
    assert parse_qs(urlsplit(location).query)["state"] == [state]
    assert [name for name, _ in _query(location)] == ["tenant_hint", "lang", "tenant", "state", "admin_consent"]


def test_reflected_values_are_html_escaped(sandbox: Sandbox, browser: Browser, unconsented: RegisteredApp) -> None:
    script = "<script>alert(1)</script>"
    state = f'"><{script}'
    consent_page = browser.get(
        f"/{unconsented.tenant_id}/v2.0/adminconsent",
        client_id=unconsented.client_id,
        redirect_uri=CALLBACK,
        scope=f"{DATAVERSE_SCOPE} {script}",
        state=state,
    )
    bad_client = browser.get(f"/{unconsented.tenant_id}/adminconsent", client_id=script, redirect_uri=CALLBACK)
    bad_redirect = browser.get(
        f"/{unconsented.tenant_id}/adminconsent",
        client_id=unconsented.client_id,
        redirect_uri=f'https://x.example/"><img src=x onerror=alert(1)>{script}',
    )
    bad_tenant = browser.get(
        "/<img src=x onerror=alert(1)>/adminconsent", client_id=unconsented.client_id, redirect_uri=CALLBACK
    )

    for page in (consent_page, bad_client, bad_redirect, bad_tenant):
        assert "<script>" not in page.text and "<img" not in page.text
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert "&lt;script&gt;" in bad_client.text and "&lt;img" in bad_redirect.text
    assert "AADSTS90002" in bad_tenant.text and "&lt;img" in bad_tenant.text
    # The escaped state still reaches the app intact.
    location = browser.decide(consent_page, "accept", unconsented.tenant_id).headers["Location"]
    assert parse_qs(urlsplit(location).query)["state"] == [state]


def test_page_is_an_accessible_form(browser: Browser, unconsented: RegisteredApp) -> None:
    page = browser.get("/common/adminconsent", client_id=unconsented.client_id, redirect_uri=CALLBACK)
    form: ConsentForm = read_consent_form(page.text)

    assert page.status_code == 200
    assert '<html lang="en">' in page.text and "<title>" in page.text
    assert '<label for="tenant">' in page.text and '<select id="tenant" name="tenant"' in page.text
    assert '<button type="submit" name="decision" value="accept">Accept</button>' in page.text
    assert "Cancel</button>" in page.text and form.decisions == ["cancel", "accept"]
    assert "Contoso Sync" in page.text and "Publisher:" in page.text
    assert "Access Dynamics 365 as organization users" in page.text
    assert form.nonce and form.action.startswith("/common/adminconsent?")


# -- the point of it all ------------------------------------------------------------------------------------


def test_after_accept_msal_gets_a_token_where_it_got_700016_before(
    sandbox: Sandbox, browser: Browser, unconsented: RegisteredApp, cca: CcaFactory
) -> None:
    before = cca(unconsented.client_id, unconsented.tenant_id, unconsented.pem_credential()).acquire_token_for_client(
        [DATAVERSE_SCOPE]
    )
    page = browser.get("/organizations/adminconsent", client_id=unconsented.client_id, redirect_uri=CALLBACK)
    browser.decide(page, "accept", unconsented.tenant_id)
    after = cca(unconsented.client_id, unconsented.tenant_id, unconsented.pem_credential()).acquire_token_for_client(
        [DATAVERSE_SCOPE]
    )

    assert before.get("error_codes") == [700016], before
    assert "access_token" in after, after


def test_add_redirect_uri_refuses_what_entra_refuses(sandbox: Sandbox, unconsented: RegisteredApp) -> None:
    for bad in (
        "http://app.example.com/cb",
        "https://app.example.com/cb#frag",
        "/relative",
        "https://app.example.com/a b",
        "https://app.example.com/" + "x" * 260,
    ):
        with pytest.raises(ValueError):
            sandbox.state.add_redirect_uri(unconsented.client_id, bad)
    sandbox.state.add_redirect_uri(unconsented.client_id, "http://localhost:7071/api/consent/callback")
    sandbox.state.add_redirect_uri(unconsented.client_id, CALLBACK)  # twice: no-op
    assert sandbox.state.get_application(unconsented.client_id).redirect_uris == (
        CALLBACK,
        "http://localhost:7071/api/consent/callback",
    )
