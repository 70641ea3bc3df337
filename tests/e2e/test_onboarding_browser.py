"""Onboarding end to end in headless Chromium (Debian's package, driven by Playwright): the function app on the
development host, the sandbox's sign-in page, the registry on Azurite."""

from __future__ import annotations

import shutil

import pytest

from shared.tenants.registry import TenantStatus

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags from environment.md: no sandbox as root, and nothing that phones home on a machine without a network.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


@pytest.fixture
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which("chromium"):
        pytest.fail("Debian's chromium is not installed (make test installs it with apt-get)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        # The sandbox's Entra pages use the sandbox CA, which this throwaway profile does not know.
        context = chromium.new_context(ignore_https_errors=True)
        yield context.new_page()
        context.close()
        chromium.close()


def onboard(page, flow, org: str) -> None:
    page.goto(f"{flow.host.url}/api/onboard")
    page.get_by_label("Environment URL").fill(org)
    page.get_by_role("button", name="Sign in with Microsoft").click()
    page.wait_for_url(f"{flow.sandbox.authority_host}/**")


def pick(page, user) -> None:
    """On the sandbox's sign-in page: choose the account and sign in (or cancel)."""
    page.get_by_label("Account").select_option(f"{user.tenant_id}:{user.object_id}")


def test_the_customers_administrator_signs_in_and_ends_active(browser, flow):
    onboard(browser, flow, flow.ready_org)
    pick(browser, flow.admins[flow.ready_tenant])
    browser.get_by_role("button", name="Sign in").click()
    browser.wait_for_url(f"{flow.host.url}/api/consent/callback**")
    assert browser.get_by_role("heading", name="Connected").is_visible()
    tenant = flow.registry.get_tenant(flow.ready_tenant)
    assert tenant.status is TenantStatus.ACTIVE and tenant.onboarded_by == flow.admins[flow.ready_tenant].upn


def test_a_non_administrator_is_refused_with_the_missing_role_and_nothing_recorded(browser, flow):
    flow.sandbox.state.grant_consent(flow.ready_tenant, flow.client_id)
    onboard(browser, flow, flow.ready_org)
    pick(browser, flow.clerk)
    browser.get_by_role("button", name="Sign in").click()
    browser.wait_for_url(f"{flow.host.url}/api/consent/callback**")
    assert browser.get_by_role("heading", name="This environment cannot be connected").is_visible()
    assert "System Administrator" in browser.get_by_role("alert").inner_text()
    assert flow.registry.find_tenant(flow.ready_tenant) is None


def test_cancel_shows_the_failure_page(browser, flow):
    onboard(browser, flow, flow.ready_org)
    browser.get_by_role("button", name="Cancel").click()
    browser.wait_for_url(f"{flow.host.url}/api/consent/callback**")
    assert browser.get_by_role("heading", name="Sign-in did not complete").is_visible()
    assert flow.registry.find_tenant(flow.ready_tenant) is None


def test_missing_application_user_then_recheck(browser, flow):
    flow.use(onboarding_provisioning=False)  # the manual path: the administrator creates the application user
    onboard(browser, flow, flow.bare_org)
    pick(browser, flow.admins[flow.bare_tenant])
    browser.get_by_role("button", name="Sign in").click()
    browser.wait_for_url(f"{flow.host.url}/api/consent/callback**")
    assert browser.get_by_role("heading", name="Almost there: create the application user").is_visible()
    assert flow.registry.get_tenant(flow.bare_tenant).status is TenantStatus.AWAITING_APPLICATION_USER
    flow.sandbox.state.add_application_user(flow.bare_org, flow.client_id)
    browser.get_by_role("button", name="I have created the application user — check again").click()
    browser.wait_for_load_state()
    assert browser.get_by_role("heading", name="Connected").is_visible()
    assert flow.registry.get_tenant(flow.bare_tenant).status is TenantStatus.ACTIVE


def test_bad_url_is_shown_back_accessibly(browser, flow):
    browser.goto(f"{flow.host.url}/api/onboard")
    browser.get_by_label("Environment URL").fill("https://contoso.example.com")
    browser.get_by_role("button", name="Sign in with Microsoft").click()
    alert = browser.get_by_role("alert")
    assert "Dataverse domain" in alert.inner_text()
    assert browser.get_by_label("Environment URL").get_attribute("aria-invalid") == "true"
