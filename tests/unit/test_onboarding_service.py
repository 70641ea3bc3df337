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
THIRD_ORG = "https://contoso-uat.crm11.dynamics.com"  # the customer's, never connected: what the attacker names


class FakeDataverse(FakeOrgs):
    """Org owners and users for delegated calls; which orgs have our application user for app-only calls."""

    def __init__(self) -> None:
        super().__init__()
        self.with_application_user: set[str] = set()
        self.discovered: list[str] = []
        self.token_refusals: dict[str, Exception] = {}

    def for_org(self, tenant_id: str, org_url: str, *, bulk: bool = False) -> FakeAppOnlyClient:
        client = FakeAppOnlyClient(org_url, org_url in self.with_application_user)
        refusal = self.token_refusals.get(org_url)
        if refusal is not None:  # the real client asks for the token on its first call
            client.whoami = lambda caller_object_id=None: (_ for _ in ()).throw(refusal)  # type: ignore[method-assign]
        return client

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
            # The manual path (the fallback): the org waits for an application user its administrator creates.
            # Provisioning is proved against the sandbox (tests/integration/test_onboarding_provisioning.py).
            onboarding_provisioning=False,
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
        for org, owner in (
            (WORKING_ORG, CUSTOMER),
            (SECOND_ORG, CUSTOMER),
            (THIRD_ORG, CUSTOMER),
            (FOREIGN_ORG, OTHER),
        ):
            self.dataverse.add(org, owner)
        for org in (WORKING_ORG, SECOND_ORG, THIRD_ORG):
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

    def begin(org: str = THIRD_ORG) -> tuple[str, str]:
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
    waiting = world.onboard(SECOND_ORG, world.admin)  # no application user there yet: the customer holds a ticket
    assert waiting.recheck_ticket
    before = world.snapshot()
    drive, error = _attempts(world)[attempt]
    with pytest.raises(error):
        drive()
    assert world.snapshot() == before  # every row and history entry, the sealed tickets and secrets included
    tenant = world.registry.get_tenant(CUSTOMER)
    assert tenant.status is TenantStatus.ACTIVE and tenant.org_urls == (WORKING_ORG, SECOND_ORG)
    assert tenant.contact == "ops@contoso.example"
    assert world.registry.check_recheck_ticket(CUSTOMER, waiting.recheck_ticket) == SECOND_ORG


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


def test_offboarding_disconnects_every_org_so_one_org_does_not_bring_the_others_back(world: World):
    world.onboard(WORKING_ORG, world.admin)
    world.dataverse.with_application_user.add(SECOND_ORG)
    world.onboard(SECOND_ORG, world.admin)
    assert world.registry.get_tenant(CUSTOMER).active_org_urls == (WORKING_ORG, SECOND_ORG)
    world.service.offboard(CUSTOMER, actor="operator", reason="contract ended")
    offboarded = world.registry.get_tenant(CUSTOMER)
    assert offboarded.active_org_urls == ()
    assert {org.status.value for org in offboarded.orgs} == {"disconnected"}
    world.onboard(WORKING_ORG, world.admin)
    back = world.registry.get_tenant(CUSTOMER)
    assert back.status is TenantStatus.ACTIVE and back.active_org_urls == (WORKING_ORG,)
    assert back.org(SECOND_ORG).status.value == "disconnected"
    world.service.verify(CUSTOMER, actor="health job")  # background verification leaves a disconnected org alone
    assert world.registry.get_tenant(CUSTOMER).org(SECOND_ORG).status.value == "disconnected"


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


class RefusingTokens(FakeTokens):
    """Entra refusing the app-only token for some resources."""

    def __init__(self, refusals: dict[str, Exception]) -> None:
        super().__init__()
        self.refusals = refusals

    def get_token(self, tenant_id: str, resource: str) -> str:
        self.requests.append((tenant_id, resource))
        if resource in self.refusals:
            raise self.refusals[resource]
        return "app-token"


def _refusal(code: int, category: str, *, transient: bool = False) -> Exception:
    from shared.errors import TokenAcquisitionError

    return TokenAcquisitionError(
        f"AADSTS{code}", tenant_id=CUSTOMER, aadsts_code=code, category=category, is_transient=transient
    )


def test_a_transient_entra_error_while_adding_an_org_keeps_the_active_tenant_and_queues_nothing(world: World):
    world.onboard(WORKING_ORG, world.admin)
    world.dataverse.with_application_user.add(SECOND_ORG)
    refusal = _refusal(90033, "service_unavailable", transient=True)
    world.service._tokens = RefusingTokens({SECOND_ORG: refusal})  # type: ignore[assignment]
    result = world.onboard(SECOND_ORG, world.admin)  # no exception, no 500
    tenant = world.registry.get_tenant(CUSTOMER)
    assert tenant.status is TenantStatus.ACTIVE and tenant.active_org_urls == (WORKING_ORG,)
    assert result.error_code == "AADSTS90033" and world.enqueued == []


def test_a_fresh_consent_still_replicating_is_requeued_once_recorded(world: World):
    refusal = _refusal(700016, "consent_missing")
    world.service._tokens = RefusingTokens({WORKING_ORG: refusal})  # type: ignore[assignment]
    result = world.onboard(WORKING_ORG, world.admin)
    assert result.status is TenantStatus.PENDING_CONSENT
    assert world.enqueued and world.enqueued[0][0] == {"tenant_id": CUSTOMER, "attempt": 1}


def test_a_token_refused_for_one_orgs_resource_fails_that_org_only(world: World):
    world.dataverse.with_application_user.add(SECOND_ORG)
    world.onboard(WORKING_ORG, world.admin)
    world.onboard(SECOND_ORG, world.admin)
    refusal = _refusal(500011, "unknown")  # that org's resource is unknown to Entra: nothing about the tenant
    world.service._tokens = RefusingTokens({WORKING_ORG: refusal})  # type: ignore[assignment]
    world.dataverse.token_refusals[WORKING_ORG] = refusal
    world.service.verify(CUSTOMER, actor="health job")
    tenant = world.registry.get_tenant(CUSTOMER)
    assert tenant.status is TenantStatus.ACTIVE and tenant.active_org_urls == (SECOND_ORG,)
    assert tenant.org(WORKING_ORG).status.value == "failed"


def test_a_disabled_or_unlicensed_administrator_is_refused_with_a_4xx_code_and_nothing_recorded(world: World):
    world.dataverse.disabled.add((WORKING_ORG, world.admin.object_id))
    with pytest.raises(NotOrgAdministratorError, match="disabled"):
        world.onboard(WORKING_ORG, world.admin)
    assert world.tenants.rows == {}


def test_a_contact_typed_when_adding_an_org_stays_on_that_org(world: World):
    world.onboard(WORKING_ORG, world.admin, "ops@contoso.example")
    world.dataverse.with_application_user.add(SECOND_ORG)
    world.onboard(SECOND_ORG, world.admin, "someone@else.example")
    tenant = world.registry.get_tenant(CUSTOMER)
    assert tenant.contact == "ops@contoso.example"  # the tenant's own contact is not overwritten
    assert tenant.org(SECOND_ORG).contact == "someone@else.example"
    assert tenant.org(SECOND_ORG).connected_by == "admin@contoso.example"
