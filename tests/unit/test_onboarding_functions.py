"""Onboarding HTTP functions with a fake onboarding service: escaping, cookies, redirects, error pages."""

from __future__ import annotations

import dataclasses
import html
import re
from dataclasses import dataclass, field

import azure.functions as func
import pytest

from functions import onboarding as fn
from shared.bootstrap import use_services
from shared.dataverse.errors import DataverseError
from shared.dataverse.org_url import InvalidOrgUrlError
from shared.settings import Settings
from shared.signin.administrators import SignInError
from shared.tenants.consent_states import ConsentStateError
from shared.tenants.onboarding import (
    ConsentDeniedError,
    InvalidContactError,
    NotOrgAdministratorError,
    OnboardingStart,
    OrgNotInTenantError,
    TenantNotAllowedError,
    VerificationResult,
)
from shared.tenants.orgs import OrgRecord, OrgStatus, OrgVerification
from shared.tenants.registry import TenantStatus

CLIENT = "11111111-2222-3333-4444-555555555555"
TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
XSS = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
AUTHORITY_REDIRECT = f"https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize?client_id={CLIENT}&state=s"
APP = "https://app.example"


@dataclass
class FakeOnboarding:
    start_error: Exception | None = None
    complete_result: VerificationResult | None = None
    complete_error: Exception | None = None
    calls: list = field(default_factory=list)

    def start(self, org_url, contact):
        self.calls.append(("start", org_url, contact))
        if self.start_error:
            raise self.start_error
        return OnboardingStart(AUTHORITY_REDIRECT, "nonce-123", 9e12)

    def complete(self, params, nonce):
        self.calls.append(("complete", dict(params), nonce))
        if self.complete_error:
            raise self.complete_error
        return self.complete_result

    def verify(self, tenant_id, actor):
        self.calls.append(("verify", tenant_id, actor))
        return self.complete_result

    ticket_valid: bool = True

    def recheck(self, tenant_id, ticket, org_url):
        self.calls.append(("recheck", tenant_id, ticket, org_url))
        return self.complete_result if self.ticket_valid else None


class FakeRegistry:
    def __init__(self, valid=True):
        self.valid = valid

    def check_recheck_ticket(self, tenant, ticket):
        return self.valid


class FakeServices:
    def __init__(self, onboarding, registry=None):
        self.settings = Settings(
            entra_client_id=CLIENT,
            entra_home_tenant_id=TENANT,
            key_vault_url="https://kv.vault.azure.net",
            key_vault_certificate_name="c",
            app_display_name="Contoso <Sync>",
            onboarding_redirect_uri=f"{APP}/api/consent/callback",
        )
        self.onboarding = onboarding
        self.registry = registry or FakeRegistry()


@pytest.fixture
def fake():
    onboarding = FakeOnboarding()
    use_services(FakeServices(onboarding))
    yield onboarding
    use_services(None)


def request(method, path, *, params=None, body=b"", headers=None):
    return func.HttpRequest(
        method, f"http://localhost/api/{path}", params=params or {}, body=body, headers=headers or {}
    )


def text(resp):
    return resp.get_body().decode()


def post_form(body: bytes, headers: dict[str, str] | None = None):
    """The onboarding form as a browser on our own page posts it (with Origin)."""
    return fn.onboard_start(request("POST", "onboard", body=body, headers={"origin": APP, **(headers or {})}))


def test_form_page_is_accessible_and_locked_down(fake):
    resp = fn.onboard_form(request("GET", "onboard"))
    body = text(resp)
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert '<label for="org_url">' in body and 'lang="en"' in body
    assert "Contoso &lt;Sync&gt;" in body and "Contoso <Sync>" not in body
    assert CLIENT in body
    assert "script-src" not in resp.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    # The form posts to us and its answer redirects to the authority: both are allowed form targets, nothing else.
    assert "form-action 'self' https://login.microsoftonline.com;" in resp.headers["Content-Security-Policy"]


def test_bad_org_url_is_shown_back_escaped_with_the_reason(fake):
    fake.start_error = InvalidOrgUrlError("The organisation URL must start with https://.")
    resp = post_form(f"org_url={XSS}&contact={XSS}".encode())
    body = text(resp)
    assert resp.status_code == 400
    assert "must start with https://" in body and 'role="alert"' in body
    assert "<script" not in body and "<img" not in body
    assert html.escape(XSS, quote=True) in body
    assert "Location" not in resp.headers


def test_a_contact_that_is_not_one_printable_line_is_refused(fake):
    fake.start_error = InvalidContactError("The contact must be one line of printable text.")
    resp = post_form(b"org_url=https://x.crm.dynamics.com&contact=a%0D%0Ab")
    assert resp.status_code == 400 and "one line of printable text" in text(resp)
    assert 'data-error-code="invalid_contact"' in text(resp) and "Set-Cookie" not in resp.headers


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"referer": "https://evil.example/api/onboard"},
        {"origin": "https://app.example.evil.example"},
        {"origin": "http://app.example"},
    ],
)
def test_a_cross_site_form_post_is_refused_before_anything_happens(fake, headers):
    resp = fn.onboard_start(request("POST", "onboard", body=b"org_url=https://x.crm.dynamics.com", headers=headers))
    assert resp.status_code == 403 and 'data-error-code="cross_site_request"' in text(resp)
    assert fake.calls == [] and "Location" not in resp.headers and "Set-Cookie" not in resp.headers


def test_a_same_origin_referer_is_enough_when_origin_is_absent(fake):
    resp = fn.onboard_start(
        request(
            "POST", "onboard", body=b"org_url=https://x.crm.dynamics.com", headers={"referer": f"{APP}/api/onboard"}
        )
    )
    assert resp.status_code == 302 and fake.calls[0][0] == "start"


def test_start_redirects_only_to_the_authority_with_a_locked_cookie(fake):
    resp = post_form(b"org_url=https://fab.crm.dynamics.com&contact=a@b.example")
    assert resp.status_code == 302
    assert resp.headers["Location"] == AUTHORITY_REDIRECT
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("s2s_onboarding=nonce-123;")
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/api", "Max-Age="):
        assert attribute in cookie
    assert fake.calls[0] == ("start", "https://fab.crm.dynamics.com", "a@b.example")


def test_oversized_form_is_refused(fake):
    resp = post_form(b"org_url=" + b"a" * 10_000)
    assert resp.status_code == 400 and fake.calls == []


def test_callback_passes_the_cookie_and_shows_success(fake):
    fake.complete_result = VerificationResult(TENANT, TenantStatus.ACTIVE, ("https://fab.crm.dynamics.com",))
    resp = fn.consent_callback(
        request(
            "GET",
            "consent/callback",
            params={"code": "c0de", "state": "s"},
            headers={"cookie": "other=1; s2s_onboarding=nonce-123"},
        )
    )
    assert resp.status_code == 200 and "is connected" in text(resp)
    assert fake.calls[0][2] == "nonce-123"
    assert "Max-Age=0" in resp.headers["Set-Cookie"]
    assert "Location" not in resp.headers


def test_awaiting_page_tells_exactly_what_to_do(fake):
    fake.complete_result = VerificationResult(
        TENANT, TenantStatus.AWAITING_APPLICATION_USER, ("https://fab.crm.dynamics.com",), "0x80072560", XSS, "ticket-1"
    )
    body = text(fn.consent_callback(request("GET", "consent/callback", params={"state": "s"})))
    assert "Application users" in body and "custom security role" in body and CLIENT in body
    assert "/api/data/v9.2/systemusers" in body
    assert 'action="/api/onboard/recheck"' in body and "ticket-1" in body
    assert "<script" not in body and "<img" not in body


def test_the_page_is_about_the_org_just_onboarded_not_the_tenants_summary(fake):
    working, new = "https://fab.crm.dynamics.com", "https://fab-test.crm4.dynamics.com"
    orgs = (
        OrgRecord(working, OrgStatus.ACTIVE, "t"),
        OrgRecord(
            new,
            OrgStatus.AWAITING_APPLICATION_USER,
            "t",
            OrgVerification("t", "awaiting_application_user", "0x80072560", "no application user"),
            ticket_expires=2_000_000_000,
        ),
    )
    fake.complete_result = VerificationResult(
        TENANT, TenantStatus.ACTIVE, (working, new), orgs=orgs, recheck_ticket="ticket-2"
    ).about(new, "ticket-2")
    body = text(fn.consent_callback(request("GET", "consent/callback", params={"state": "s", "code": "c"})))
    assert "Almost there" in body and new in body and "keep working" in body
    assert 'name="org" value="https://fab-test.crm4.dynamics.com"' in body and "ticket-2" in body
    assert "2033-05-18" in body  # the ticket's expiry, shown as a date
    assert "/api/onboard/recheck?" not in body  # the ticket never goes into a URL


def test_recheck_form_reads_nothing_from_the_url(fake):
    body = text(fn.recheck_form(request("GET", "onboard/recheck", params={"tenant": TENANT, "ticket": "leaked"})))
    assert "leaked" not in body and 'name="ticket"' in body and 'method="post"' in body


@pytest.mark.parametrize("reason", ["missing", "unknown", "expired", "replayed", "other_browser"])
def test_each_invalid_state_gets_a_clear_400(fake, reason):
    fake.complete_error = ConsentStateError(reason, "x")
    resp = fn.consent_callback(request("GET", "consent/callback", params={"state": XSS, "tenant": XSS}))
    assert resp.status_code == 400 and "Nothing was recorded" in text(resp)
    assert "<script" not in text(resp)


def test_entra_error_shows_its_code_with_a_fixed_explanation_and_its_text_only_when_given(fake):
    fake.complete_error = ConsentDeniedError("access_denied", f"AADSTS65004: User declined {XSS}\r\nTrace ID: t")
    resp = fn.consent_callback(request("GET", "consent/callback", params={"error": "access_denied", "state": "s"}))
    body = text(resp)
    assert resp.status_code == 400 and "access_denied" in body and "was cancelled" in body
    assert "AADSTS65004" in body and "Trace ID" not in body
    assert "<script" not in body and "<img" not in body
    fake.complete_error = ConsentDeniedError(XSS, "")  # no valid state: the caller passes no free text
    body = text(fn.consent_callback(request("GET", "consent/callback", params={"error": XSS})))
    assert "Microsoft said" not in body and "did not complete" in body and "<script" not in body


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (SignInError("The sign-in could not be verified.", code="id_token_invalid"), 400, "id_token_invalid"),
        (
            NotOrgAdministratorError("You signed in as x, who does not have the System Administrator role."),
            403,
            "not_org_administrator",
        ),
        (
            OrgNotInTenantError("https://x.crm.dynamics.com does not belong to your organisation."),
            403,
            "org_not_in_tenant",
        ),
        (
            TenantNotAllowedError("This application serves only its own organisation's tenant."),
            403,
            "tenant_not_allowed",
        ),
    ],
)
def test_a_refused_sign_in_says_why_with_a_code_and_records_nothing(fake, error, status, code):
    fake.complete_error = error
    resp = fn.consent_callback(request("GET", "consent/callback", params={"code": "c", "state": "s"}))
    assert resp.status_code == status and f'data-error-code="{code}"' in text(resp)
    assert "Nothing was recorded" in text(resp) and "Max-Age=0" in resp.headers["Set-Cookie"]


def test_an_org_that_cannot_be_reached_during_the_role_check_is_a_503_to_retry(fake):
    fake.complete_error = DataverseError("timeout", org_url="https://x.crm.dynamics.com", status_code=503)
    resp = fn.consent_callback(request("GET", "consent/callback", params={"code": "c", "state": "s"}))
    assert resp.status_code == 503 and 'data-error-code="org_unavailable"' in text(resp)


def test_no_callback_answer_redirects_anywhere(fake):
    fake.complete_result = VerificationResult(TENANT, TenantStatus.ACTIVE, ("https://fab.crm.dynamics.com",))
    for params in ({"redirect_uri": "https://evil.example"}, {"next": "//evil.example"}, {"state": "https://evil"}):
        resp = fn.consent_callback(request("GET", "consent/callback", params=params))
        assert "Location" not in resp.headers
        assert not re.search(r'href="(https?:)?//', text(resp))


def test_recheck_needs_a_valid_ticket_sent_in_the_body(fake):
    fake.ticket_valid = False
    resp = fn.recheck(request("POST", "onboard/recheck", body=f"tenant={TENANT}&ticket=nope".encode()))
    assert resp.status_code == 400 and 'data-error-code="invalid_recheck_ticket"' in text(resp)
    fake.ticket_valid = True
    fake.complete_result = VerificationResult(TENANT, TenantStatus.ACTIVE, ("https://fab.crm.dynamics.com",))
    resp = fn.recheck(
        request(
            "POST", "onboard/recheck", body=f"tenant={TENANT}&ticket=good&org=https://fab.crm.dynamics.com".encode()
        )
    )
    assert resp.status_code == 200
    assert fake.calls[-1] == ("recheck", TENANT, "good", "https://fab.crm.dynamics.com")
    calls = len(fake.calls)
    assert fn.recheck(request("POST", "onboard/recheck", body=b"tenant=../../etc&ticket=good")).status_code == 400
    assert (
        fn.recheck(request("POST", "onboard/recheck", params={"tenant": TENANT, "ticket": "good"})).status_code == 400
    )
    assert len(fake.calls) == calls  # neither reached the service


def test_admin_verify_is_admin_level_and_validates_the_id(fake):
    import json

    app = func.FunctionApp()
    app.register_functions(fn.bp)
    triggers = {f.get_function_name(): json.loads(f.get_function_json())["bindings"][0] for f in app.get_functions()}
    assert triggers["verify_tenant"]["authLevel"] == "ADMIN"
    assert triggers["verify_tenant"]["route"] == "tenants/{tenant_id}/verify"
    assert all(
        triggers[name]["authLevel"] == "ANONYMOUS" for name in ("onboard_form", "onboard_start", "consent_callback")
    )
    resp = fn.verify_tenant(
        func.HttpRequest("POST", "/api/tenants/x/verify", body=b"", route_params={"tenant_id": "x"})
    )
    assert resp.status_code == 400 and json.loads(resp.get_body())["error"]["code"] == "invalid_tenant"


# -- "Sign in again to finish setting up" (ONBOARDING_PROVISIONING) -------------------------------------------

ORG = "https://fab-test.crm4.dynamics.com"
CONTACT = "ops+<fab>@fabrikam.example"


def _report(*steps):
    from shared.tenants.provisioning import ProvisioningReport, ProvisioningStep, StepOutcome

    return ProvisioningReport(ORG, tuple(ProvisioningStep(n, StepOutcome(o), d) for n, o, d in steps))


def _about(status, org_status, *, report=None, ticket=None, contact=CONTACT):
    verification = OrgVerification("t", org_status.value, "0x80072560", "no application user")
    orgs = (OrgRecord(ORG, org_status, "t", verification, ticket_expires=2_000_000_000, contact=contact),)
    result = VerificationResult(TENANT, status, (ORG,), orgs=orgs).about(ORG, ticket)
    return dataclasses.replace(result, provisioning=report)


def retry_fields(body: str) -> dict[str, str]:
    """The hidden fields of the page's retry form (the one that posts to the start route), unescaped."""
    match = re.search(r'<form method="post" action="/api/onboard" class="retry">(.*?)</form>', body, re.S)
    assert match, "the page has no retry form"
    assert "Sign in again to finish setting up" in match.group(1)
    return {
        k: html.unescape(v) for k, v in re.findall(r'type="hidden" name="([a-z_]+)" value="([^"]*)"', match.group(1))
    }


def test_a_stopped_set_up_offers_to_sign_in_again_for_the_same_org_through_the_form_checks(fake):
    fake.complete_result = _about(
        TenantStatus.AWAITING_APPLICATION_USER,
        OrgStatus.AWAITING_APPLICATION_USER,
        report=_report(("role", "created", ""), ("application_user", "failed", "Dataverse answered 0x80040216: x")),
        ticket="ticket-3",
    )
    resp = fn.consent_callback(request("GET", "consent/callback", params={"code": "c", "state": "s"}))
    body = text(resp)
    assert resp.status_code == 200 and "stopped at application_user (failed)" in body
    # Only the org and its contact travel in the retry form: no ticket, no token, no state.
    assert retry_fields(body) == {"org_url": ORG, "contact": CONTACT}
    # The fallbacks stay: the manual steps and the re-check with the ticket.
    assert "Or create the application user by hand" in body and "/api/data/v9.2/systemusers" in body
    assert 'action="/api/onboard/recheck"' in body and "ticket-3" in body
    # The browser must send our Origin with the post (not "null", as under no-referrer), and the CSP must let the
    # start route's answer redirect to the authority, as on the form page.
    assert resp.headers["Referrer-Policy"] == "strict-origin"
    assert "form-action 'self' https://login.microsoftonline.com;" in resp.headers["Content-Security-Policy"]

    fields = retry_fields(body)
    posted = "&".join(f"{k}={v}" for k, v in fields.items()).replace("+", "%2B").encode()
    started = post_form(posted)  # from our own page: Origin is ours
    assert started.status_code == 302 and started.headers["Location"] == AUTHORITY_REDIRECT
    assert fake.calls[-1] == ("start", ORG, CONTACT)
    calls = len(fake.calls)
    for headers in ({"origin": "https://evil.example"}, {"origin": "null"}):
        refused = fn.onboard_start(request("POST", "onboard", body=posted, headers=headers))
        assert refused.status_code == 403 and 'data-error-code="cross_site_request"' in text(refused)
    assert len(fake.calls) == calls  # the cross-site copies never reached the service


def test_a_connected_org_whose_set_up_did_not_finish_offers_the_retry_and_a_finished_one_does_not(fake):
    fake.complete_result = _about(
        TenantStatus.ACTIVE,
        OrgStatus.ACTIVE,
        report=_report(
            ("role_assignment", "created", ""), ("webhook_endpoint", "failed", "Dataverse answered 503: busy")
        ),
    )
    resp = fn.consent_callback(request("GET", "consent/callback", params={"code": "c", "state": "s"}))
    body = text(resp)
    assert "Your environment is connected" in body and "stopped at webhook_endpoint (failed)" in body
    assert retry_fields(body) == {"org_url": ORG, "contact": CONTACT}

    fake.complete_result = _about(
        TenantStatus.ACTIVE, OrgStatus.ACTIVE, report=_report(("webhook_steps", "updated", ""))
    )
    done = fn.consent_callback(request("GET", "consent/callback", params={"code": "c", "state": "s"}))
    assert "Provisioned in" in text(done) and 'action="/api/onboard"' not in text(done)
    assert done.headers["Referrer-Policy"] == "no-referrer"
    assert "login.microsoftonline.com" not in done.headers["Content-Security-Policy"]


def test_a_recheck_that_finds_the_org_still_waiting_offers_the_sign_in_only_when_onboarding_provisions(fake):
    fake.complete_result = _about(
        TenantStatus.AWAITING_APPLICATION_USER, OrgStatus.AWAITING_APPLICATION_USER, ticket="good", contact=""
    )
    body = f"tenant={TENANT}&ticket=good&org={ORG}".encode()
    waiting = text(fn.recheck(request("POST", "onboard/recheck", body=body)))
    assert retry_fields(waiting) == {"org_url": ORG, "contact": ""}
    assert "can create its security role, application user and webhook" in waiting
    assert "Or create the application user by hand" in waiting

    services = FakeServices(fake)
    services.settings = dataclasses.replace(services.settings, onboarding_provisioning=False)
    use_services(services)
    manual = text(fn.recheck(request("POST", "onboard/recheck", body=body)))
    assert 'action="/api/onboard"' not in manual and "Sign in again" not in manual
    assert "Create the application user" in manual and 'action="/api/onboard/recheck"' in manual
