"""Onboarding a customer tenant: from the org URL an administrator types, through Entra admin consent, to a
verified tenant in the registry.

Admin consent uses the **v1 endpoint on the org's own tenant** (``{authority}/{tenant}/adminconsent``): the org's
tenant is learned first from the org's bearer challenge, so the administrator consents in the right tenant and
the callback's ``tenant`` must match it. v1 needs no scope; v2 with ``/.default`` behaves the same but needs a
scope whose best value for Dataverse is an open question (protocol.md §1, open item 5).

The callback's ``tenant`` parameter is never trusted alone: a tenant becomes ``consented`` only once an
app-only token for it is obtained, and WhoAmI on its org then decides ``active`` or
``awaiting_application_user``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from shared.auth import aadsts
from shared.auth.token_provider import TenantTokenProvider
from shared.dataverse.clients import DataverseClients
from shared.dataverse.errors import (
    ApplicationUserDisabledError,
    ApplicationUserMissingError,
    DataverseError,
)
from shared.dataverse.org_url import validate_org_url
from shared.errors import ConfigurationError, CredentialError, S2SError, TokenAcquisitionError
from shared.settings import Settings
from shared.telemetry import dims
from shared.tenants.consent_states import ConsentStateStore
from shared.tenants.org_index import OrgIndex
from shared.tenants.registry import TenantRegistry, TenantStatus, Verification, utc_now

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


def _says_nothing_about_the_tenant(error: S2SError) -> bool:
    """A failure on our side or in transit: keep the tenant's status and record the failure."""
    if isinstance(error, CredentialError):  # Key Vault or certificate trouble in this worker
        return True
    if isinstance(error, TokenAcquisitionError):
        return error.is_transient or error.category in _OUR_CREDENTIAL_CATEGORIES
    return False


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
    tenant_id: str
    status: TenantStatus
    org_urls: tuple[str, ...]
    error_code: str | None = None
    message: str | None = None
    recheck_ticket: str | None = None


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
        enqueue_verification: QueueSender | None = None,
        org_index: OrgIndex | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._states = states
        self._dataverse = dataverse
        self._tokens = tokens
        self._enqueue = enqueue_verification
        self._org_index = org_index
        self._sleep = sleep

    # -- the flow ------------------------------------------------------------------------------------------

    def start(self, org_url: str, onboarded_by: str | None) -> OnboardingStart:
        """Validate the org, learn its tenant, issue a consent state. Raises InvalidOrgUrlError,
        OrgDiscoveryError, TenantNotAllowedError, ConfigurationError."""
        redirect_uri = self._redirect_uri()
        canonical = validate_org_url(org_url, self._settings.dataverse_domain_suffixes)
        tenant = self._dataverse.discover_tenant(canonical)
        self._check_tenant_allowed(tenant)
        issued = self._states.issue(canonical, tenant, onboarded_by)
        query = urlencode(
            {"client_id": self._settings.entra_client_id, "state": issued.state, "redirect_uri": redirect_uri}
        )
        url = f"{self._settings.entra_authority_host}/{tenant}/adminconsent?{query}"
        logger.info(
            "Onboarding started for org %s in tenant %s",
            canonical,
            tenant,
            extra=dims("onboarding.started", tenant_id=tenant, org=canonical),
        )
        return OnboardingStart(url, issued.browser_nonce, issued.expires_at)

    def complete(self, params: Mapping[str, str], browser_nonce: str | None) -> VerificationResult:
        """Handle the consent callback. Raises ConsentDeniedError, ConsentStateError, TenantNotAllowedError;
        nothing is recorded unless the state checks pass."""
        error = params.get("error")
        if error:
            # Entra sends admin_consent=True even on some errors (protocol.md §1): the error decides. The state
            # is spent if it is genuinely this browser's, so the attempt cannot be replayed.
            with contextlib.suppress(S2SError):
                self._states.redeem(params.get("state"), browser_nonce, params.get("tenant") or "")
            raise ConsentDeniedError(error[:100], (params.get("error_description") or "")[:1000])
        consent = self._states.redeem(params.get("state"), browser_nonce, params.get("tenant"))
        self._check_tenant_allowed(consent.expected_tenant)
        if params.get("admin_consent", "").lower() != "true":
            raise ConsentDeniedError("consent_not_granted", "Entra did not report admin consent.")
        current = self._registry.find_tenant(consent.expected_tenant)
        if current is None or current.status is TenantStatus.OFFBOARDED:
            self._registry.record(
                consent.expected_tenant,
                TenantStatus.PENDING_CONSENT,
                reason="admin consent callback received",
                actor="consent callback",
                org_url=consent.org_url,
                onboarded_by=consent.onboarded_by,
            )
        else:
            self._registry.record(
                consent.expected_tenant,
                current.status,
                reason="another org connected",
                actor="consent callback",
                org_url=consent.org_url,
                onboarded_by=consent.onboarded_by,
            )
        return self.verify(consent.expected_tenant, actor="consent callback", fresh_consent=True)

    def verify(
        self, tenant_id: str, *, actor: str, fresh_consent: bool = False, attempt: int = 0
    ) -> VerificationResult:
        """Token + WhoAmI on every org of the tenant; records the outcome. Raises TenantNotFoundError."""
        tenant = self._registry.get_tenant(tenant_id)
        if tenant.status is TenantStatus.OFFBOARDED:
            return VerificationResult(
                tenant.tenant_id,
                tenant.status,
                tenant.org_urls,
                message="The tenant is offboarded; it must consent again to come back.",
            )
        orgs = tenant.org_urls
        token_error = self._first_token(tenant.tenant_id, orgs[0] if orgs else None, fresh_consent)
        if token_error is not None:
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
        status = TenantStatus.ACTIVE
        error_code: str | None = None
        inconclusive = False  # a failure on our side or in transit: the tenant keeps its status
        message = "WhoAmI succeeded on every organisation."
        for org in orgs:
            try:
                who = self._dataverse.for_org(tenant.tenant_id, org).whoami()
                if self._org_index is not None:
                    # Webhooks from this org are accepted only for the organisation id WhoAmI reported.
                    self._org_index.record(org, tenant.tenant_id, who.organization_id)
            except (ApplicationUserMissingError, ApplicationUserDisabledError) as exc:
                status, error_code = TenantStatus.AWAITING_APPLICATION_USER, exc.error_code
                message = f"{org}: {exc.message}"
                break
            except DataverseError as exc:
                # Throttling, 5xx and an unreachable org are transient: they say nothing about the tenant.
                inconclusive = exc.is_transient
                status = current if inconclusive else TenantStatus.FAILED
                error_code = exc.error_code or str(exc.status_code)
                message = f"{org}: {exc.message}"
                break
            except (TokenAcquisitionError, CredentialError) as exc:
                if isinstance(exc, TokenAcquisitionError) and exc.aadsts_code:
                    error_code = f"AADSTS{exc.aadsts_code}"
                else:
                    error_code = exc.code
                inconclusive = _says_nothing_about_the_tenant(exc)
                status = current if inconclusive else TenantStatus.FAILED
                message = f"{org}: {exc.message}"
                break
        verification = Verification(utc_now(), "error" if inconclusive else status.value, error_code, message[:500])
        recorded = self._registry.record(
            tenant.tenant_id, status, reason=message[:300], actor=actor, verification=verification
        )
        ticket = None
        if recorded.status is TenantStatus.AWAITING_APPLICATION_USER:
            ticket = self._registry.issue_recheck_ticket(tenant.tenant_id)
        return VerificationResult(tenant.tenant_id, recorded.status, recorded.org_urls, error_code, message, ticket)

    def offboard(self, tenant_id: str, *, actor: str, reason: str) -> VerificationResult:
        """Mark the tenant offboarded (jobs skip it) and forget its tokens. Raises TenantNotFoundError."""
        self._registry.get_tenant(tenant_id)
        recorded = self._registry.record(tenant_id, TenantStatus.OFFBOARDED, reason=reason, actor=actor)
        self._tokens.forget_tenant(tenant_id.lower())
        return VerificationResult(recorded.tenant_id, recorded.status, recorded.org_urls, message=reason)

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
        if fresh_consent and (error.category in _CONSENT_CATEGORIES or error.is_transient):
            if attempt < len(delays) and self._enqueue is not None:
                # Consent takes time to replicate: keep the tenant pending and look again later, durably.
                self._enqueue({"tenant_id": tenant_id, "attempt": attempt + 1}, delays[attempt])
                status = TenantStatus.PENDING_CONSENT
                message = "Consent is being confirmed with Entra ID; this can take a few minutes. " + message
            else:
                status = TenantStatus.FAILED
        elif error.category in _CONSENT_CATEGORIES:
            status = (
                TenantStatus.CONSENT_REVOKED if current is not TenantStatus.PENDING_CONSENT else TenantStatus.FAILED
            )
        elif _says_nothing_about_the_tenant(error):
            status = current  # nothing learned about the tenant: keep its status, record the failure
        else:
            status = TenantStatus.FAILED
        verification = Verification(utc_now(), "error", code, message[:500])
        recorded = self._registry.record(
            tenant_id, status, reason=message[:300], actor=actor, verification=verification
        )
        return VerificationResult(tenant_id, recorded.status, recorded.org_urls, code, message)
