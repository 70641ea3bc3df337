"""HTML of the admin-consent stand-in: the consent form, the error page, and `read_consent_form` for clients
without a browser (tests, the demo) that GET the page and POST the decision with plain `requests`. The error page,
the redirect back to the app and the form nonces are shared with the sign-in page (sandbox.entra.authorize).

The form POSTs `application/x-www-form-urlencoded` to the page's own URL with these fields:
- `consent_nonce`: hidden, single use, bound to the request's parameters (sandbox.entra.consent);
- `tenant`: the consenting tenant's GUID; a `<select>` at /common and /organizations, hidden otherwise;
- `decision`: `accept` or `cancel`, carried by the two submit buttons.
Every value the request supplied is HTML-escaped before it is written into a page.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from html import escape
from html.parser import HTMLParser
from urllib.parse import urlencode, urlsplit, urlunsplit

from sandbox.entra.directory import Application, Tenant
from sandbox.net.httpd import HttpResponse

NONCE_FIELD = "consent_nonce"
TENANT_FIELD = "tenant"
DECISION_FIELD = "decision"
ACCEPT = "accept"
CANCEL = "cancel"

# protocol §1: the registration asks for Dynamics CRM `user_impersonation`, shown under this name.
PERMISSION_NAME = "Access Dynamics 365 as organization users"
PERMISSION_API = "Dynamics CRM"
PERMISSION_SCOPE = "user_impersonation"

# Inline styles only; nothing else may load, and no page may be framed (clickjacking of the Accept button).
PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store, no-cache",
    "Pragma": "no-cache",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_STYLE = """
body { font-family: "Segoe UI", system-ui, sans-serif; background: #f2f2f2; margin: 0; color: #1b1b1b; }
main { max-width: 30rem; margin: 3rem auto; background: #fff; padding: 2rem 2.5rem; box-shadow: 0 2px 6px #0003; }
h1 { font-size: 1.5rem; font-weight: 600; margin-top: 0; }
h2 { font-size: 1rem; font-weight: 600; }
.publisher, .note, .meta { color: #505050; font-size: .875rem; }
label { display: block; font-weight: 600; margin: 1rem 0 .25rem; }
select { width: 100%; padding: .4rem; font: inherit; }
.actions { display: flex; gap: .75rem; justify-content: flex-end; margin-top: 1.5rem; }
button { font: inherit; min-width: 6.5rem; padding: .45rem 1rem; border: 1px solid #8a8886; background: #fff; }
button[value="accept"] { background: #0067b8; border-color: #0067b8; color: #fff; }
button:focus-visible, select:focus-visible { outline: 3px solid #1b1b1b; outline-offset: 2px; }
.error { border-left: 4px solid #a80000; padding-left: .75rem; }
"""


def document(title: str, body: str) -> bytes:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{body}</main>\n</body>\n</html>\n"
    ).encode()


@dataclass(frozen=True)
class PendingForm:
    request: Hashable  # the parameters the page was shown for; its POST must repeat them exactly
    tenant_ids: tuple[str, ...]  # the tenants the page offered
    expires_at: float


class FormNonces:
    """The hidden nonce of each page shown (consent, sign-in): single use, expiring like an Entra sign-in flow
    (10 minutes), bound to the request's parameters, at most ``limit`` open at once (oldest dropped first)."""

    def __init__(self, lifetime: float = 600.0, limit: int = 10_000) -> None:
        self._lifetime = lifetime
        self._limit = limit
        self._pending: dict[str, PendingForm] = {}
        self._lock = threading.Lock()

    def remember(self, request: Hashable, tenant_ids: tuple[str, ...]) -> str:
        nonce = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            for stale in [key for key, pending in self._pending.items() if pending.expires_at < now]:
                del self._pending[stale]
            if len(self._pending) >= self._limit:
                del self._pending[next(iter(self._pending))]  # oldest first: dicts keep insertion order
            self._pending[nonce] = PendingForm(request, tenant_ids, now + self._lifetime)
        return nonce

    def redeem(self, nonce: str, request: Hashable) -> PendingForm | None:
        """Take the nonce out (single use) when it was issued for these very parameters and has not expired."""
        with self._lock:
            pending = self._pending.get(nonce) if nonce else None
            if pending is not None and pending.request == request:
                del self._pending[nonce]
            else:
                pending = None
        if pending is None or pending.expires_at < time.monotonic():
            return None
        return pending


def _admin_name(tenant: Tenant) -> str:
    """The sandbox has no users: each tenant's administrator is `admin@<its first domain>`."""
    return f"admin@{tenant.domains[0]}" if tenant.domains else f"admin@{tenant.tenant_id}"


def _tenant_label(tenant: Tenant) -> str:
    return f"{_admin_name(tenant)} ({tenant.display_name}, {tenant.tenant_id})"


def render_consent_page(
    *,
    action: str,
    nonce: str,
    app: Application,
    publisher: Tenant | None,
    tenants: Sequence[Tenant],
    fixed_tenant: bool,
    scope: str | None,
) -> bytes:
    """The consent form. `tenants` holds one tenant when the URL named it, else every tenant to choose from."""
    publisher_text = (
        f"{publisher.display_name} ({publisher.domains[0]})" if publisher and publisher.domains else "unknown"
    )
    if fixed_tenant:
        tenant = tenants[0]
        who = (
            f"<p>Signed in as <strong>{escape(_admin_name(tenant))}</strong>, administrator of "
            f'{escape(tenant.display_name)} (<span class="meta">{escape(tenant.tenant_id)}</span>).</p>\n'
            f'<input type="hidden" name="{TENANT_FIELD}" value="{escape(tenant.tenant_id)}">\n'
        )
    else:
        options = "".join(
            f'<option value="{escape(t.tenant_id)}">{escape(_tenant_label(t))}</option>\n' for t in tenants
        )
        who = (
            f'<label for="{TENANT_FIELD}">Sign in as the administrator of</label>\n'
            f'<select id="{TENANT_FIELD}" name="{TENANT_FIELD}" required aria-describedby="who-help">\n'
            f"{options}</select>\n"
            '<p id="who-help" class="note">The sandbox has no passwords: choosing a tenant signs you in as its '
            "administrator.</p>\n"
        )
    scope_line = f'<p class="meta">Requested scope: <code>{escape(scope)}</code></p>\n' if scope is not None else ""
    body = (
        "<h1>Permissions requested</h1>\n"
        f'<p><strong>{escape(app.display_name)}</strong><br>\n<span class="publisher">Publisher: '
        f"{escape(publisher_text)} (unverified)</span></p>\n"
        f'<form method="post" action="{escape(action)}">\n'
        f'<input type="hidden" name="{NONCE_FIELD}" value="{escape(nonce)}">\n'
        f"{who}"
        '<h2 id="permissions-heading">This app would like to:</h2>\n'
        '<ul aria-labelledby="permissions-heading">\n'
        f"<li><strong>{PERMISSION_NAME}</strong> "
        f'<span class="meta">({PERMISSION_API}, {PERMISSION_SCOPE})</span></li>\n'
        "</ul>\n"
        f"{scope_line}"
        "<p>Accepting grants these permissions <strong>on behalf of your organization</strong> (admin consent): "
        "no user in the organization will be asked again.</p>\n"
        '<div class="actions">\n'
        f'<button type="submit" name="{DECISION_FIELD}" value="{CANCEL}" formnovalidate>Cancel</button>\n'
        f'<button type="submit" name="{DECISION_FIELD}" value="{ACCEPT}">Accept</button>\n'
        "</div>\n</form>\n"
        '<p class="note">Sandbox stand-in for the Microsoft Entra admin-consent page.</p>\n'
    )
    return document(f"Permissions requested - {app.display_name}", body)


def render_error_page(message: str, *, request_id: str, correlation_id: str, timestamp: str) -> bytes:
    """Entra's "trouble signing you in" page; `message` is shown as text (escaped), never as markup."""
    body = (
        "<h1>Sign in</h1>\n"
        "<p>Sorry, but we're having trouble signing you in.</p>\n"
        f'<p class="error" role="alert">{escape(message)}</p>\n'
        '<dl class="meta">\n'
        f"<dt>Request Id</dt><dd>{escape(request_id)}</dd>\n"
        f"<dt>Correlation Id</dt><dd>{escape(correlation_id)}</dd>\n"
        f"<dt>Timestamp</dt><dd>{escape(timestamp)}</dd>\n"
        "</dl>\n"
    )
    return document("Sign in to your account", body)


# -- responses of the consent and sign-in pages ------------------------------------------------------------


class PageError(Exception):
    """A problem reported on an error page (no redirect)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def error_response(message: str, trace_id: str, status: int = 400) -> HttpResponse:
    """The error page for `message`, with `trace_id` as its request id."""
    timestamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    html = render_error_page(message, request_id=trace_id, correlation_id=str(uuid.uuid4()), timestamp=timestamp)
    return HttpResponse(status, html, {**PAGE_HEADERS, "x-ms-request-id": trace_id})


def with_state(params: list[tuple[str, str]], state: str | None) -> list[tuple[str, str]]:
    """`params` followed by the request's `state`, when it had one."""
    return [*params, ("state", state)] if state is not None else params


def redirect_response(redirect_uri: str, params: list[tuple[str, str]]) -> HttpResponse:
    """302 to `redirect_uri` with `params` appended to any query it already has (registered URIs carry no
    fragment)."""
    parts = urlsplit(redirect_uri)
    added = urlencode(params)
    query = f"{parts.query}&{added}" if parts.query else added
    location = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    return HttpResponse(
        302, b"", {"Location": location, "Cache-Control": "no-store, no-cache", "Referrer-Policy": "no-referrer"}
    )


# -- reading the form back (clients without a browser) -------------------------------------------------


@dataclass
class ConsentForm:
    """What a browser would submit: the form's action (HTML-unescaped), its hidden fields and the tenants
    offered (GUIDs, the first one preselected as a browser would).
    """

    action: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    tenant_options: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)

    @property
    def nonce(self) -> str:
        return self.fields.get(NONCE_FIELD, "")

    def submission(self, decision: str, tenant: str | None = None) -> dict[str, str]:
        """The POST body for `decision` (accept/cancel), signing in to `tenant` (default: the preselected one)."""
        chosen = tenant or self.fields.get(TENANT_FIELD) or (self.tenant_options[0] if self.tenant_options else "")
        return {**self.fields, TENANT_FIELD: chosen, DECISION_FIELD: decision}


class _FormReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.form = ConsentForm()
        self._found_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and not self._found_form:
            self._found_form = True
            self.form.action = values.get("action", "")
        elif tag == "input" and values.get("type") == "hidden" and values.get("name"):
            self.form.fields[values["name"]] = values.get("value", "")
        elif tag == "option":
            self.form.tenant_options.append(values.get("value", ""))
        elif tag == "button" and values.get("name") == DECISION_FIELD:
            self.form.decisions.append(values.get("value", ""))


def read_consent_form(html: str) -> ConsentForm:
    """Parse the consent page. Raises ValueError when the page holds no consent form (e.g. an error page)."""
    reader = _FormReader()
    reader.feed(html)
    reader.close()
    if not reader.form.nonce:
        raise ValueError("no admin-consent form in this page")
    return reader.form
