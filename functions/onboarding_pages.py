"""The HTML pages of the onboarding flow: plain, accessible, and every value escaped.

Pages are built from small templates with ``html.escape`` applied to every inserted value; nothing from a
request is ever written unescaped, and nothing but our own pages and the authority is ever linked or redirected to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

import azure.functions as func

# No scripts at all; inline styles only; forms post only to ourselves (and, for the onboarding form, on to the
# authority its answer redirects to: Chromium applies form-action to the redirect too); never framed; no
# referrer leaks the state.
_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'{extra}; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": _CSP.format(extra=""),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;line-height:1.5;"
    "color:#1b1b1b}label{display:block;font-weight:600;margin-top:1rem}input{font-size:1rem;padding:.4rem;"
    "width:100%;box-sizing:border-box}button{margin-top:1rem;font-size:1rem;padding:.5rem 1rem}"
    ".error{border-left:4px solid #b00020;padding:.5rem 1rem;background:#fdecee}"
    ".ok{border-left:4px solid #107c10;padding:.5rem 1rem;background:#e9f5e9}"
    "code{background:#f3f3f3;padding:0 .2rem}pre{background:#f3f3f3;padding:.5rem;overflow-x:auto}"
)


def page(
    title: str,
    body_html: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    *,
    form_target: str = "",
    error_code: str | None = None,
) -> func.HttpResponse:
    """``body_html`` must already be safe (built with ``e``); ``title`` is escaped here. Error pages pass the
    stable ``error_code`` (the one the JSON API would give): shown as a line to quote, and as
    ``data-error-code`` for tests and scripts."""
    code_html = (
        f'<p class="error-code">Error code: <code data-error-code="{e(error_code)}">{e(error_code)}</code></p>'
        if error_code
        else ""
    )
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{escape(title)}</h1>{body_html}{code_html}</main></body></html>"
    )
    return func.HttpResponse(
        document,
        status_code=status,
        mimetype="text/html",
        charset="utf-8",
        headers={
            **SECURITY_HEADERS,
            "Content-Security-Policy": _CSP.format(extra=f" {form_target}" if form_target else ""),
            **(headers or {}),
        },
    )


def e(value: object) -> str:
    return escape(str(value), quote=True)


def onboard_form(
    app_name: str,
    client_id: str,
    authority_host: str,
    *,
    org_url: str = "",
    contact: str = "",
    error: str | None = None,
    error_code: str = "invalid_form",
    status: int = 200,
    role: tuple[str, tuple[tuple[str, str, str], ...]] | None = None,
) -> func.HttpResponse:
    """`role`: when onboarding provisions (ONBOARDING_PROVISIONING), the security role it creates — its name and
    (privilege, depth, why) — shown before the administrator signs in."""
    error_html = f'<p class="error" id="org-error" role="alert">{e(error)}</p>' if error else ""
    third = """<li>Create an <strong>application user</strong> for that application ID in the environment, with a custom
      security role that grants only what the integration needs. We show you how after sign-in.</li>"""
    if role is not None:
        rows = "".join(f"<li><code>{e(p)}</code> ({e(d)}): {e(why)}</li>" for p, d, why in role[1])
        third = f"""<li>With your sign-in, {e(app_name)} creates in that environment its security role
      <strong>{e(role[0])}</strong> with only these privileges, its application user with that role, and the
      webhook that tells it about changes:<ul>{rows}</ul>If your sign-in may not do one of these, we tell you which
      and show you how to do it by hand.</li>"""
    described = ' aria-describedby="org-error" aria-invalid="true"' if error else ""
    body = f"""
<p>This page connects your organisation's Microsoft Dataverse (Dynamics 365) environment to
<strong>{e(app_name)}</strong>. It takes three steps:</p>
<ol>
  <li>Enter the address of your environment below.</li>
  <li>Sign in to Microsoft as a <strong>System Administrator of that environment</strong>. If your organisation
      has not approved <strong>{e(app_name)}</strong> (application ID <code>{e(client_id)}</code>) yet, Microsoft
      asks you to consent to <em>Access Dynamics 365 as organization users</em>; an administrator who may consent
      for the organisation (e.g. Global or Cloud Application Administrator) ticks <em>Consent on behalf of your
      organization</em>. We use your sign-in only to check who you are and your role in that environment; we
      keep no token of yours.</li>
  {third}
</ol>
{error_html}
<form method="post" action="/api/onboard">
  <label for="org_url">Environment URL</label>
  <input id="org_url" name="org_url" type="url" required maxlength="300" autocomplete="url"
         placeholder="https://yourorg.crm.dynamics.com" value="{e(org_url)}"{described}>
  <label for="contact">Your email address (optional, so we can reach you about this connection)</label>
  <input id="contact" name="contact" type="email" maxlength="200" autocomplete="email" value="{e(contact)}">
  <button type="submit">Sign in with Microsoft</button>
</form>"""
    # The form page's URL carries nothing secret, and its POST must carry our Origin: under "no-referrer" a
    # browser sends `Origin: null` with a form post (Fetch standard, "serializing a request origin"), so this
    # one page says "same-origin" (nothing leaves for other sites, our own origin goes to ourselves).
    return page(
        f"Connect Dataverse to {app_name}",
        body,
        status,
        headers={"Referrer-Policy": "same-origin"},
        form_target=authority_host,
        error_code=error_code if error else None,
    )


@dataclass(frozen=True)
class Retry:
    """Offer the administrator to sign in again for the same org: a same-origin POST of the onboarding form
    (`org_url`, and the `contact` the org has) to our own start route, which checks it as it checks the form."""

    org_url: str
    contact: str
    authority_host: str  # the form's answer redirects there: the page's CSP form-action must allow it


# A page with a retry form must let the browser send our Origin with its POST (the start route refuses a post
# without it): under "no-referrer" a form post carries `Origin: null` (Fetch standard, "serialize a request
# origin"). "strict-origin" sends the Origin, and as Referer only the origin (never the page's URL, which on the
# callback page holds the spent code and state), and nothing to a less secure destination (W3C Referrer Policy).
_RETRY_REFERRER_POLICY = "strict-origin"


def retry_form(retry: Retry, intro: str) -> str:
    """The "Sign in again to finish setting up" button, after `intro` (already escaped HTML)."""
    return f"""
<h2>Finish setting up</h2>
<p>{intro} Every step first looks for what an earlier attempt made, so a new sign-in as a System Administrator
of the environment continues where the last one stopped. We keep no token of yours between sign-ins, so this takes
your sign-in again.</p>
<form method="post" action="/api/onboard" class="retry">
  <input type="hidden" name="org_url" value="{e(retry.org_url)}">
  <input type="hidden" name="contact" value="{e(retry.contact)}">
  <button type="submit">Sign in again to finish setting up</button>
</form>"""


def _page_with_retry(
    title: str, body: str, retry: Retry | None, *, status: int = 200, error_code: str | None = None
) -> func.HttpResponse:
    if retry is None:
        return page(title, body, status, error_code=error_code)
    return page(
        title,
        body,
        status,
        headers={"Referrer-Policy": _RETRY_REFERRER_POLICY},
        form_target=retry.authority_host,
        error_code=error_code,
    )


def active_page(
    app_name: str,
    tenant_id: str,
    org_urls: tuple[str, ...],
    *,
    provisioned: str | None = None,
    retry: Retry | None = None,
) -> func.HttpResponse:
    """`retry`: the set-up in the org did not finish (`provisioned` says where it stopped) though the org works."""
    orgs = "".join(f"<li><code>{e(o)}</code></li>" for o in org_urls)
    made = f"<p>{e(provisioned)}</p>" if provisioned and retry is None else ""
    unfinished = (
        retry_form(retry, f"The set-up in <code>{e(retry.org_url)}</code> did not finish: {e(provisioned or '')}")
        if retry is not None
        else ""
    )
    body = f"""
<p class="ok" role="status">Your environment is connected. {e(app_name)} can now reach:</p>
<ul>{orgs}</ul>{made}{unfinished}
<p>Tenant <code>{e(tenant_id)}</code>. {"" if retry else "You can close this page."}</p>"""
    return _page_with_retry("Connected", body, retry)


def awaiting_page(
    app_name: str,
    client_id: str,
    tenant_id: str,
    org: str,
    *,
    detail: str,
    ticket: str | None,
    ticket_expires: int = 0,
    provisioned: str | None = None,
    retry: Retry | None = None,
) -> func.HttpResponse:
    """`provisioned`: where the app's own attempt to create its role and application user stopped, and why.
    `retry`: onboarding provisions, so signing in again can finish it; the manual steps stay as the fallback."""
    recheck = ""
    if ticket:
        until = (
            datetime.fromtimestamp(ticket_expires, UTC).strftime("%Y-%m-%d %H:%M UTC") if ticket_expires else "7 days"
        )
        recheck = f"""
<form method="post" action="/api/onboard/recheck">
  <input type="hidden" name="tenant" value="{e(tenant_id)}">
  <input type="hidden" name="org" value="{e(org)}">
  <input type="hidden" name="ticket" value="{e(ticket)}">
  <button type="submit">I have created the application user — check again</button>
</form>
<p>To check later from another page, keep this re-check code (valid until {e(until)}) and paste it at
<a href="/api/onboard/recheck">/api/onboard/recheck</a>: tenant <code>{e(tenant_id)}</code>, code
<code>{e(ticket)}</code>.</p>"""
    attempt = ""
    if provisioned and retry is None:
        attempt = f"""
<p class="error">The app tried to set this up with your sign-in and could not finish: {e(provisioned)} Do the
rest by hand as below, or ask a System Administrator of the environment to onboard it.</p>"""
    elif retry is not None:
        said = (
            f"The app tried to set this up with your sign-in and could not finish: {e(provisioned)}"
            if provisioned
            else f"{e(app_name)} can create its security role, application user and webhook in <code>{e(org)}</code>"
            " with your sign-in."
        )
        attempt = retry_form(retry, said) + "\n<p>Or do it by hand as below.</p>"
    body = f"""
<p class="ok" role="status">You are signed in and the app is approved. One step is left: {e(app_name)} has no
application user in <code>{e(org)}</code> yet. Your other environments already connected keep working.</p>
<p class="error" role="alert">Dataverse said: {e(detail)}</p>{attempt}
<h2>{"Or create" if retry else "Create"} the application user{" by hand" if retry else ""}</h2>
<ol>
  <li>Open the <strong>Power Platform admin center</strong> → Environments → your environment → Settings →
      Users + permissions → <strong>Application users</strong> → <strong>New app user</strong>.</li>
  <li>Add the app with application ID <code>{e(client_id)}</code>, pick the business unit.</li>
  <li>Assign a <strong>custom security role</strong> (application users cannot be given the default roles) with
      the privileges the integration needs.</li>
</ol>
<h2>Or with the Web API, for administrators who script it</h2>
<pre>GET {e(org)}/api/data/v9.2/businessunits?$filter=_parentbusinessunitid_value eq null&amp;$select=businessunitid
POST {e(org)}/api/data/v9.2/systemusers
{{"applicationid": "{e(client_id)}",
 "businessunitid@odata.bind": "/businessunits(&lt;root business unit id&gt;)"}}
POST {e(org)}/api/data/v9.2/systemusers(&lt;new user id&gt;)/systemuserroles_association/$ref
{{"@odata.id": "{e(org)}/api/data/v9.2/roles(&lt;your custom role id&gt;)"}}</pre>
{recheck}"""
    return _page_with_retry("Almost there: create the application user", body, retry)


def pending_page(detail: str) -> func.HttpResponse:
    body = f"""
<p role="status">Your sign-in and consent were received. Microsoft Entra ID can take a few minutes to make
consent effective everywhere; we will keep checking automatically and finish the connection then.</p>
<p>{e(detail)}</p>"""
    return page("Confirming your consent", body, status=202)


# Fixed explanations for the OAuth errors Entra sends back to a redirect URI (entra/reference-error-codes.md).
_SIGN_IN_ERRORS = {
    "access_denied": "The sign-in or the consent was cancelled, or permission was not granted.",
    "consent_required": "Consent is required and was not given.",
    "interaction_required": "Microsoft needs you to sign in again interactively.",
    "login_required": "You are not signed in to Microsoft.",
    "invalid_request": "Microsoft could not process the sign-in request.",
    "unauthorized_client": "This application may not use this sign-in.",
    "server_error": "Microsoft had an internal error; try again.",
    "temporarily_unavailable": "Microsoft is temporarily unavailable; try again.",
}


def consent_error_page(error: str, description: str) -> func.HttpResponse:
    """Entra's error code always (with a fixed explanation when known); its free text only when ``description``
    is given, which the caller does only for the browser that started this sign-in."""
    first_line = description.split("\r\n", maxsplit=1)[0].split("\n", maxsplit=1)[0]
    known = _SIGN_IN_ERRORS.get(error, "Microsoft sign-in did not complete.")
    said = f"<p>Microsoft said: {e(first_line)}</p>" if first_line else ""
    body = f"""
<p class="error" role="alert">Microsoft sign-in returned <code>{e(error)}</code>: {e(known)}</p>
{said}
<p>Nothing was connected. Start again; if you are not a System Administrator of the environment, ask one to do
it.</p>
<p><a href="/api/onboard">Start again</a></p>"""
    return page("Sign-in did not complete", body, status=400, error_code="consent_denied")


_STATE_ADVICE = {
    "missing": "The answer from Microsoft sign-in was incomplete.",
    "unknown": "We did not start this sign-in, or it is too old to recognise.",
    "expired": "Too much time passed between the form and the sign-in.",
    "replayed": "This sign-in answer was already used.",
    "other_browser": "This sign-in was started in a different browser (or cookies are blocked).",
}


def invalid_state_page(
    reason: str, *, error_code: str = "invalid_consent_state", ttl_seconds: int = 600
) -> func.HttpResponse:
    minutes = max(1, ttl_seconds // 60)
    within = f"{minutes} minute{'s' if minutes != 1 else ''}"
    body = f"""
<p class="error" role="alert">{e(_STATE_ADVICE.get(reason, "The sign-in answer could not be used."))}
Nothing was recorded.</p>
<p><a href="/api/onboard">Start again</a> in this browser, and finish within {within}.</p>"""
    return page("This sign-in cannot be completed", body, status=400, error_code=error_code)


def refused_page(message: str, *, error_code: str = "tenant_not_allowed", status: int = 403) -> func.HttpResponse:
    body = f"""<p class="error" role="alert">{e(message)} Nothing was recorded.</p>
<p><a href="/api/onboard">Start again</a></p>"""
    return page("This environment cannot be connected", body, status=status, error_code=error_code)


def failed_page(
    detail: str,
    *,
    error_code: str = "verification_failed",
    provisioned: str | None = None,
    retry: Retry | None = None,
) -> func.HttpResponse:
    """A verification that ended in a recorded failure: an outcome to read (200 with its code), not a fault of
    this service (no 5xx). `retry`: the set-up in the org stopped (`provisioned` says where)."""
    unfinished = (
        retry_form(retry, f"The set-up in <code>{e(retry.org_url)}</code> did not finish: {e(provisioned or '')}")
        if retry is not None
        else ""
    )
    body = f"""
<p class="error" role="alert">The connection could not be verified: {e(detail)}</p>{unfinished}
<p><a href="/api/onboard">Start again</a>, or contact us with the time of this attempt.</p>"""
    return _page_with_retry("The connection could not be verified", body, retry, status=200, error_code=error_code)


def unavailable_page(detail: str, *, error_code: str = "storage_unavailable") -> func.HttpResponse:
    body = f'<p class="error" role="alert">{e(detail)}</p>'
    return page("Please try again in a moment", body, status=503, error_code=error_code)


def recheck_page() -> func.HttpResponse:
    body = """
<p>Check whether the application user now exists and finish the connection. Paste the re-check code you were
given after signing in (it is valid for 7 days).</p>
<form method="post" action="/api/onboard/recheck">
  <label for="tenant">Tenant ID</label>
  <input id="tenant" name="tenant" required maxlength="36" autocomplete="off">
  <label for="ticket">Re-check code</label>
  <input id="ticket" name="ticket" required maxlength="200" autocomplete="off">
  <button type="submit">Check again</button>
</form>"""
    return page("Check the connection again", body)
