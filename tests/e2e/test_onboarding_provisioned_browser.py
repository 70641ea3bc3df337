"""One-click onboarding in headless Chromium (ONBOARDING_PROVISIONING): an administrator onboards an environment
that has nothing of ours — no application user, no role, no webhook — and ends on *Connected* with no manual step;
a change made in that environment then reaches the webhook receiver with the function key and the org's secret.
A run that Dataverse cut short is finished from the page's "Sign in again to finish setting up" button."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from shared.tenants.orgs import OrgStatus
from tests.e2e.test_onboarding_browser import browser, onboard, pick  # noqa: F401 - `browser` is the fixture
from tests.integration.test_onboarding_provisioning import delegated
from tests.integration.test_sandbox_webhooks import Receiver

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.stop()


def test_an_administrator_onboards_an_empty_environment_to_active_and_its_changes_arrive(
    browser,  # noqa: F811
    flow,
    receiver: Receiver,
) -> None:
    flow.use(onboarding_provisioning=True, webhook_receiver_url=receiver.url, webhook_function_key="fk-e2e")
    admin = flow.admins[flow.bare_tenant]
    onboard(browser, flow, flow.bare_org)
    pick(browser, admin)
    browser.get_by_role("button", name="Sign in").click()
    browser.wait_for_url(f"{flow.host.url}/api/consent/callback**")

    assert browser.get_by_role("heading", name="Connected").is_visible()
    assert browser.get_by_text("application_user created").is_visible()
    tenant = flow.registry.get_tenant(flow.bare_tenant)
    assert tenant.org(flow.bare_org).status is OrgStatus.ACTIVE

    st = flow.sandbox.state
    (account,) = st.seed_rows(flow.bare_org, "accounts", 1)
    delegated(flow, flow.bare_org, admin).update("accounts", account, {"name": "Changed by Grace"})
    st.wait_for_webhooks()
    (delivery,) = receiver.received
    assert delivery.headers["x-functions-key"] == "fk-e2e"
    secret = delivery.headers[flow.settings.webhook_secret_header]
    assert hashlib.sha256(secret.encode()).hexdigest() == flow.registry.webhook_secret_hash(
        flow.bare_tenant, flow.bare_org
    )
    assert delivery.json()["PrimaryEntityId"] == account


def test_a_set_up_cut_short_is_finished_with_the_pages_sign_in_again_button(
    browser,  # noqa: F811
    flow,
    receiver: Receiver,
) -> None:
    flow.use(onboarding_provisioning=True, webhook_receiver_url=receiver.url, webhook_function_key="fk-e2e")
    st = flow.sandbox.state
    admin = flow.admins[flow.bare_tenant]
    st.inject_fault("dataverse", status=503, org=flow.bare_org, endpoint="POST serviceendpoints")
    onboard(browser, flow, flow.bare_org)
    pick(browser, admin)
    browser.get_by_role("button", name="Sign in").click()
    browser.wait_for_url(f"{flow.host.url}/api/consent/callback**")
    assert browser.get_by_text("stopped at webhook_endpoint (failed)").is_visible()
    assert st.rows(flow.bare_org, "serviceendpoints") == []
    st.clear_faults("dataverse")

    # Chromium posts the button's form with our Origin (the page's referrer policy allows it) and follows the
    # start route's redirect to the authority (the page's CSP form-action allows it).
    browser.get_by_role("button", name="Sign in again to finish setting up").click()
    browser.wait_for_url(f"{flow.sandbox.authority_host}/**")
    pick(browser, admin)
    browser.get_by_role("button", name="Sign in").click()
    browser.wait_for_url(f"{flow.host.url}/api/consent/callback**")

    assert browser.get_by_role("heading", name="Connected").is_visible()
    assert browser.get_by_text("webhook_endpoint created").is_visible()
    assert browser.get_by_role("button", name="Sign in again to finish setting up").count() == 0
    assert flow.registry.get_tenant(flow.bare_tenant).org(flow.bare_org).status is OrgStatus.ACTIVE
    assert [e["url"] for e in st.rows(flow.bare_org, "serviceendpoints")] == [receiver.url]
    subscribed = sum(len(messages) for _, messages in flow.settings.webhook_subscriptions)
    assert len(st.rows(flow.bare_org, "sdkmessageprocessingsteps")) == subscribed
