"""Entra's authorization endpoint for the OpenID Connect code flow (entra/v2-oauth2-auth-code-flow.md):
`/{tenant}/oauth2/v2.0/authorize` shows a sign-in page (the sandbox has no passwords: the person picks a user of
the tenant), takes the answer, and sends the browser back to the registered redirect URI with a single-use code
that the token endpoint (sandbox.entra.service) redeems with the PKCE verifier.

Consent happens on the same page: when the app has no service principal in the user's tenant, a user holding
one of CONSENT_ADMIN_ROLES creates it (consent for the organisation); anyone else gets Entra's "Need admin
approval" page (AADSTS90094). Until the client and redirect URI are known to be registered, every problem is an
error page, never a redirect.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from html import escape
from html.parser import HTMLParser
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from sandbox.entra import consent_page
from sandbox.entra import errors as entra_errors
from sandbox.entra.consent_page import PageError, error_response, redirect_response, with_state
from sandbox.entra.directory import CONSENT_ADMIN_ROLES, Application
from sandbox.entra.errors import EntraError
from sandbox.entra.user_tokens import SandboxUser
from sandbox.net.httpd import HttpRequest, HttpResponse

if TYPE_CHECKING:
    from sandbox.state import SandboxState

_MULTI_TENANT_ALIASES = frozenset({"common", "organizations"})
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
_CODE_LIFETIME = 600.0  # entra/v2-oauth2-auth-code-flow.md: codes are short lived, about 10 minutes
_PAGE_LIFETIME = 600.0

NONCE_FIELD = "signin_nonce"
USER_FIELD = "user"
CONSENT_FIELD = "consent_for_organization"
DECISION_FIELD = "decision"
ACCEPT = "accept"
CANCEL = "cancel"


@dataclass(frozen=True)
class AuthorizeRequest:
    """The parameters a sign-in page was shown for; its POST must repeat them exactly."""

    segment: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str | None
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str


@dataclass
class IssuedCode:
    request: AuthorizeRequest
    user: SandboxUser
    expires_at: float
    redeemed: bool = False


class AuthorizationCodes:
    """Codes waiting for the token endpoint: single use, expiring, bound to client, redirect URI and PKCE."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._codes: dict[str, IssuedCode] = {}

    def issue(self, request: AuthorizeRequest, user: SandboxUser) -> str:
        code = secrets.token_urlsafe(48)
        now = time.monotonic()
        with self._lock:
            for stale in [key for key, issued in self._codes.items() if issued.expires_at < now - _CODE_LIFETIME]:
                del self._codes[stale]
            self._codes[code] = IssuedCode(request, user, now + _CODE_LIFETIME)
        return code

    def redeem(self, code: str, *, client_id: str, redirect_uri: str, verifier: str | None) -> IssuedCode:
        """Raises EntraError: unknown or expired (70008), redeemed before (54005), issued to another client
        (70008), for another redirect URI (500112), or a verifier that does not match (501481). A code is spent by
        the first attempt that names its client, whatever the outcome.
        """
        with self._lock:
            issued = self._codes.get(code)
            if issued is None or issued.request.client_id != client_id.lower():
                raise entra_errors.authorization_code_invalid()
            if issued.redeemed:
                raise entra_errors.authorization_code_redeemed()
            issued.redeemed = True
        if issued.expires_at < time.monotonic():
            raise entra_errors.authorization_code_invalid()
        if redirect_uri != issued.request.redirect_uri:
            raise entra_errors.code_redirect_uri_mismatch()
        challenge = issued.request.code_challenge
        if challenge is not None and not _verifier_matches(
            verifier or "", challenge, issued.request.code_challenge_method
        ):
            raise entra_errors.code_verifier_mismatch()
        return issued


def _verifier_matches(verifier: str, challenge: str, method: str) -> bool:
    """RFC 7636 §4.6: S256 compares BASE64URL(SHA256(verifier)) without padding; plain compares as is."""
    if method == "S256":
        digest = hashlib.sha256(verifier.encode("ascii", errors="replace")).digest()
        computed = base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
    else:
        computed = verifier
    return bool(verifier) and hmac.compare_digest(computed, challenge)


class AuthorizeEndpoint:
    """GET shows the sign-in page, POST takes the answer; both on `/{tenant}/oauth2/v2.0/authorize`."""

    def __init__(self, state: SandboxState, codes: AuthorizationCodes) -> None:
        self._state = state
        self._codes = codes
        self._forms = consent_page.FormNonces(_PAGE_LIFETIME)

    def __call__(self, request: HttpRequest, segment: str) -> HttpResponse:
        trace_id = str(uuid.uuid4())
        try:
            parsed = self._parse(request, segment)
        except EntraError as err:  # before the redirect URI is trusted: an error page
            self._state.counters.bump("authorize_error", code=err.code)
            return error_response(f"AADSTS{err.code}: {err.message}", trace_id)
        try:
            self._check_protocol(request, parsed)
            if request.method == "POST":
                return self._decide(request, parsed)
            return self._show(request, parsed)
        except PageError as err:
            self._state.counters.bump("authorize_error", code="page")
            return error_response(err.message, trace_id)
        except EntraError as err:
            self._state.counters.bump("authorize_error", code=err.code)
            if err.code == 90094:  # Entra keeps the user on its own "Need admin approval" page
                return error_response(f"AADSTS{err.code}: {err.message}", trace_id, status=403)
            return redirect_response(parsed.redirect_uri, _error_params(err, parsed.state))

    # -- validation: tenant, client, redirect URI (errors are pages), then the rest (errors are redirects) ----

    def _parse(self, request: HttpRequest, segment: str) -> AuthorizeRequest:
        lowered = segment.lower()
        if lowered not in _MULTI_TENANT_ALIASES and self._state.find_tenant(segment) is None:
            raise entra_errors.tenant_not_found(segment)
        query = request.query
        client_id = query.get("client_id", "").strip()
        if not client_id:
            raise entra_errors.missing_parameter("client_id")
        app = self._state.find_application(client_id)
        if app is None:
            raise entra_errors.application_not_found(client_id, segment)
        redirect_uri = query.get("redirect_uri", "")
        if not redirect_uri:
            raise entra_errors.missing_parameter("redirect_uri")
        if redirect_uri not in app.redirect_uris:
            raise entra_errors.redirect_uri_mismatch(redirect_uri, app.client_id)
        return AuthorizeRequest(
            segment=lowered,
            client_id=app.client_id,
            redirect_uri=redirect_uri,
            scopes=tuple(query.get("scope", "").split()),
            state=query.get("state"),
            nonce=query.get("nonce"),
            code_challenge=query.get("code_challenge") or None,
            code_challenge_method=query.get("code_challenge_method") or "plain",
        )

    def _check_protocol(self, request: HttpRequest, parsed: AuthorizeRequest) -> None:
        response_type = request.query.get("response_type", "")
        if response_type != "code":
            raise entra_errors.unsupported_response_type(response_type)
        if "openid" not in parsed.scopes:
            raise entra_errors.openid_scope_missing()
        if parsed.code_challenge is not None and parsed.code_challenge_method not in ("S256", "plain"):
            raise entra_errors.pkce_method_not_supported(parsed.code_challenge_method)

    def _offered_users(self, parsed: AuthorizeRequest) -> list[SandboxUser]:
        if parsed.segment in _MULTI_TENANT_ALIASES:
            tenants = self._state.list_tenants()
        else:
            tenant = self._state.find_tenant(parsed.segment)
            tenants = [tenant] if tenant is not None else []
        return [user for tenant in tenants for user in self._state.list_users(tenant.tenant_id)]

    # -- GET: the page --------------------------------------------------------------------------------------

    def _show(self, request: HttpRequest, parsed: AuthorizeRequest) -> HttpResponse:
        app = self._state.get_application(parsed.client_id)
        users = self._offered_users(parsed)
        nonce = self._forms.remember(parsed, tuple(sorted({u.tenant_id for u in users})))
        self._state.counters.bump("authorize_page", client_id=parsed.client_id)
        action = f"{request.path}?{urlencode(request.query)}"
        html = render_sign_in_page(action=action, nonce=nonce, app=app, users=users, scopes=parsed.scopes)
        return HttpResponse(200, html, dict(consent_page.PAGE_HEADERS))

    # -- POST: the answer -----------------------------------------------------------------------------------

    def _decide(self, request: HttpRequest, parsed: AuthorizeRequest) -> HttpResponse:
        form = request.form()
        pending = self._redeem_page(form.get(NONCE_FIELD, ""), parsed)
        decision = form.get(DECISION_FIELD, "")
        if decision not in (ACCEPT, CANCEL):
            raise PageError("The sign-in form was submitted without a valid decision (accept or cancel).")
        if decision == CANCEL:
            raise entra_errors.user_declined()
        tenant_id, _, object_id = form.get(USER_FIELD, "").partition(":")
        user = None
        if tenant_id in pending.tenant_ids:
            user = next((u for u in self._state.list_users(tenant_id) if u.object_id == object_id), None)
        if user is None:
            raise PageError("Choose one of the accounts the sign-in page offered.")
        app = self._state.get_application(parsed.client_id)
        self._consent_if_needed(app, user, for_organization=form.get(CONSENT_FIELD) == "yes")
        code = self._codes.issue(parsed, user)
        self._state.counters.bump("authorization_code", tenant=user.tenant_id, client_id=app.client_id)
        params = [*with_state([("code", code)], parsed.state), ("session_state", str(uuid.uuid4()))]
        return redirect_response(parsed.redirect_uri, params)

    def _redeem_page(self, nonce: str, parsed: AuthorizeRequest) -> consent_page.PendingForm:
        pending = self._forms.redeem(nonce, parsed)
        if pending is None:
            raise PageError(
                "This sign-in request has expired, was already answered, or its form was not issued for this "
                "request. Start again from the application."
            )
        return pending

    def _consent_if_needed(self, app: Application, user: SandboxUser, *, for_organization: bool) -> None:
        principal = self._state.find_service_principal(user.tenant_id, app.client_id)
        if principal is not None and principal.consented:
            return
        if not CONSENT_ADMIN_ROLES.intersection(user.directory_roles):
            raise entra_errors.admin_approval_required(app.display_name)
        # An administrator's consent creates the service principal (entra/grant-admin-consent.md); the page's
        # "on behalf of your organization" box is what Entra shows them, and the sandbox records either way.
        self._state.grant_consent(user.tenant_id, app.client_id)
        self._state.counters.bump(
            "sign_in_consent", tenant=user.tenant_id, client_id=app.client_id, organization=for_organization
        )


def _error_params(err: EntraError, state: str | None) -> list[tuple[str, str]]:
    return with_state([("error", err.error), ("error_description", f"AADSTS{err.code}: {err.message}")], state)


# -- the page ----------------------------------------------------------------------------------------------


def render_sign_in_page(
    *, action: str, nonce: str, app: Application, users: list[SandboxUser], scopes: tuple[str, ...]
) -> bytes:
    """Pick an account (no passwords in the sandbox), optionally consent for the organisation, sign in."""
    options = "".join(
        f'<option value="{escape(u.tenant_id)}:{escape(u.object_id)}">'
        f"{escape(u.display_name)} ({escape(u.upn)})</option>\n"
        for u in users
    )
    asked = ", ".join(s for s in scopes if s not in OIDC_SCOPES) or "sign-in only"
    body = (
        "<h1>Sign in</h1>\n"
        f"<p>to continue to <strong>{escape(app.display_name)}</strong></p>\n"
        f'<form method="post" action="{escape(action)}">\n'
        f'<input type="hidden" name="{NONCE_FIELD}" value="{escape(nonce)}">\n'
        f'<label for="{USER_FIELD}">Account</label>\n'
        f'<select id="{USER_FIELD}" name="{USER_FIELD}" required>\n{options}</select>\n'
        f'<p class="meta">Requested: <code>{escape(asked)}</code></p>\n'
        f'<p><label><input type="checkbox" name="{CONSENT_FIELD}" value="yes" checked> '
        "Consent on behalf of your organization (administrators, when the app is not yet approved)</label></p>\n"
        '<div class="actions">\n'
        f'<button type="submit" name="{DECISION_FIELD}" value="{CANCEL}" formnovalidate>Cancel</button>\n'
        f'<button type="submit" name="{DECISION_FIELD}" value="{ACCEPT}">Sign in</button>\n'
        "</div>\n</form>\n"
        '<p class="note">Sandbox stand-in for the Microsoft Entra sign-in page: choosing an account signs in as it.'
        "</p>\n"
    )
    return consent_page.document(f"Sign in - {app.display_name}", body)


@dataclass
class SignInForm:
    """What a browser would submit from the sign-in page (for clients without a browser: tests, the demo)."""

    action: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    accounts: list[str] = field(default_factory=list)  # "<tenant id>:<object id>"

    def submission(self, decision: str = ACCEPT, *, user: SandboxUser | None = None) -> dict[str, str]:
        chosen = f"{user.tenant_id}:{user.object_id}" if user else (self.accounts[0] if self.accounts else "")
        return {**self.fields, USER_FIELD: chosen, CONSENT_FIELD: "yes", DECISION_FIELD: decision}


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.form = SignInForm()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and not self.form.action:
            self.form.action = values.get("action", "")
        elif tag == "input" and values.get("type") == "hidden" and values.get("name"):
            self.form.fields[values["name"]] = values.get("value", "")
        elif tag == "option":
            self.form.accounts.append(values.get("value", ""))


def read_sign_in_form(html: str) -> SignInForm:
    """Parse the sign-in page. Raises ValueError when the page holds no sign-in form (e.g. an error page)."""
    reader = _Reader()
    reader.feed(html)
    reader.close()
    if NONCE_FIELD not in reader.form.fields:
        raise ValueError("no sign-in form in this page")
    return reader.form
