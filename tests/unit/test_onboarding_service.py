"""The onboarding service with fakes for Entra (the sign-in) and Dataverse: only a completed sign-in of the org's
own System Administrator changes a tenant, and every forged or skipped step leaves every registry row, history
entry, state row and re-check ticket exactly as it was (threat model, trust boundary 1)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest

from shared.errors import S2SError
from shared.settings import AppMode, Settings
from shared.signin.administrators import SignInError
from shared.tenants.consent_states import ConsentStateError, ConsentStateStore
from shared.tenants.onboarding import (
    ConsentDeniedError,
    InvalidContactError,
    NotOrgAdministratorError,
    OnboardingService,
    OrgNotInTenantError,
    TenantNotAllowedError,
)
from shared.tenants.registry import TenantRegistry, TenantStatus
from tests.unit.fake_onboarding import FakeAppOnlyClient, FakeOrgs, FakeSignIn, FakeTokens, Person
from tests.unit.fake_table import FakeTable

HOME = str(uuid.uuid4())
CUSTOMER = str(uuid.uuid4())
OTHER = str(uuid.uuid4())
WORKING_ORG = "https://contoso.crm.dynamics.com"
SECOND_ORG = "https://contoso-test.crm4.dynamics.com"  # the customer's, no application user yet
FOREIGN_ORG = "https://fabrikam.crm.dynamics.com"  # belongs to OTHER


class FakeDataverse(FakeOrgs):
    """Org owners and users for delegated calls; which orgs have our application user for app-only calls."""

    def __init__(self) -> None:
        super().__init__()
        self.with_application_user: set[str] = set()
        self.discovered: list[str] = []

    def for_org(self, tenant_id: str, org_url: str, *, bulk: bool = False) -> FakeAppOnlyClient:
        return FakeAppOnlyClient(org_url, org_url in self.with_application_user)

    def discover_tenant(self, org_url: str) -> str:
        self.discovered.append(org_url)
        return self.owners[org_url]


class World:
    def __init__(self, mode: AppMode = AppMode.MULTI_TENANT) -> None:
        self.settings = Settings(
            entra_client_id=str(uuid.uuid4()),
            entra_home_tenant_id=HOME,
            key_vault_url="https://kv.vault.azure.net",
            key_vault_certificate_name="c",
            onboarding_redirect_uri="https://app.example/api/consent/callback",
            app_mode=mode,
        )
        self.tenants, self.history, self.state_rows = FakeTable(), FakeTable(), FakeTable()
        self.registry = TenantRegistry(self.tenants, self.history)
        self.states = ConsentStateStore(self.state_rows, 600)
        self.dataverse = FakeDataverse()
        self.sign_in = FakeSignIn()
        self.tokens = FakeTokens()
        self.enqueued: list[Any] = []
        self.service = OnboardingService(
            self.settings,
            self.registry,
            self.states,
            self.dataverse,  # type: ignore[arg-type]
            self.tokens,  # type: ignore[arg-type]
            sign_in=self.sign_in,  # type: ignore[arg-type]
            enqueue_verification=lambda message, delay: self.enqueued.append((message, delay)),
            sleep=lambda seconds: None,
        )
        self.admin = Person(CUSTOMER, username="admin@contoso.example")
        self.clerk = Person(CUSTOMER, username="clerk@contoso.example")
        self.foreigner = Person(OTHER, username="admin@fabrikam.example")
        for org, owner in ((WORKING_ORG, CUSTOMER), (SECOND_ORG, CUSTOMER), (FOREIGN_ORG, OTHER)):
            self.dataverse.add(org, owner)
        for org in (WORKING_ORG, SECOND_ORG):
            self.dataverse.add_user(org, self.admin, administrator=True)
            self.dataverse.add_user(org, self.clerk, administrator=False)
        self.dataverse.add_user(FOREIGN_ORG, self.foreigner, administrator=True)
        self.dataverse.with_application_user.add(WORKING_ORG)

    def onboard(self, org: str, person: Person, contact: str | None = None) -> Any:
        """The whole flow as the administrator's browser goes through it."""
        started = self.service.start(org, contact)
        state = started.redirect_url.split("state=")[1]
        code = self.sign_in.sign_in(state, person)
        return self.service.complete({"code": code, "state": state}, started.browser_nonce)

    def snapshot(self) -> dict[str, Any]:
        """Every row that matters for a customer, to compare before and after an attempt."""
        return copy.deepcopy(
            {"tenants": self.tenants.rows, "history": self.history.rows, "enqueued": list(self.enqueued)}
        )


@pytest.fixture
def world() -> World:
    return World()


def test_start_makes_no_outbound_call_and_writes_one_expiring_state(world: World):
    started = world.service.start(WORKING_ORG, "ops@contoso.example")
    assert started.redirect_url.startswith("https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize?")
    assert world.dataverse.calls == [] and world.dataverse.discovered == [] and world.tokens.requests == []
    assert len(world.state_rows.rows) == 1 and world.tenants.rows == {}
    (row,) = world.state_rows.rows.values()
    assert row["ExpiresAt"] <= started.expires_at


@pytest.mark.parametrize("contact", ["a\nb", "x\r\nSet-Cookie: y", "\x1b[31mred", "a\u2028b", "z" * 201])
def test_a_contact_that_is_not_one_printable_line_is_refused_before_any_write(world: World, contact: str):
    with pytest.raises(InvalidContactError):
        world.service.start(WORKING_ORG, contact)
    assert world.state_rows.rows == {} and world.sign_in.begun == []


def test_the_org_administrator_onboards_and_is_named_in_the_history(world: World):
    result = world.onboard(WORKING_ORG, world.admin, "ops@contoso.example")
    assert result.status is TenantStatus.ACTIVE
    tenant = world.registry.get_tenant(CUSTOMER)
    assert tenant.org_urls == (WORKING_ORG,) and tenant.contact == "ops@contoso.example"
    assert tenant.onboarded_by == "admin@contoso.example"
    actors = {h.actor for h in world.registry.history(CUSTOMER)}
    assert actors == {f"signed-in administrator {world.admin.object_id} (admin@contoso.example)"}


def _attempts(world: World) -> dict[str, Any]:
    """Each forged or skipped step: a callable that drives it and the error it must end in."""

    def begin(org: str = SECOND_ORG) -> tuple[str, str]:
        started = world.service.start(org, "attacker text")
        return started.redirect_url.split("state=")[1], started.browser_nonce

    def forged_admin_consent_callback() -> None:  # the attack of the issue: no sign-in at all
        state, cookie = begin()
        world.service.complete({"admin_consent": "True", "tenant": CUSTOMER, "state": state}, cookie)

    def state_from_another_browser() -> None:
        state, _ = begin()
        world.service.complete({"code": world.sign_in.sign_in(state, world.admin), "state": state}, "other-cookie")

    def replayed_code() -> None:
        state, cookie = begin()
        code = world.sign_in.sign_in(state, world.admin)
        world.sign_in.codes.pop(code)  # redeemed once already: Entra answers AADSTS54005/70008
        world.service.complete({"code": code, "state": state}, cookie)

    def code_of_another_flow() -> None:
        other_state, _ = begin()
        state, cookie = begin()
        world.service.complete({"code": world.sign_in.sign_in(other_state, world.admin), "state": state}, cookie)

    def id_token_of_another_tenant() -> None:
        state, cookie = begin()
        world.service.complete({"code": world.sign_in.sign_in(state, world.foreigner), "state": state}, cookie)

    def not_an_administrator() -> None:
        state, cookie = begin()
        world.service.complete({"code": world.sign_in.sign_in(state, world.clerk), "state": state}, cookie)

    def a_stranger_to_the_org() -> None:
        state, cookie = begin()
        stranger = Person(CUSTOMER, username="someone@contoso.example")
        world.service.complete({"code": world.sign_in.sign_in(state, stranger), "state": state}, cookie)

    def entra_error_with_a_valid_state() -> None:
        state, cookie = begin()
        world.service.complete({"error": "access_denied", "error_description": "x", "state": state}, cookie)

    return {
        "forged admin-consent callback": (forged_admin_consent_callback, SignInError),
        "state from another browser": (state_from_another_browser, ConsentStateError),
        "replayed code": (replayed_code, SignInError),
        "code of another flow": (code_of_another_flow, SignInError),
        "ID token of another tenant": (id_token_of_another_tenant, OrgNotInTenantError),
        "not an administrator": (not_an_administrator, NotOrgAdministratorError),
        "not a user of the org": (a_stranger_to_the_org, NotOrgAdministratorError),
        "Entra error": (entra_error_with_a_valid_state, ConsentDeniedError),
    }


@pytest.mark.parametrize("attempt", list(_attempts(World())))
def test_every_forged_or_skipped_step_leaves_an_active_customer_exactly_as_it_was(world: World, attempt: str):
    world.onboard(WORKING_ORG, world.admin, "ops@contoso.example")
    ticket_before = world.tenants.rows[("tenant", CUSTOMER)].get("RecheckTicketHash")
    before = world.snapshot()
    drive, error = _attempts(world)[attempt]
    with pytest.raises(error):
        drive()
    assert world.snapshot() == before
    tenant = world.registry.get_tenant(CUSTOMER)
    assert tenant.status is TenantStatus.ACTIVE and tenant.org_urls == (WORKING_ORG,)
    assert tenant.contact == "ops@contoso.example"
    assert world.tenants.rows[("tenant", CUSTOMER)].get("RecheckTicketHash") == ticket_before


@pytest.mark.parametrize("attempt", list(_attempts(World())))
def test_no_forged_step_creates_a_tenant_that_never_signed_in(world: World, attempt: str):
    drive, error = _attempts(world)[attempt]
    with pytest.raises(error):
        drive()
    assert world.tenants.rows == {} and world.history.rows == {} and world.enqueued == []


def test_an_offboarded_tenant_comes_back_only_through_its_signed_in_administrator(world: World):
    world.onboard(WORKING_ORG, world.admin)
    world.service.offboard(CUSTOMER, actor="operator", reason="contract ended")
    before = world.snapshot()
    state_cookie = world.service.start(WORKING_ORG, None)
    state = state_cookie.redirect_url.split("state=")[1]
    with pytest.raises(SignInError):
        world.service.complete(
            {"admin_consent": "True", "tenant": CUSTOMER, "state": state}, state_cookie.browser_nonce
        )
    assert world.snapshot() == before and world.registry.get_tenant(CUSTOMER).status is TenantStatus.OFFBOARDED

    assert world.onboard(WORKING_ORG, world.admin).status is TenantStatus.ACTIVE
    back = world.registry.history(CUSTOMER)
    reentry = next(h for h in back if h.from_status == "offboarded")
    assert reentry.to_status == "pending_consent" and "re-onboarded after offboarding" in reentry.reason
    assert world.admin.object_id in reentry.actor and "admin@contoso.example" in reentry.actor


def test_single_tenant_mode_refuses_another_tenant_after_sign_in_and_records_nothing():
    world = World(AppMode.SINGLE_TENANT)
    with pytest.raises(TenantNotAllowedError):
        world.onboard(WORKING_ORG, world.admin)
    assert world.tenants.rows == {} and world.dataverse.calls == []


def test_an_error_answer_is_described_only_to_the_browser_that_started(world: World):
    started = world.service.start(WORKING_ORG, None)
    state = started.redirect_url.split("state=")[1]
    params = {"error": "access_denied", "error_description": "AADSTS65004: declined", "state": state}
    with pytest.raises(ConsentDeniedError) as stranger:
        world.service.complete(params, "not-the-cookie")
    assert stranger.value.description == ""
    with pytest.raises(ConsentDeniedError) as own:
        world.service.complete(params, started.browser_nonce)
    assert own.value.description.startswith("AADSTS65004")
    with pytest.raises(S2SError):  # spent: the answer cannot be replayed
        world.service.complete({"code": "c", "state": state}, started.browser_nonce)


def test_offboarding_puts_every_org_back_to_pending_so_one_org_does_not_bring_the_others_back(world: World):
    world.onboard(WORKING_ORG, world.admin)
    world.dataverse.with_application_user.add(SECOND_ORG)
    world.onboard(SECOND_ORG, world.admin)
    assert world.registry.get_tenant(CUSTOMER).active_org_urls == (WORKING_ORG, SECOND_ORG)
    world.service.offboard(CUSTOMER, actor="operator", reason="contract ended")
    offboarded = world.registry.get_tenant(CUSTOMER)
    assert offboarded.active_org_urls == ()
    assert {org.status.value for org in offboarded.orgs} == {"pending_verification"}
    world.onboard(WORKING_ORG, world.admin)
    back = world.registry.get_tenant(CUSTOMER)
    assert back.status is TenantStatus.ACTIVE and back.active_org_urls == (WORKING_ORG,)
    assert back.org(SECOND_ORG).status.value == "pending_verification"


def test_a_second_org_without_application_user_gets_its_own_ticket_and_never_demotes_the_first(world: World):
    world.onboard(WORKING_ORG, world.admin)
    result = world.onboard(SECOND_ORG, world.admin)
    assert result.focus is not None and result.focus.url == SECOND_ORG
    assert result.focus.status.value == "awaiting_application_user" and result.recheck_ticket
    tenant = world.registry.get_tenant(CUSTOMER)
    assert tenant.status is TenantStatus.ACTIVE and tenant.active_org_urls == (WORKING_ORG,)
    assert world.registry.check_recheck_ticket(CUSTOMER, result.recheck_ticket) == SECOND_ORG
    world.service.verify(CUSTOMER, actor="health job")  # background: the ticket stays, no new one
    assert world.registry.check_recheck_ticket(CUSTOMER, result.recheck_ticket) == SECOND_ORG
    assert world.service.recheck(CUSTOMER, "wrong", None) is None
    world.dataverse.with_application_user.add(SECOND_ORG)
    checked = world.service.recheck(CUSTOMER, result.recheck_ticket, None)
    assert checked is not None and checked.focus is not None and checked.focus.status.value == "active"
