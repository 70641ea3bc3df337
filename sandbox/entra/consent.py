"""Entra's admin-consent endpoint (protocol §1), v1 `/{tenant}/adminconsent` and v2 `/{tenant}/v2.0/adminconsent`:
GET shows the consent page, POST takes the administrator's decision and redirects back to the app.

Until the client and its redirect URI are known to be registered, every problem is an error page (HTTP 400)
and never a redirect: sending a response to an unregistered URI would hand the flow to whoever wrote the link.
The POST must carry the page's nonce, which is single use, expires, and is bound to the request's parameters.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from sandbox.entra import consent_page
from sandbox.entra import errors as entra_errors
from sandbox.entra.consent_page import PageError, error_response, redirect_response, with_state
from sandbox.entra.directory import Application, Tenant
from sandbox.entra.errors import EntraError
from sandbox.identifiers import SandboxLookupError
from sandbox.net.httpd import HttpRequest, HttpResponse

if TYPE_CHECKING:
    from sandbox.state import SandboxState

logger = logging.getLogger(__name__)

_MULTI_TENANT_ALIASES = frozenset({"common", "organizations"})
_NONCE_LIFETIME = 600.0  # seconds a consent page stays answerable, like an Entra sign-in flow token

# protocol §1, redirect shapes (entra/v2-oauth2-client-creds-grant-flow.md, entra/v2-admin-consent.md).
_V1_DECLINED = ("permission_denied", "The admin canceled the request")
_V2_DECLINED = ("consent_required", "AADSTS65004: User declined to consent to access the app.")


@dataclass(frozen=True)
class _ConsentRequest:
    """The parameters a consent page was shown for; a POST must repeat them exactly."""

    v2: bool
    segment: str  # the {tenant} path segment, lower-cased
    client_id: str
    redirect_uri: str
    state: str | None
    scope: str | None


class AdminConsentEndpoint:
    """Serves GET and POST on both admin-consent paths of one authority host."""

    def __init__(self, state: SandboxState) -> None:
        self._state = state
        self._forms = consent_page.FormNonces(_NONCE_LIFETIME)

    def __call__(self, request: HttpRequest, segment: str, *, v2: bool) -> HttpResponse:
        trace_id = str(uuid.uuid4())
        try:
            consent = self._parse(request, segment, v2=v2)
            if request.method == "POST":
                return self._decide(request, consent)
            return self._show(request, consent)
        except EntraError as err:
            self._state.counters.bump("admin_consent_error", code=err.code)
            logger.debug("admin consent %s -> AADSTS%s", request.path, err.code)
            return error_response(f"AADSTS{err.code}: {err.message}", trace_id)
        except PageError as err:
            self._state.counters.bump("admin_consent_error", code="page")
            return error_response(err.message, trace_id)

    # -- validation, in Entra's order: tenant, client, redirect URI, then the rest ------------------------

    def _parse(self, request: HttpRequest, segment: str, *, v2: bool) -> _ConsentRequest:
        lowered = segment.lower()
        if lowered not in _MULTI_TENANT_ALIASES and self._state.find_tenant(segment) is None:
            raise entra_errors.tenant_not_found(segment)
        if v2 and lowered == "common":
            raise entra_errors.admin_consent_common_not_allowed()
        query = request.query
        client_id = query.get("client_id", "").strip()
        if not client_id:
            raise entra_errors.missing_parameter("client_id")
        app = self._state.find_application(client_id)
        if app is None:
            raise entra_errors.application_not_found(client_id, self._directory_name(segment))
        redirect_uri = query.get("redirect_uri", "")
        if not redirect_uri:
            raise entra_errors.missing_parameter("redirect_uri")
        if redirect_uri not in app.redirect_uris:
            raise entra_errors.redirect_uri_mismatch(redirect_uri, app.client_id)
        scope = query.get("scope")
        if v2 and not (scope or "").strip():
            raise entra_errors.missing_parameter("scope")
        return _ConsentRequest(
            v2=v2,
            segment=lowered,
            client_id=app.client_id,
            redirect_uri=redirect_uri,
            state=query.get("state"),
            scope=scope if v2 else None,
        )

    def _directory_name(self, segment: str) -> str:
        tenant = self._state.find_tenant(segment)
        return tenant.display_name if tenant else segment

    def _offered_tenants(self, consent: _ConsentRequest) -> list[Tenant]:
        if consent.segment in _MULTI_TENANT_ALIASES:
            return self._state.list_tenants()
        tenant = self._state.find_tenant(consent.segment)
        if tenant is None:  # removed since _parse
            raise entra_errors.tenant_not_found(consent.segment)
        return [tenant]

    # -- GET: the page ----------------------------------------------------------------------------------

    def _show(self, request: HttpRequest, consent: _ConsentRequest) -> HttpResponse:
        app = self._state.get_application(consent.client_id)
        tenants = self._offered_tenants(consent)
        nonce = self._forms.remember(consent, tuple(t.tenant_id for t in tenants))
        self._state.counters.bump(
            "admin_consent_page", client_id=consent.client_id, version="2.0" if consent.v2 else "1.0"
        )
        html = consent_page.render_consent_page(
            action=self._same_url(request),
            nonce=nonce,
            app=app,
            publisher=self._publisher(app),
            tenants=tenants,
            fixed_tenant=consent.segment not in _MULTI_TENANT_ALIASES,
            scope=consent.scope,
        )
        return HttpResponse(200, html, dict(consent_page.PAGE_HEADERS))

    @staticmethod
    def _same_url(request: HttpRequest) -> str:
        return f"{request.path}?{urlencode(request.query)}" if request.query else request.path

    def _publisher(self, app: Application) -> Tenant | None:
        try:
            return self._state.get_tenant(app.home_tenant)
        except SandboxLookupError:
            return None

    # -- POST: the decision -----------------------------------------------------------------------------

    def _decide(self, request: HttpRequest, consent: _ConsentRequest) -> HttpResponse:
        form = request.form()
        pending = self._redeem(form.get(consent_page.NONCE_FIELD, ""), consent)
        decision = form.get(consent_page.DECISION_FIELD, "")
        if decision not in (consent_page.ACCEPT, consent_page.CANCEL):
            raise PageError("The consent form was submitted without a valid decision (accept or cancel).")
        chosen = form.get(consent_page.TENANT_FIELD) or (pending.tenant_ids[0] if len(pending.tenant_ids) == 1 else "")
        tenant = self._state.find_tenant(chosen) if chosen else None
        if tenant is None or tenant.tenant_id not in pending.tenant_ids:
            raise PageError("Choose one of the tenants the consent page offered.")

        if decision == consent_page.ACCEPT:
            try:
                self._state.grant_consent(tenant.tenant_id, consent.client_id)
            except SandboxLookupError as exc:  # tenant or app deleted while the page was open
                raise entra_errors.tenant_not_found(tenant.tenant_id) from exc
            params = self._granted(consent, tenant)
        else:
            params = self._declined(consent)
        self._state.counters.bump(
            "admin_consent", tenant=tenant.tenant_id, client_id=consent.client_id, decision=decision
        )
        logger.debug("admin consent for %s in tenant %s: %s", consent.client_id, tenant.tenant_id, decision)
        return redirect_response(consent.redirect_uri, params)

    def _redeem(self, nonce: str, consent: _ConsentRequest) -> consent_page.PendingForm:
        """Take the nonce out of the store (single use); it must belong to these very parameters."""
        pending = self._forms.redeem(nonce, consent)
        if pending is None:
            raise PageError(
                "This consent request has expired, was already answered, or its form was not issued for this "
                "request. Start the admin consent again from the application."
            )
        return pending

    @staticmethod
    def _granted(consent: _ConsentRequest, tenant: Tenant) -> list[tuple[str, str]]:
        if consent.v2:
            params = [("admin_consent", "True"), ("tenant", tenant.tenant_id), ("scope", consent.scope or "")]
            return with_state(params, consent.state)
        return [*with_state([("tenant", tenant.tenant_id)], consent.state), ("admin_consent", "True")]

    @staticmethod
    def _declined(consent: _ConsentRequest) -> list[tuple[str, str]]:
        if consent.v2:
            error, description = _V2_DECLINED
            # Entra's v2 endpoint sends admin_consent=True on errors too (protocol §1).
            return with_state(
                [("admin_consent", "True"), ("error", error), ("error_description", description)], consent.state
            )
        error, description = _V1_DECLINED
        return with_state([("error", error), ("error_description", description)], consent.state)
