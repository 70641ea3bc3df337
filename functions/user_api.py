"""The API for the app's own signed-in users: who they are, and Dataverse reads made as them (impersonation).

An app using S2S is responsible for who sees what (pad: build-web-applications-server-server-s2s-authentication):
every call validates the user's Entra token, requires the user's tenant to be an active onboarded tenant, and
reads Dataverse with the app's S2S token *impersonating* the user (``CallerObjectId`` = the token's ``oid``), so
Dataverse applies that user's own security.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING

import azure.functions as func

from functions.http_errors import json_error, request_id, storage_unavailable_is_503
from functions.services import get_services

if TYPE_CHECKING:
    from shared.signin.user_tokens import UserPrincipal
    from shared.tenants.registry import Tenant

logger = logging.getLogger(__name__)
bp = func.Blueprint()
_MAX_TOP = 50
_TOP = re.compile(r"[0-9]{1,3}")


def _unauthorized(description: str, req: func.HttpRequest) -> func.HttpResponse:
    response = json_error(401, "invalid_token", description, req)
    # RFC 6750 §3: the error and a description; no token material is echoed.
    safe = description.replace('"', "'")
    response.headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{safe}"'
    return response


def _authenticate(req: func.HttpRequest) -> tuple[UserPrincipal, Tenant] | func.HttpResponse:
    from shared.signin.user_tokens import InvalidUserTokenError

    services = get_services()
    if not services.settings.user_api_enabled:
        # USER_API_ENABLED=false: the app's role then lacks the impersonation privilege these reads need.
        return json_error(404, "user_api_disabled", "The signed-in users' API is not enabled on this app.", req)
    try:
        user = services.user_tokens.validate(req.headers.get("authorization"))
    except InvalidUserTokenError as exc:
        return _unauthorized(exc.message, req)
    settings = services.settings
    if settings.is_single_tenant and user.tenant_id != settings.entra_home_tenant_id.lower():
        return json_error(403, "tenant_not_active", "This application serves only its own organisation.", req)
    tenant = services.registry.find_tenant(user.tenant_id)
    if tenant is None or not tenant.active_org_urls:
        return json_error(403, "tenant_not_active", "Your organisation is not an active customer of this app.", req)
    return user, tenant


def _ok(body: dict[str, object], req: func.HttpRequest) -> func.HttpResponse:
    body["request_id"] = request_id(req)
    return func.HttpResponse(
        json.dumps(body), status_code=200, mimetype="application/json", headers={"Cache-Control": "no-store"}
    )


@bp.route(route="me", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@storage_unavailable_is_503("json")
def me(req: func.HttpRequest) -> func.HttpResponse:
    authenticated = _authenticate(req)
    if isinstance(authenticated, func.HttpResponse):
        return authenticated
    user, tenant = authenticated
    return _ok(
        {
            "tenant_id": user.tenant_id,
            "object_id": user.object_id,
            "name": user.name,
            "username": user.username,
            "tenant_status": tenant.status.value,
        },
        req,
    )


def _dataverse_error(exc: Exception, req: func.HttpRequest) -> func.HttpResponse:
    from shared.dataverse.errors import DataverseError, ImpersonationNotAllowedError

    if isinstance(exc, ImpersonationNotAllowedError):
        return json_error(403, exc.code, exc.message, req)
    if isinstance(exc, DataverseError):
        status = 503 if exc.is_transient else (403 if exc.status_code == 403 else 502)
        return json_error(status, exc.code, exc.message, req)
    return json_error(503, getattr(exc, "code", "unavailable"), getattr(exc, "message", "Try again later."), req)


@bp.route(route="me/whoami", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@storage_unavailable_is_503("json")
def me_whoami(req: func.HttpRequest) -> func.HttpResponse:
    from shared.errors import S2SError

    authenticated = _authenticate(req)
    if isinstance(authenticated, func.HttpResponse):
        return authenticated
    user, tenant = authenticated
    client = get_services().dataverse.for_org(tenant.tenant_id, tenant.active_org_urls[0])
    try:
        who = client.whoami(caller_object_id=user.object_id)
    except S2SError as exc:
        return _dataverse_error(exc, req)
    return _ok(
        {
            "org_url": client.org_url,
            "user_id": who.user_id,
            "business_unit_id": who.business_unit_id,
            "organization_id": who.organization_id,
        },
        req,
    )


@bp.route(route="me/accounts", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@storage_unavailable_is_503("json")
def me_accounts(req: func.HttpRequest) -> func.HttpResponse:
    from shared.errors import S2SError

    authenticated = _authenticate(req)
    if isinstance(authenticated, func.HttpResponse):
        return authenticated
    user, tenant = authenticated
    raw_top = req.params.get("top", "10")
    # Not str.isdigit: it accepts "²" (int() refuses it) and digit strings longer than int() will parse.
    if not _TOP.fullmatch(raw_top) or not 1 <= int(raw_top) <= _MAX_TOP:
        return json_error(400, "invalid_top", f"top must be a whole number from 1 to {_MAX_TOP}.", req)
    client = get_services().dataverse.for_org(tenant.tenant_id, tenant.active_org_urls[0])
    try:
        page = next(
            client.query(
                "accounts", select=["accountid", "name"], page_size=int(raw_top), caller_object_id=user.object_id
            ),
            None,
        )
    except S2SError as exc:
        return _dataverse_error(exc, req)
    rows = [] if page is None else [{"id": r.get("accountid"), "name": r.get("name")} for r in page.rows]
    return _ok({"org_url": client.org_url, "accounts": rows}, req)
