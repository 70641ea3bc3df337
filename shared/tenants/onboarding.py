"""Onboarding a customer tenant: from the org URL an administrator types, through their sign-in, to a verified
tenant in the registry.

The administrator signs in with OpenID Connect (shared.signin.administrators) asking for the org's delegated
Dataverse scope; the sign-in is also where consent happens (protocol.md §1 "Walkthrough": "consent happens through
OIDC sign-in"; an administrator consenting for the organisation creates our service principal), so there is no
separate admin-consent callback whose ``tenant`` anyone could forge (entra/v2-admin-consent.md: never use that
parameter to authorize). Who signed in, and in which tenant, comes only from the ID token of the code exchange.
Their delegated token then proves, in the org itself, that they are its System Administrator and that the org
belongs to their tenant. Only then is anything recorded; an anonymous browser writes one expiring state row and
makes no outbound call.
"""

from __future__ import annotations

import contextlib
import logging
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from shared.auth import aadsts
from shared.auth.token_provider import TenantTokenProvider
from shared.dataverse.client import DataverseClient
from shared.dataverse.clients import DataverseClients
from shared.dataverse.errors import (
    ApplicationUserDisabledError,
    ApplicationUserMissingError,
    DataverseError,
)
from shared.dataverse.org_url import validate_org_url
from shared.errors import ConfigurationError, CredentialError, S2SError, TokenAcquisitionError
from shared.settings import Settings
from shared.signin.administrators import AdministratorSignIn, SignedInAdministrator
from shared.telemetry import dims
from shared.tenants.consent_states import ConsentStateStore
from shared.tenants.org_index import OrgIndex
from shared.tenants.orgs import OrgRecord, OrgStatus, OrgVerification
from shared.tenants.provisioning import OrgProvisioner, ProvisioningReport, ProvisioningStep, StepOutcome
from shared.tenants.registry import OrgUpdate, TenantRegistry, TenantStatus, Verification, utc_now
from shared.tenants.security_role import UnknownTableError, required_role
from shared.tenants.webhook_endpoint import WebhookRegistrar, WebhookTarget, endpoint_name, usable_key
from shared.tenants.webhook_upkeep import EndpointRemoval, WebhookUpkeep

logger = logging.getLogger(__name__)

VERIFY_QUEUE = "tenant-verification"
# Right after consent Entra may not have replicated the service principal: try briefly in the callback itself,
# then hand over to the queue (VERIFICATION_RETRY_DELAYS).
_CALLBACK_ATTEMPTS = 3
_CALLBACK_PAUSE_SECONDS = 1.0
_CONSENT_CATEGORIES = {aadsts.CONSENT_MISSING, aadsts.CONSENT_REQUIRED}
# Entra refusing *our* credential (certificate not registered, bad signature, clock) says nothing about the
# customer's tenant: every tenant fails alike until the operator fixes it, so no tenant's status moves.
_OUR_CREDENTIAL_CATEGORIES = {aadsts.CREDENTIAL_REJECTED, aadsts.ASSERTION_TIME}


# Entra refusals that hold for every org of the tenant (no consent, app disabled, no such tenant). Anything else in
# answer to the first org's token request (e.g. AADSTS500011, that org's resource unknown) is about that org
# alone: each org's own verification records it, and the tenant's other orgs are untouched.
_TENANT_WIDE_CATEGORIES = _CONSENT_CATEGORIES | {aadsts.APP_DISABLED, aadsts.TENANT_NOT_FOUND}


def _about_the_tenant(error: TokenAcquisitionError) -> bool:
    return error.category in _TENANT_WIDE_CATEGORIES or _says_nothing_about_the_tenant(error)


def _says_nothing_about_the_tenant(error: S2SError) -> bool:
    """A failure on our side or in transit: keep the tenant's status and record the failure."""
    if isinstance(error, CredentialError):  # Key Vault or certificate trouble in this worker
        return True
    if isinstance(error, TokenAcquisitionError):
        return error.is_transient or error.category in _OUR_CREDENTIAL_CATEGORIES
    return False


def _webhook_skipped(receiver_url: str | None, key: str | None) -> str | None:
    """Why onboarding registers no webhook in the org (for the administrator's page), or None when it does. The
    names are of settings, never their values."""
    if not receiver_url:
        why = "this app has no webhook receiver configured (WEBHOOK_RECEIVER_URL)"
    elif not key:
        why = (
            "this app has no usable function key for its receiver (WEBHOOK_FUNCTION_KEY is unset or an unresolved "
            "Key Vault reference)"
        )
    else:
        return None
    return (
        f"No webhook was registered: {why}. Changes in the environment are not pushed to the app; once its operator "
        "sets that, signing in here again registers the webhook."
    )


# The built-in System Administrator role has this roletemplateid in every environment (the `role` table's
# roletemplateid; Microsoft's own clients recognise the role by it, e.g. Business Central's Dataverse setup).
SYSTEM_ADMINISTRATOR_ROLE_TEMPLATE = "627090ff-40a3-4053-8790-584edc5be201"
MAX_CONTACT_LENGTH = 200


class InvalidContactError(S2SError):
    code = "invalid_contact"


class NotOrgAdministratorError(S2SError):
    """The signed-in person is not a System Administrator of the org (or not a user of it at all)."""

    code = "not_org_administrator"


class OrgCheckFailedError(S2SError):
    """The org answered the role check with a failure that is not transient (neither 401 nor 403)."""

    code = "org_check_failed"


class OrgNotInTenantError(S2SError):
    """The org does not belong to the tenant the person signed in to."""

    code = "org_not_in_tenant"


def clean_contact(text: str) -> str | None:
    """The contact field: one printable line of at most MAX_CONTACT_LENGTH characters, or None when empty.
    Raises InvalidContactError for line breaks, control or format characters, or too much text."""
    value = text.strip()
    if not value:
        return None
    if len(value) > MAX_CONTACT_LENGTH:
        raise InvalidContactError(f"The contact must be at most {MAX_CONTACT_LENGTH} characters.")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value):
        raise InvalidContactError("The contact must be one line of printable text.")
    return value


class TenantNotAllowedError(S2SError):
    """Single-tenant mode: only the home tenant may onboard."""

    code = "tenant_not_allowed"


class ConsentDeniedError(S2SError):
    """Entra returned an error instead of consent (e.g. the administrator cancelled)."""

    code = "consent_denied"

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"Entra ID returned {error}.")
        self.error = error
        self.description = description


@dataclass(frozen=True)
class OnboardingStart:
    redirect_url: str
    browser_nonce: str
    expires_at: float


@dataclass(frozen=True)
class VerificationResult:
    """``status`` is the tenant's; ``focus`` the org a person asked about (the one they onboarded or re-checked),
    whose own status decides the page they see."""

    tenant_id: str
    status: TenantStatus
    org_urls: tuple[str, ...]
    error_code: str | None = None
    message: str | None = None
    recheck_ticket: str | None = None
    orgs: tuple[OrgRecord, ...] = ()
    focus: OrgRecord | None = None
    provisioning: ProvisioningReport | None = None  # what onboarding created in the org (ONBOARDING_PROVISIONING)
    removals: tuple[EndpointRemoval, ...] = ()  # offboarding: our webhook, removed from each org or not

    def to_dict(self) -> dict[str, Any]:
        """The outcome as operators see it (the admin API and the CLI): no ticket, nothing secret."""
        return {
            "tenant_id": self.tenant_id,
            "status": self.status.value,
            "org_urls": list(self.org_urls),
            "orgs": [org.to_dict() for org in self.orgs],
            "error_code": self.error_code,
            "message": self.message,
        }

    def about(self, org_url: str, ticket: str | None = None) -> VerificationResult:
        """The same result, for the person who asked about ``org_url`` (with their re-check ticket)."""
        focus = next((org for org in self.orgs if org.url == org_url), None)
        return replace(self, focus=focus, recheck_ticket=ticket)


QueueSender = Callable[[dict[str, Any], int], None]


class OnboardingService:
    def __init__(
        self,
        settings: Settings,
        registry: TenantRegistry,
        states: ConsentStateStore,
        dataverse: DataverseClients,
        tokens: TenantTokenProvider,
        *,
        sign_in: AdministratorSignIn,
        enqueue_verification: QueueSender | None = None,
        org_index: OrgIndex | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._states = states
        self._dataverse = dataverse
        self._tokens = tokens
        self._sign_in = sign_in
        self._enqueue = enqueue_verification
        self._org_index = org_index
        self._sleep = sleep

    # -- the flow ------------------------------------------------------------------------------------------

    def start(self, org_url: str, contact: str | None) -> OnboardingStart:
        """Validate the org URL and the contact, begin the administrator's sign-in, keep its state for this
        browser. No call to the org: who owns it is learned after sign-in. Raises InvalidOrgUrlError,
        InvalidContactError, ConfigurationError."""
        redirect_uri = self._redirect_uri()
        canonical = validate_org_url(org_url, self._settings.dataverse_domain_suffixes)
        cleaned = clean_contact(contact or "")
        flow = self._sign_in.begin(canonical, redirect_uri)
        issued = self._states.issue(flow, canonical, cleaned)
        logger.info("Onboarding sign-in started for org %s", canonical, extra=dims("onboarding.started", org=canonical))
        return OnboardingStart(str(flow["auth_uri"]), issued.browser_nonce, issued.expires_at)

    def complete(self, params: Mapping[str, str], browser_nonce: str | None) -> VerificationResult:
        """Handle the sign-in answer. Raises ConsentDeniedError, ConsentStateError, SignInError,
        TenantNotAllowedError, OrgNotInTenantError, NotOrgAdministratorError; nothing about any tenant is
        recorded unless the signed-in person is a System Administrator of the org, in the org's tenant."""
        error = params.get("error")
        if error:
            # Entra's error text is shown only to the browser that started this sign-in; the state is spent so
            # the attempt cannot be replayed.
            described = False
            with contextlib.suppress(S2SError):
                self._states.redeem(params.get("state"), browser_nonce)
                described = True
            description = (params.get("error_description") or "")[:1000] if described else ""
            raise ConsentDeniedError(error[:100], description)
        consent = self._states.redeem(params.get("state"), browser_nonce)
        admin = self._sign_in.finish(consent.flow, params)
        self._check_tenant_allowed(admin.tenant_id)
        # One client for the administrator's calls in this flow: the role check, then the provisioning.
        as_admin = self._dataverse.delegated(consent.org_url, admin.dataverse_token)
        self._check_org_administrator(admin, as_admin)
        before = self._registry.find_tenant(admin.tenant_id)
        if before is None:
            reason = f"onboarded by a System Administrator of {consent.org_url} who signed in"
        elif before.status is TenantStatus.OFFBOARDED:
            reason = f"re-onboarded after offboarding by a System Administrator of {consent.org_url} who signed in"
        else:
            reason = f"{consent.org_url} connected by a System Administrator who signed in"
        self._registry.connect_org(
            admin.tenant_id,
            consent.org_url,
            actor=admin.actor,
            reason=reason,
            connected_by=admin.username,
            contact=consent.contact,
        )
        report = self._provision(admin, as_admin) if self._settings.onboarding_provisioning else None
        result = self.verify(admin.tenant_id, actor=admin.actor, fresh_consent=True, org_urls=(consent.org_url,))
        focused = replace(result.about(consent.org_url), provisioning=report)
        if focused.focus is not None and focused.focus.status is OrgStatus.AWAITING_APPLICATION_USER:
            ticket = self._registry.issue_recheck_ticket(admin.tenant_id, consent.org_url)
            focused = replace(focused, recheck_ticket=ticket)
        return focused

    def _provision(self, admin: SignedInAdministrator, client: DataverseClient) -> ProvisioningReport:
        """The app's role and application user in the org, made with the administrator's own delegated token
        (``client``, shared.tenants.provisioning); the S2S check that follows decides the org's status as before."""
        org_url = client.org_url
        try:
            role = required_role(self._settings)
        except UnknownTableError as exc:
            return ProvisioningReport(org_url, (ProvisioningStep("role", StepOutcome.FAILED, exc.message),))
        settings = self._settings
        key = usable_key(settings.webhook_function_key)
        registrar = None
        skipped = _webhook_skipped(settings.webhook_receiver_url, key)
        if settings.webhook_receiver_url and key:
            target = WebhookTarget(
                settings.webhook_receiver_url,
                key,
                settings.webhook_secret_header,
                settings.webhook_subscriptions,
                endpoint_name(settings.entra_client_id),
                settings.webhook_filtering_attributes,
            )
            has_secret = self._registry.webhook_secret_hash(admin.tenant_id, org_url) is not None
            registrar = WebhookRegistrar(
                target,
                # With the overlap: a rotation racing this issue keeps working until the next one sets it right.
                lambda: self._registry.set_webhook_secret(
                    admin.tenant_id, org_url, overlap_seconds=settings.webhook_secret_overlap_seconds, actor=admin.actor
                ),
                has_secret=has_secret,
            )
        report = OrgProvisioner(role, settings.entra_client_id, registrar).provision(client)
        return replace(report, notes=(skipped,)) if skipped else report

    def recheck(self, tenant_id: str, ticket: str, org_url: str | None = None) -> VerificationResult | None:
        """The customer's re-check with their ticket (from a POST body): verifies that org only; None when the
        ticket is not valid for it. The ticket stays as it is."""
        org = self._registry.check_recheck_ticket(tenant_id, ticket, org_url)
        if org is None:
            return None
        result = self.verify(tenant_id, actor="customer re-check", org_urls=(org,))
        return result.about(org, ticket)

    def _check_org_administrator(self, admin: SignedInAdministrator, client: DataverseClient) -> None:
        """With the person's own delegated token (``client``): the org answers (so it belongs to their tenant),
        knows them, and their security roles include System Administrator."""
        org_url = client.org_url
        try:
            who = client.whoami()
            roles = client.list_related(
                "systemusers", who.user_id, "systemuserroles_association", select=["roleid", "_roletemplateid_value"]
            )
        except ApplicationUserDisabledError as exc:  # Dataverse's answer for a disabled or unlicensed user
            raise NotOrgAdministratorError(
                f"You signed in as {admin.username}, who is disabled in {org_url} (no licence, or turned off). "
                "Sign in as an enabled System Administrator of that environment."
            ) from exc
        except DataverseError as exc:
            if exc.status_code == 401:
                raise OrgNotInTenantError(
                    f"{org_url} does not belong to the organisation you signed in to ({admin.username})."
                ) from exc
            if exc.status_code == 403:
                raise NotOrgAdministratorError(
                    f"You signed in as {admin.username}, who is not an enabled user of {org_url}. Sign in as a "
                    "System Administrator of that environment."
                ) from exc
            if not exc.is_transient:
                raise OrgCheckFailedError(
                    f"{org_url} refused the check of your role ({exc.error_code or exc.status_code}). Nothing was "
                    "recorded."
                ) from exc
            raise
        if not any(
            str(role.get("_roletemplateid_value") or "").lower() == SYSTEM_ADMINISTRATOR_ROLE_TEMPLATE for role in roles
        ):
            logger.warning("Onboarding refused: the signed-in user is not a System Administrator of %s", org_url)
            raise NotOrgAdministratorError(
                f"You signed in as {admin.username}, who does not have the System Administrator security role in "
                f"{org_url}. Ask a System Administrator of that environment to onboard it."
            )

    def verify(
        self,
        tenant_id: str,
        *,
        actor: str,
        fresh_consent: bool = False,
        attempt: int = 0,
        org_urls: tuple[str, ...] | None = None,
    ) -> VerificationResult:
        """Token, then WhoAmI on each org of the tenant (or only ``org_urls``); each org gets its own status and
        verification, the tenant the sum of them (shared.tenants.orgs). Never issues a re-check ticket: only a
        signed-in administrator's flow does. Raises TenantNotFoundError."""
        tenant = self._registry.get_tenant(tenant_id)
        if tenant.status is TenantStatus.OFFBOARDED:
            return VerificationResult(
                tenant.tenant_id,
                tenant.status,
                tenant.org_urls,
                message="The tenant is offboarded; its administrator must onboard it again to come back.",
                orgs=tenant.orgs,
            )
        if org_urls is None:  # background verification: every connected org (a disconnected one waits for its admin)
            orgs = tuple(org.url for org in tenant.orgs if org.status is not OrgStatus.DISCONNECTED)
        else:
            orgs = tuple(url for url in tenant.org_urls if url in org_urls)
        token_error = self._first_token(tenant.tenant_id, orgs[0] if orgs else None, fresh_consent)
        if token_error is not None and _about_the_tenant(token_error):
            return self._token_failed(
                tenant.tenant_id,
                current=tenant.status,
                error=token_error,
                actor=actor,
                fresh_consent=fresh_consent,
                attempt=attempt,
            )
        current: TenantStatus = tenant.status
        if current in (TenantStatus.PENDING_CONSENT, TenantStatus.FAILED, TenantStatus.CONSENT_REVOKED):
            current = self._registry.record(
                tenant.tenant_id, TenantStatus.CONSENTED, reason="app-only token obtained", actor=actor
            ).status
        updates = {org: self._verify_org(tenant.tenant_id, org) for org in orgs}
        problems = [u.verification for u in updates.values() if u.status is not OrgStatus.ACTIVE]
        if problems:
            error_code, message = problems[0].error_code, problems[0].message or ""
        else:
            error_code, message = None, "WhoAmI succeeded on every organisation."
        inconclusive = bool(updates) and all(u.status is None for u in updates.values())
        recorded = self._registry.record_verification(
            tenant.tenant_id,
            updates,
            reason=message[:300],
            actor=actor,
            verification=Verification(utc_now(), "error" if inconclusive else "", error_code, message[:500]),
        )
        return VerificationResult(
            tenant.tenant_id, recorded.status, recorded.org_urls, error_code, message, orgs=recorded.orgs
        )

    def _verify_org(self, tenant_id: str, org: str) -> OrgUpdate:
        """WhoAmI on one org as the application user: what it says about that org alone."""
        now = utc_now()
        try:
            who = self._dataverse.for_org(tenant_id, org).whoami()
        except (ApplicationUserMissingError, ApplicationUserDisabledError) as exc:
            return OrgUpdate(
                OrgStatus.AWAITING_APPLICATION_USER,
                OrgVerification(
                    now, OrgStatus.AWAITING_APPLICATION_USER.value, exc.error_code, f"{org}: {exc.message}"[:500]
                ),
            )
        except DataverseError as exc:
            # Throttling, 5xx and an unreachable org are transient: they say nothing about the org.
            code = exc.error_code or str(exc.status_code)
            status = None if exc.is_transient else OrgStatus.FAILED
            return OrgUpdate(
                status, OrgVerification(now, status.value if status else "error", code, f"{org}: {exc.message}"[:500])
            )
        except (TokenAcquisitionError, CredentialError) as exc:
            code = (
                f"AADSTS{exc.aadsts_code}" if isinstance(exc, TokenAcquisitionError) and exc.aadsts_code else exc.code
            )
            status = None if _says_nothing_about_the_tenant(exc) else OrgStatus.FAILED
            return OrgUpdate(
                status, OrgVerification(now, status.value if status else "error", code, f"{org}: {exc.message}"[:500])
            )
        if self._org_index is not None:
            # Webhooks from this org are accepted only for the organisation id WhoAmI reported.
            self._org_index.record(org, tenant_id, who.organization_id)
        return OrgUpdate(OrgStatus.ACTIVE, OrgVerification(now, OrgStatus.ACTIVE.value))

    def offboard(self, tenant_id: str, *, actor: str, reason: str) -> VerificationResult:
        """Remove our webhook from its active orgs (while the app still has access), mark the tenant offboarded
        (jobs skip it, its orgs' webhook secrets are dropped) and forget its tokens. Raises TenantNotFoundError."""
        tenant = self._registry.get_tenant(tenant_id)
        removals = WebhookUpkeep(self._settings, self._registry, self._dataverse).remove(
            tenant_id, tenant.org_urls, frozenset(tenant.active_org_urls)
        )
        # Its orgs are disconnected: coming back through one org (its System Administrator signing in) does not bring
        # the others back, and background verification leaves them alone.
        now = utc_now()
        recorded = self._registry.record_verification(
            tenant_id,
            {
                org: OrgUpdate(OrgStatus.DISCONNECTED, OrgVerification(now, "offboarded", message=reason[:500]))
                for org in tenant.org_urls
            },
            reason=reason,
            actor=actor,
            verification=Verification(now, TenantStatus.OFFBOARDED.value, message=reason[:500]),
            tenant_status=TenantStatus.OFFBOARDED,
        )
        self._tokens.forget_tenant(tenant_id.lower())
        return VerificationResult(
            recorded.tenant_id,
            recorded.status,
            recorded.org_urls,
            message=reason,
            orgs=recorded.orgs,
            removals=removals,
        )

    # -- helpers -------------------------------------------------------------------------------------------

    def _redirect_uri(self) -> str:
        if not self._settings.onboarding_redirect_uri:
            raise ConfigurationError("ONBOARDING_REDIRECT_URI", "is required for onboarding")
        return self._settings.onboarding_redirect_uri

    def _check_tenant_allowed(self, tenant_id: str) -> None:
        if self._settings.is_single_tenant and tenant_id.lower() != self._settings.entra_home_tenant_id.lower():
            raise TenantNotAllowedError(
                "This application serves only its own organisation's tenant; that environment belongs to another."
            )

    def _first_token(self, tenant_id: str, org: str | None, fresh_consent: bool) -> TokenAcquisitionError | None:
        if org is None:
            return None
        attempts = _CALLBACK_ATTEMPTS if fresh_consent else 1
        error: TokenAcquisitionError | None = None
        for attempt in range(attempts):
            try:
                self._tokens.get_token(tenant_id, org)
                return None
            except TokenAcquisitionError as exc:
                error = exc
                if exc.category not in _CONSENT_CATEGORIES or attempt + 1 == attempts:
                    break
                self._sleep(_CALLBACK_PAUSE_SECONDS)
        return error

    def _token_failed(
        self,
        tenant_id: str,
        *,
        current: TenantStatus,
        error: TokenAcquisitionError,
        actor: str,
        fresh_consent: bool,
        attempt: int,
    ) -> VerificationResult:
        code = f"AADSTS{error.aadsts_code}" if error.aadsts_code else error.error
        message = f"{error.meaning or error.message} {error.fix}".strip()
        delays = self._settings.verification_retry_delays
        requeue: dict[str, Any] | None = None
        waiting = current is TenantStatus.PENDING_CONSENT  # a fresh consent that may not have replicated yet
        if fresh_consent and waiting and (error.category in _CONSENT_CATEGORIES or error.is_transient):
            if attempt < len(delays) and self._enqueue is not None:
                # Consent takes time to replicate: keep the tenant pending and look again later, durably.
                requeue = {"tenant_id": tenant_id, "attempt": attempt + 1}
                status = TenantStatus.PENDING_CONSENT
                message = "Consent is being confirmed with Entra ID; this can take a few minutes. " + message
            else:
                status = TenantStatus.FAILED
        elif error.category in _CONSENT_CATEGORIES:
            status = TenantStatus.CONSENT_REVOKED if not waiting else TenantStatus.FAILED
        elif _says_nothing_about_the_tenant(error) or fresh_consent:
            # Nothing learned about the tenant, or an org added to a known tenant whose token is briefly refused:
            # keep its status (its working orgs go on) and record the attempt.
            status = current
        else:
            status = TenantStatus.FAILED
        verification = Verification(utc_now(), "error", code, message[:500])
        recorded = self._registry.record(
            tenant_id, status, reason=message[:300], actor=actor, verification=verification
        )
        if requeue is not None and self._enqueue is not None:
            self._enqueue(requeue, delays[attempt])  # only once the outcome is recorded
        return VerificationResult(tenant_id, recorded.status, recorded.org_urls, code, message, orgs=recorded.orgs)
