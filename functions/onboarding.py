"""HTTP and queue functions of consent onboarding: the form, the consent callback, the customer's re-check, the
administrators' re-verification, and the queued re-checks of a fresh consent.

Each function only translates: parse the request, call the onboarding service, map the result or error to a page.
"""

from __future__ import annotations

import json
import logging
import re
import time
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from functions import onboarding_pages as pages
from functions.http_errors import json_error, request_id, storage_unavailable_is_503
from functions.services import get_services
from shared.telemetry import dims

if TYPE_CHECKING:
    from shared.settings import Settings
    from shared.tenants.onboarding import VerificationResult
    from shared.tenants.orgs import OrgRecord


logger = logging.getLogger(__name__)
bp = func.Blueprint()

COOKIE = "s2s_onboarding"
_MAX_FORM_BYTES = 4096
# An OAuth error code (RFC 6749 section 4.1.2.1: access_denied, invalid_request, …).
_OAUTH_ERROR = re.compile(r"[a-z_]{1,64}")


def _form(req: func.HttpRequest) -> dict[str, str]:
    body = req.get_body() or b""
    if len(body) > _MAX_FORM_BYTES:
        raise ValueError("form too large")
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True, max_num_fields=10))


def _cookie(req: func.HttpRequest) -> str | None:
    raw = req.headers.get("cookie")
    if not raw:
        return None
    try:
        jar = SimpleCookie(raw)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel else None


@bp.route(route="onboard", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def onboard_form(req: func.HttpRequest) -> func.HttpResponse:
    settings = get_services().settings
    return pages.onboard_form(
        settings.app_display_name, settings.entra_client_id, settings.entra_authority_host, role=_role(settings)
    )


def _role(settings: Settings) -> tuple[str, tuple[tuple[str, str, str], ...]] | None:
    """The security role onboarding creates, for the form; None when it does not provision (or cannot name it)."""
    from shared.tenants.security_role import UnknownTableError, required_role

    if not settings.onboarding_provisioning:
        return None
    try:
        role = required_role(settings)
    except UnknownTableError:
        return None
    return role.name, tuple((p.name, p.depth, "; ".join(p.reasons)) for p in role.privileges)


def _own_origin(settings: Settings) -> str | None:
    """The app's origin (scheme://host[:port]), from ONBOARDING_REDIRECT_URI: the only page that may post the form."""
    if not settings.onboarding_redirect_uri:
        return None
    parts = urlsplit(settings.onboarding_redirect_uri)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _same_origin(req: func.HttpRequest, settings: Settings) -> bool:
    """A browser's form post carries Origin (or, at least, Referer): it must be our own origin. A request that
    carries neither is refused too: every browser we serve sends Origin on a POST (the Fetch standard)."""
    own = _own_origin(settings)
    origin = req.headers.get("origin")
    if origin is None:
        referer = urlsplit(req.headers.get("referer") or "")
        origin = f"{referer.scheme}://{referer.netloc}" if referer.scheme and referer.netloc else None
    return own is not None and origin is not None and origin.strip().lower() == own


@bp.route(route="onboard", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@storage_unavailable_is_503("html")
def onboard_start(req: func.HttpRequest) -> func.HttpResponse:
    from shared.dataverse.org_url import InvalidOrgUrlError
    from shared.signin.administrators import SignInError
    from shared.tenants.onboarding import InvalidContactError

    services = get_services()
    settings = services.settings

    def form_again(
        message: str, code: str, org_url: str = "", contact: str = "", status: int = 400
    ) -> func.HttpResponse:
        return pages.onboard_form(
            settings.app_display_name,
            settings.entra_client_id,
            settings.entra_authority_host,
            org_url=org_url,
            contact=contact,
            error=message,
            error_code=code,
            status=status,
            role=_role(settings),
        )

    if not _same_origin(req, settings):
        logger.warning("Onboarding form post refused: not from this app's own origin")
        return form_again("The form must be sent from this page.", "cross_site_request", status=403)
    try:
        form = _form(req)
    except ValueError:
        return form_again("The form could not be read.", "invalid_form")
    org_url = form.get("org_url", "")[:300]
    contact = form.get("contact", "")[:1000]
    try:
        started = services.onboarding.start(org_url, contact)
    except (InvalidOrgUrlError, InvalidContactError) as exc:
        return form_again(exc.message, exc.code, org_url, contact[:200])
    except SignInError as exc:  # Entra's metadata could not be read: nothing was stored
        logger.warning("Onboarding could not start a sign-in: %s", exc.code)
        return pages.unavailable_page(exc.message, error_code=exc.code)
    max_age = max(1, int(started.expires_at - time.time()))
    cookie = f"{COOKIE}={started.browser_nonce}; Max-Age={max_age}; Path=/api; Secure; HttpOnly; SameSite=Lax"
    # The only redirect target is the configured authority's authorize endpoint, built by MSAL.
    return func.HttpResponse(
        status_code=302,
        headers={
            "Location": started.redirect_url,
            "Set-Cookie": cookie,
            **pages.SECURITY_HEADERS,
        },
    )


@bp.route(route="consent/callback", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@storage_unavailable_is_503("html")
def consent_callback(req: func.HttpRequest) -> func.HttpResponse:
    """Where Entra sends the administrator back after sign-in (ONBOARDING_REDIRECT_URI)."""
    from shared.dataverse.errors import DataverseError
    from shared.signin.administrators import SignInError
    from shared.tenants.consent_states import ConsentStateError
    from shared.tenants.onboarding import (
        ConsentDeniedError,
        NotOrgAdministratorError,
        OrgCheckFailedError,
        OrgNotInTenantError,
        TenantNotAllowedError,
    )

    services = get_services()
    settings = services.settings
    params = {k: str(v)[:2000] for k, v in req.params.items()}
    clear_cookie = {"Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/api; Secure; HttpOnly; SameSite=Lax"}
    try:
        result = services.onboarding.complete(params, _cookie(req))
    except ConsentDeniedError as exc:
        # Entra's error code names what happened (access_denied, consent_required, …); anything else a caller put
        # in the query is not logged.
        error = exc.error if _OAUTH_ERROR.fullmatch(exc.error) else "unrecognised"
        logger.info("Sign-in callback: Entra returned %s", error, extra=dims("onboarding.callback", outcome=error))
        # Only Entra's own error codes are shown; anything else from the query string is not echoed.
        response = pages.consent_error_page(error, exc.description)
    except ConsentStateError as exc:
        logger.warning("Sign-in callback refused: %s", exc.reason, extra=dims("onboarding.callback", outcome=exc.code))
        return pages.invalid_state_page(exc.reason, error_code=exc.code, ttl_seconds=settings.consent_state_ttl_seconds)
    except SignInError as exc:
        logger.warning("Sign-in callback refused: %s", exc.code, extra=dims("onboarding.callback", outcome=exc.code))
        response = pages.refused_page(exc.message, error_code=exc.code, status=400)
    except (TenantNotAllowedError, OrgNotInTenantError, NotOrgAdministratorError, OrgCheckFailedError) as exc:
        logger.info("Sign-in callback refused: %s", exc.code, extra=dims("onboarding.callback", outcome=exc.code))
        response = pages.refused_page(exc.message, error_code=exc.code)
    except DataverseError as exc:
        logger.warning(
            "Onboarding could not check the administrator's role: %s",
            exc.error_code or exc.status_code,
            extra=dims("onboarding.callback", outcome="org_unavailable"),
        )
        response = pages.unavailable_page(
            "Your environment could not be reached to check your role. Please try again.",
            error_code="org_unavailable",
        )
    else:
        logger.info(
            "Sign-in callback for tenant %s: %s",
            result.tenant_id,
            result.status,
            extra=dims(
                "onboarding.callback",
                tenant_id=result.tenant_id,
                org=result.org_urls[0] if len(result.org_urls) == 1 else None,
                outcome=str(result.status),
                error_code=result.error_code,
            ),
        )
        response = _result_page(settings, result)
    response.headers.update(clear_cookie)
    return response


def _result_page(settings: Settings, result: VerificationResult) -> func.HttpResponse:
    """The page a person sees: about the org they onboarded or re-checked (``focus``) when there is one, so a
    second environment that still lacks our application user is explained without hiding the working ones."""
    from shared.tenants.orgs import OrgStatus
    from shared.tenants.registry import TenantStatus

    app_name = settings.app_display_name
    focus = result.focus
    report = result.provisioning
    provisioned = report.summary() if report is not None else None
    if result.status is TenantStatus.PENDING_CONSENT:
        return pages.pending_page(result.message or "")
    if focus is not None:
        retry = _retry(settings, focus, unfinished=report is not None and not report.complete)
        if focus.status is OrgStatus.ACTIVE and result.status is TenantStatus.ACTIVE:
            return pages.active_page(app_name, result.tenant_id, (focus.url,), provisioned=provisioned, retry=retry)
        if focus.status is OrgStatus.AWAITING_APPLICATION_USER:
            verification = focus.last_verification
            return pages.awaiting_page(
                app_name,
                settings.entra_client_id,
                result.tenant_id,
                focus.url,
                detail=(verification.message if verification else None) or result.message or "",
                ticket=result.recheck_ticket,
                ticket_expires=focus.ticket_expires,
                provisioned=provisioned,
                retry=retry,
            )
        verification = focus.last_verification
        return pages.failed_page(
            (verification.message if verification else None) or result.message or "",
            provisioned=provisioned,
            retry=retry,
        )
    if result.status is TenantStatus.ACTIVE:
        return pages.active_page(app_name, result.tenant_id, result.org_urls)
    if result.status is TenantStatus.AWAITING_APPLICATION_USER and result.org_urls:
        return pages.awaiting_page(
            app_name,
            settings.entra_client_id,
            result.tenant_id,
            result.org_urls[0],
            detail=result.message or "",
            ticket=result.recheck_ticket,
        )
    return pages.failed_page(result.message or "")


def _retry(settings: Settings, focus: OrgRecord, *, unfinished: bool) -> pages.Retry | None:
    """The "sign in again" offer for the org a person asked about, when onboarding provisions and the set-up there
    stopped (``unfinished``) or its application user is still missing (a re-check finds the org still waiting: the
    re-check keeps no administrator token, a new sign-in does the set-up). Its form carries the org URL and the
    contact the org has, and goes through the start route's own origin check."""
    from shared.tenants.orgs import OrgStatus

    if not settings.onboarding_provisioning:
        return None
    if not unfinished and focus.status is not OrgStatus.AWAITING_APPLICATION_USER:
        return None
    return pages.Retry(focus.url, focus.contact, settings.entra_authority_host)


@bp.route(route="onboard/recheck", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def recheck_form(req: func.HttpRequest) -> func.HttpResponse:
    """The page where a customer pastes the re-check code they were given; nothing is read from the URL (a
    ticket never travels in a query string)."""
    return pages.recheck_page()


@bp.route(route="onboard/recheck", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@storage_unavailable_is_503("html")
def recheck(req: func.HttpRequest) -> func.HttpResponse:
    from shared.settings import is_guid

    services = get_services()
    try:
        form = _form(req)
    except ValueError:
        return pages.invalid_state_page("missing", error_code="invalid_form")
    tenant, ticket, org = form.get("tenant", "").strip(), form.get("ticket", "").strip(), form.get("org", "").strip()
    result = None
    if is_guid(tenant) and ticket and len(ticket) <= 200 and len(org) <= 300:
        result = services.onboarding.recheck(tenant, ticket, org or None)
    if result is None:
        return pages.invalid_state_page("unknown", error_code="invalid_recheck_ticket")
    return _result_page(services.settings, result)


@bp.route(route="tenants/{tenant_id}/verify", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
@storage_unavailable_is_503("json")
def verify_tenant(req: func.HttpRequest) -> func.HttpResponse:
    """Operators only (the host's master key): re-verify a tenant now and return the outcome as JSON."""
    from shared.settings import is_guid
    from shared.tenants.registry import TenantNotFoundError

    tenant_id = req.route_params.get("tenant_id", "")
    if not is_guid(tenant_id):
        return json_error(400, "invalid_tenant", "The tenant id must be a GUID.", req)
    services = get_services()
    try:
        result = services.onboarding.verify(tenant_id, actor="admin API")
    except TenantNotFoundError as exc:
        return json_error(404, exc.code, exc.message, req)
    body = {**result.to_dict(), "request_id": request_id(req)}
    return func.HttpResponse(json.dumps(body), status_code=200, mimetype="application/json")


@bp.queue_trigger(arg_name="msg", queue_name="tenant-verification", connection="AzureWebJobsStorage")
def verify_tenant_from_queue(msg: func.QueueMessage) -> None:
    """Re-checks a fresh consent that Entra had not replicated yet; re-enqueues itself while attempts remain."""
    from shared.settings import is_guid
    from shared.tenants.registry import TenantNotFoundError

    try:
        payload = json.loads(msg.get_body().decode("utf-8"))
        tenant_id = str(payload["tenant_id"])
        attempt = int(payload.get("attempt", 1))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        logger.error("Dropping malformed tenant-verification message %s", msg.id)
        return
    if not is_guid(tenant_id):
        logger.error("Dropping tenant-verification message %s: tenant id is not a GUID", msg.id)
        return
    try:
        result = get_services().onboarding.verify(
            tenant_id, actor=f"queued re-check {attempt}", fresh_consent=True, attempt=attempt
        )
    except TenantNotFoundError:
        logger.warning("Tenant %s vanished before its queued re-check", tenant_id)
        return
    logger.info(
        "Queued re-check %d of tenant %s: %s",
        attempt,
        tenant_id,
        result.status,
        extra=dims(
            "onboarding.recheck",
            tenant_id=tenant_id,
            outcome=str(result.status),
            error_code=result.error_code,
            attempt=attempt,
        ),
    )
