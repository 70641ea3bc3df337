"""Every Entra ID, Key Vault and Dataverse error this app can meet: what it means here and what to do. One
catalogue feeds ``python -m cli explain CODE`` and ``docs/troubleshooting.md`` (a test keeps the document in step):
regenerate it with ``python -c "from shared.troubleshooting import render_markdown as r; print(r(), end='')"
> docs/troubleshooting.md``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.auth import aadsts
from shared.dataverse import errors as dv


@dataclass(frozen=True)
class Explanation:
    code: str
    source: str  # "Entra ID", "Key Vault", "Dataverse", "Onboarding" or "Webhooks"
    title: str
    meaning: str
    fix: str
    aliases: tuple[str, ...] = ()


def _entra() -> list[Explanation]:
    titles = {
        700016: "Application not found in the tenant",
        65001: "Consent required",
        700027: "Certificate not registered / assertion signature invalid",
        7000274: "Assertion signature could not be verified",
        7000215: "Invalid client credential",
        70021: "No matching federated identity credential",
        700024: "Client assertion outside its valid time range",
        90002: "Tenant not found",
        7000112: "Application disabled",
        1002012: "Invalid scope for client credentials",
        500011: "Resource (org) not found in the tenant",
        90033: "Transient Entra ID failure",
        50000: "Entra ID token issuance error",
    }
    app_view = {
        700016: " The registry moves the tenant to `consent_revoked` (health job), or keeps it `pending_consent` "
        "while a fresh consent replicates (re-checked from the `tenant-verification` queue).",
        65001: " The registry moves the tenant to `consent_revoked`.",
        700027: " The worker re-reads the certificate from Key Vault once and retries once before reporting this.",
        7000274: " The worker re-reads the certificate once and retries once before reporting this.",
        90033: _TRANSIENT_VIEW,
        50000: _TRANSIENT_VIEW,
    }
    condition_view = {
        aadsts.ENTRA_UNREACHABLE: " During onboarding it is the administrator's sign-in that could not be finished "
        "(the code exchange at Entra ID's token endpoint failed): the page shows `entra_unreachable`, nothing is "
        "recorded, and the administrator starts again from `/api/onboard`.",
    }
    conditions = {
        aadsts.ENTRA_UNREACHABLE: "Entra ID could not be reached or did not answer in time",
        aadsts.ENTRA_UNAVAILABLE: "Entra ID answered with a server error",
    }
    return [
        Explanation(
            f"AADSTS{code}",
            "Entra ID",
            titles.get(code, info.category),
            info.meaning + app_view.get(code, ""),
            info.fix,
            (str(code),),
        )
        for code, info in aadsts.CATALOG.items()
    ] + [
        Explanation(
            name, "Entra ID", conditions[name], info.meaning + _TRANSIENT_VIEW + condition_view.get(name, ""), info.fix
        )
        for name, info in aadsts.CONDITIONS.items()
    ]


_TRANSIENT_VIEW = (
    " A transient failure says nothing about the tenant's consent: the tenant keeps its status, the run counts "
    "it as failed and its registry entry records this code."
)

_KEY_VAULT = [
    Explanation(
        "certificate_error",
        "Key Vault",
        "The app's certificate could not be read",
        "The worker could not read the certificate it signs client assertions with: Key Vault unreachable, "
        "answering 5xx or too slowly, the certificate missing or its latest version disabled, the identity "
        "without the 'Key Vault Secrets User' role, or content that does not parse. The message names which. A "
        "worker that already holds a certificate keeps signing with it and re-reads later; a worker that holds "
        "none fails every tenant's token request, trying Key Vault again only after a retry interval. Tenants keep "
        "their status; the run counts them as failed and records this code on each.",
        "Unreachable or 5xx: nothing to change if it is brief, the next run reads again; if it lasts, check the "
        "vault's network rules and the Azure status page. Otherwise fix what the message names "
        "(KEY_VAULT_URL, KEY_VAULT_CERTIFICATE_NAME, the role assignment, the certificate's versions).",
        ("key vault", "key vault unreachable"),
    ),
    Explanation(
        "certificate_forbidden",
        "Key Vault",
        "Key Vault answered 403: the identity may not read the certificate",
        "The app's identity authenticated to Key Vault but may not read the certificate's backing secret (where "
        "the private key lives). The message carries Key Vault's own error code: `Forbidden/ForbiddenByRbac` "
        'from a vault using Azure RBAC, an access-policy refusal ("does not have secrets get permission") from a '
        "vault using access policies; a 403 about the client address comes from the vault's firewall. Reported as "
        "`certificate_error`.",
        "RBAC vault: assign **Key Vault Secrets User** on the vault to the identity. Access-policy vault: `az "
        "keyvault set-policy --name <vault> --object-id <principal id> --secret-permissions get`. `az keyvault "
        "show --name <vault> --query properties.enableRbacAuthorization` says which model the vault uses.",
        ("forbiddenbyrbac", "forbiddenbypolicy", "key vault 403"),
    ),
    Explanation(
        "key_vault_challenge",
        "Key Vault",
        "Key Vault's challenge names a resource the vault host does not belong to",
        "Before sending a token the Key Vault client checks that the resource named by the vault's 401 challenge "
        "is a domain the vault's host belongs to; the vault at KEY_VAULT_URL failed that check, so the worker has "
        "no certificate. Reported as `certificate_error`; it is not transient, so the worker does not ask again "
        "before its retry interval.",
        "Set KEY_VAULT_URL to the vault's own URL (`https://<vault>.vault.azure.net/`, or the sovereign cloud's "
        "vault domain). KEY_VAULT_VERIFY_CHALLENGE_RESOURCE=false turns the check off; only a local stand-in on "
        "another host (the sandbox on 127.0.0.1) needs that.",
        ("key_vault_verify_challenge_resource", "challenge resource", "verify_challenge_resource"),
    ),
    Explanation(
        "certificate_not_registered",
        "Key Vault",
        "New certificate version not registered on the app",
        "Key Vault holds a newer version of the certificate (made by hand, or by the policy's AutoRenew action) "
        "and a token request for the app's home tenant signed with it was refused (AADSTS700027 class): its "
        "public part is not on the app registration. Workers keep signing with the version in use; "
        "`python -m cli certificate` shows both, and the certificate job logs an error with "
        '`"problem": "new version not registered on the app"`. When the check proved nothing instead (Entra '
        "ID unreachable, no service principal in the home tenant: `new version not proven yet`), the version "
        "waits too and is checked again, the first retry after a minute, backing off to CERTIFICATE_REFRESH_SECONDS.",
        "Register the new version, keeping the one in use: `az keyvault certificate download --vault-name <vault> "
        "--name <certificate> --version <new version> --file new.pem --encoding PEM`, then `az ad app credential "
        "reset --id <client id> --cert @new.pem --append`. Workers switch at their next check "
        "(CERTIFICATE_REFRESH_SECONDS) without a restart; remove the old certificate from the app only after that.",
        ("new version not registered on the app", "not registered", "certificate rotation", "auto-renew"),
    ),
]


_DATAVERSE = [
    Explanation(
        dv.APPLICATION_USER_MISSING,
        "Dataverse",
        "The user is not a member of the organization",
        "Consent exists (a token was issued) but the org has no application user for our app. The tenant is "
        "`awaiting_application_user`; webhooks and jobs skip it.",
        "The customer creates the application user for our application id with a custom security role (Power "
        "Platform admin center > Environments > Settings > Application users), then re-checks from the onboarding "
        "page or an operator runs `python -m cli tenants verify <tenant>`.",
        ("application user missing",),
    ),
    Explanation(
        dv.USER_DISABLED,
        "Dataverse",
        "Disabled user",
        "The application user (or the impersonated user) is disabled; disabling an application user breaks every "
        "integration with that org. The tenant is `awaiting_application_user`.",
        "Re-enable the application user in the Power Platform admin center; then `tenants verify`.",
        ("disabled", "disabled user"),
    ),
    Explanation(
        dv.THROTTLE_REQUESTS,
        "Dataverse",
        "Too many requests (6,000 per 5 minutes per user)",
        "Service protection: the app user sent too many requests to one web server. The client waits out "
        "Retry-After for every caller of that org and sends again; nothing is lost. The window is published in "
        "the `orgthrottle` table, so the app's other instances wait it out too (within "
        "DATAVERSE_THROTTLE_REFRESH_MS). From then on the worker paces its requests to the limit the message "
        "names, so later windows do not reach it again.",
        "Nothing, usually. If it persists: lower SWEEP_CONCURRENCY, sync fewer tables or columns, use $batch.",
        (),
    ),
    Explanation(
        dv.THROTTLE_EXECUTION_TIME,
        "Dataverse",
        "Too much execution time (20 minutes per 5 minutes per user)",
        "Service protection: requests took too long in total. Handled like other 429s (Retry-After honoured).",
        "Make requests cheaper: fewer columns, smaller pages (SYNC_PAGE_SIZE), fewer concurrent requests.",
        (),
    ),
    Explanation(
        dv.THROTTLE_CONCURRENCY,
        "Dataverse",
        "Too many concurrent requests (52 per user)",
        "Service protection: too many requests at once. The client caps concurrency per org under 52 and "
        "follows x-ms-dop-hint; this should be rare.",
        "Lower SWEEP_CONCURRENCY; make sure several worker instances are not all hitting one org.",
        (),
    ),
    Explanation(
        dv.EXPIRED_VERSION_STAMP,
        "Dataverse",
        "Expired change-tracking (delta) token",
        "The stored delta link is older than the org keeps changes (ExpireChangeTrackingInDays, default 7 days) "
        "or is invalid. The sync job logs it and re-reads that table from scratch.",
        "Nothing; if it recurs, run the sync more often than the org's change-tracking expiry.",
        ("expired delta token", "delta token"),
    ),
    Explanation(
        dv.ACCESS_DENIED,
        "Dataverse",
        "Access denied (missing privilege)",
        "The application user's role lacks a privilege — for impersonation, prvActOnBehalfOfAnotherUser; for "
        "reads, the table's read privilege.",
        "Add the privilege to the app's custom security role (Delegate role for impersonation).",
        ("prvactonbehalfofanotheruser",),
    ),
    Explanation(
        dv.ROW_NOT_FOUND,
        "Dataverse",
        "Row does not exist",
        "The row was deleted or never existed. Deletes treat it as success.",
        "Nothing for deletes; for reads, the row is gone.",
        (),
    ),
    Explanation(
        dv.RESOURCE_NOT_FOUND,
        "Dataverse",
        "Resource not found for the segment (unknown table)",
        "The org has no entity set (or function, action, column segment) of the name in the URL. Names are "
        "case-sensitive and plural: `accounts`, not `Account` or `account`. The client raises UnknownTableError, "
        "also from delete(): a delete in a misspelled table is reported, never taken for a row already gone.",
        "Fix the table name (SYNC_TABLES, the handler's code): the entity set names are listed by "
        "`GET <org>/api/data/v9.2/`. A custom table is `<prefix>_<name>s` and exists only where its solution is "
        "installed.",
        ("unknown table", "resource not found for the segment", "unknown_table"),
    ),
    Explanation(
        dv.ORGANIZATION_NOT_FOUND,
        "Dataverse",
        "No such organisation (the org URL's host does not exist)",
        "The org URL's host name does not exist (DNS has no such name, or the HTTPS proxy could not find the host; "
        "the cloud-in-a-box answers so for an org it does not have). The client fails at once instead of retrying.",
        "Check the org URL recorded for the tenant against the environment's URL in the Power Platform admin "
        "center (Environments > the environment > Environment URL); in the cloud-in-a-box, add the org first.",
        ("no such organisation", "no such organization", "organisation not found"),
    ),
]


_START_AGAIN = "The administrator starts again from `/api/onboard`, in one browser, within CONSENT_STATE_TTL_SECONDS."

# The codes the onboarding pages show (functions/onboarding.py, shared/tenants/onboarding.py,
# shared/signin/administrators.py). None of them records anything about any tenant.
_ONBOARDING = [
    Explanation(
        "cross_site_request",
        "Onboarding",
        "Form post refused: not sent from this app's own page",
        "`POST /api/onboard` carried an Origin (or, without one, a Referer) other than the app's own origin (the "
        "scheme and host of ONBOARDING_REDIRECT_URI), or neither: 403, no state row, no outbound call. A page on "
        "another site cannot start an onboarding in a visitor's browser.",
        "Open the form at `https://<app>/api/onboard` and submit it from there. If a reverse proxy or Front Door "
        "serves the app under another host name, ONBOARDING_REDIRECT_URI must use that public host (and be "
        "registered on the app). A browser extension that strips Origin and Referer causes this too.",
        ("cross-site", "csrf", "origin"),
    ),
    Explanation(
        "invalid_form",
        "Onboarding",
        "The onboarding form could not be read",
        "The form post was larger than 4 KB, had too many fields or could not be parsed: 400, nothing stored.",
        "Submit the form from the page itself; scripts must send `application/x-www-form-urlencoded` with `org_url` "
        "and `contact`.",
    ),
    Explanation(
        "invalid_org_url",
        "Onboarding",
        "The environment URL is not a Dataverse URL of the configured cloud",
        "The URL must be `https://<org>.<Dataverse suffix>` (DATAVERSE_DOMAIN_SUFFIXES, from AZURE_CLOUD) with "
        "nothing else: no path, query, port or user information. Anything else is refused before any call or "
        "state row; the CLI refuses such an `--org` the same way.",
        "Copy the environment URL from the Power Platform admin center (Environments > the environment > "
        "Environment URL), e.g. `https://contoso.crm4.dynamics.com`.",
        ("org url",),
    ),
    Explanation(
        "invalid_contact",
        "Onboarding",
        "The contact is not one printable line",
        "The optional contact is kept in the registry and shown to operators, so it must be one line of at most 200 "
        "printable characters: line breaks, control characters (terminal escapes) and invisible format characters "
        "(bidirectional overrides, zero-width characters) are refused with 400 and the form shown again.",
        "Enter an e-mail address or a name on one line, or leave the field empty.",
        ("contact",),
    ),
    Explanation(
        "invalid_consent_state",
        "Onboarding",
        "The sign-in answer does not belong to a sign-in this browser started",
        "The callback found no usable sign-in state: `missing` (no `state` in the answer), `unknown` (not one we "
        "issued, or already purged), `expired` (older than CONSENT_STATE_TTL_SECONDS), `replayed` (already used: "
        "a state is single use) or `other_browser` (the HttpOnly cookie that binds the state to the browser that "
        "posted the form is missing or different: another browser, a private window, blocked cookies). 400; "
        "nothing is recorded, and a state is spent only by the browser that started it.",
        _START_AGAIN + " Cookies for the app's host must be allowed; a forwarded sign-in link cannot be finished "
        "in another browser.",
        ("missing", "expired", "replayed", "other_browser", "state"),
    ),
    Explanation(
        "consent_denied",
        "Onboarding",
        "Microsoft sign-in returned an error instead of a sign-in",
        "Entra ID sent the browser back with `error=` (RFC 6749 §4.1.2.1): `access_denied` (the administrator "
        "cancelled, or declined the permission: AADSTS65004), `consent_required` or `interaction_required` (the "
        "tenant lets only administrators consent and nobody has), `login_required`, `invalid_request`, "
        "`unauthorized_client` (Entra: the client is not registered or not added to the user's tenant), "
        "`server_error`, `temporarily_unavailable`. The page shows that code with a fixed explanation, and "
        "Entra's own description only to the browser that started the sign-in. The state is spent; nothing is "
        "recorded.",
        "Cancelled: start again. Consent needed: someone who may consent for the whole organisation (Privileged "
        "Role Administrator, Cloud Application Administrator or Application Administrator; Global Administrator "
        "too) signs in once and ticks *Consent on behalf of your organization*, or grants consent to the "
        "enterprise application in the Microsoft Entra admin center; then the System Administrator starts again. "
        "`unauthorized_client`: check the enterprise application exists in the tenant and is enabled for users to "
        "sign in (Microsoft Entra admin center > Enterprise apps > the app > Properties).",
        ("access_denied", "consent_required", "interaction_required", "aadsts65004", "aadsts90094"),
    ),
    Explanation(
        "sign_in_answer_invalid",
        "Onboarding",
        "The sign-in answer is incomplete or belongs to another sign-in",
        "MSAL refused the answer before redeeming anything: its `state` is not the one of the sign-in stored for "
        "this browser, or it carries no authorization code. 400; nothing is recorded.",
        _START_AGAIN + " Do not open the same sign-in in two tabs.",
    ),
    Explanation(
        "sign_in_refused",
        "Onboarding",
        "Entra ID refused to redeem the sign-in's code",
        "The authorization code could not be exchanged for the ID token and the delegated Dataverse token. The page "
        "names Entra's AADSTS code: AADSTS54005 (the code was already redeemed: a replayed answer), AADSTS70008 "
        "(the code expired: codes live about ten minutes), AADSTS501481 (the PKCE verifier does not match the "
        "code's challenge: the answer belongs to another sign-in), AADSTS500112 (the redirect URI differs from the "
        "one the code was issued for), or "
        "one about our own credential (AADSTS700027 and its kind: see the certificate entries). 400; nothing is "
        "recorded.",
        _START_AGAIN + " If the code is about the redirect URI, register ONBOARDING_REDIRECT_URI exactly (Web "
        "platform); if it is about the credential, fix that first (`python -m cli certificate`).",
        ("aadsts54005", "aadsts70008", "aadsts501481", "code redemption"),
    ),
    Explanation(
        "id_token_invalid",
        "Onboarding",
        "The ID token from the sign-in failed its checks",
        "MSAL checks the ID token of the code exchange: the nonce must be the one this sign-in sent, the audience "
        "our client id, the issuer Entra's for the token's tenant, and its time valid; the token must also name a "
        "tenant (`tid`) and a user (`oid`). A token that fails is not believed: 400, nothing recorded. Who signed "
        "in is taken only from this token, never from the redirect's parameters.",
        _START_AGAIN + " If it recurs, check the worker's clock (NTP) and that ENTRA_AUTHORITY_HOST is the cloud's "
        "real sign-in host.",
        ("nonce",),
    ),
    Explanation(
        "not_org_administrator",
        "Onboarding",
        "The signed-in person is not a System Administrator of the environment",
        "With the person's own delegated token the app asked the environment who they are (WhoAmI) and their "
        "security roles (`systemusers(<id>)/systemuserroles_association`). None of the roles is System "
        "Administrator (role template `627090ff-40a3-4053-8790-584edc5be201`), or the environment answered 403: "
        "they are not an enabled user of it. 403; the page names who signed in; nothing is recorded.",
        "Sign in as a user who holds the System Administrator security role in that environment (Power Platform "
        "admin center > Environments > the environment > Settings > Users + permissions > Users > Manage security "
        "roles). A Global, Power Platform or Dynamics 365 administrator may first have to self-elevate to System "
        "Administrator in the environment (Power Platform admin center > the environment > Membership > Add me).",
        ("system administrator", "not administrator"),
    ),
    Explanation(
        "org_not_in_tenant",
        "Onboarding",
        "The environment belongs to another tenant than the one signed in to",
        "The environment refused the person's delegated token with 401: its tenant is not the tenant of the ID "
        "token. Connecting an org to a tenant needs a System Administrator signed in to the org's own tenant. 403; "
        "nothing is recorded.",
        "Check the environment URL, and sign in with an account of the organisation that owns the environment "
        "(pick the right account in Microsoft's account picker; a guest account of another tenant does not count).",
    ),
    Explanation(
        "org_unavailable",
        "Onboarding",
        "The environment could not be reached to check the administrator's role",
        "The role check with the delegated token failed transiently: the environment was unreachable, throttled "
        "(429) or answered 5xx. 503; nothing is recorded; the sign-in was spent.",
        "Start again in a few minutes; check the environment is not in administration mode or being restored "
        "(Power Platform admin center).",
    ),
    Explanation(
        "org_check_failed",
        "Onboarding",
        "The environment refused the check of the administrator's role",
        "WhoAmI or the role query with the signed-in person's delegated token failed with an answer that is not "
        "transient and not 401/403 (e.g. a 400 or 404 from the environment). 403 page; nothing is recorded.",
        "Check the environment URL and that it is in normal (not administration) mode; start again. If it keeps "
        "failing, quote the code shown on the page.",
    ),
    Explanation(
        "tenant_not_allowed",
        "Onboarding",
        "Single-tenant mode: another tenant tried to onboard",
        "With APP_MODE=single_tenant only the home tenant (ENTRA_HOME_TENANT_ID) may connect environments; the ID "
        "token named another tenant. 403; nothing is recorded.",
        "Use an environment of the home tenant; serving other tenants needs APP_MODE=multi_tenant and a "
        "multi-tenant app registration.",
        ("single tenant", "app_mode"),
    ),
    Explanation(
        "verification_failed",
        "Onboarding",
        "The administrator signed in, but the connection could not be verified",
        "After a proven sign-in the tenant and org were recorded, then the app-only token or WhoAmI failed for a "
        "reason that is not transient (for example AADSTS7000112, the app disabled in the tenant). The failure is "
        "the tenant's recorded outcome, shown as a page with 200 and this code (not a 5xx); its registry entry "
        "holds Entra's or Dataverse's own code.",
        "`python -m cli tenants show <tenant>` shows the recorded code; `python -m cli explain <code>` says what "
        "to fix. After the fix, `python -m cli tenants verify <tenant>` or the customer's re-check.",
    ),
    Explanation(
        "storage_unavailable",
        "Onboarding",
        "Storage could not be reached",
        "The onboarding pages, the admin verify endpoint and the webhook receiver answer 503 with Retry-After when "
        "the storage account (registry, sign-in states, queues) does not answer: nothing was written. Dataverse "
        "retries a webhook answered 503 once.",
        "Check the storage account's availability and network rules, and that the app's identity holds Storage "
        "Table Data Contributor and Storage Queue Data Contributor; the administrator starts again afterwards.",
    ),
    Explanation(
        "provisioning_refused",
        "Onboarding",
        "The app could not create its role, application user or webhook with your sign-in",
        "With ONBOARDING_PROVISIONING (the default) the app creates its security role, application user and "
        "webhook in the environment with the signed-in administrator's token. A step Dataverse refused (403 "
        "0x80040220 'is missing prv… privilege') or that failed (an error answer, the environment unreachable) "
        "stops the run; the page names the step and the privilege or the answer, says what was done before it, "
        "offers *Sign in again to finish setting up* and shows the manual steps. Nothing is left half-done "
        "unexplained: each step finds before it creates, so the next run finishes it.",
        "Press *Sign in again to finish setting up* and sign in as a System Administrator of the environment (after "
        "giving the person the named privilege, or once the environment answers again): the run picks up where it "
        "stopped. Or do the shown steps by hand and press *check again*.",
        ("provisioning", "prvcreaterole", "prvcreateuser", "prvassignrole", "prvcreateserviceendpoint"),
    ),
    Explanation(
        "unknown_table",
        "Onboarding",
        "A table of SYNC_TABLES or WEBHOOK_SUBSCRIPTIONS has no known schema name",
        "The app's security role is computed from the settings; its privileges are named after each table's "
        "schema name (prvRead<SchemaName>), which the app knows for the standard tables (accounts, contacts, "
        "leads, opportunities, tasks) only. Onboarding's provisioning stops at `role` with this code.",
        "Use standard tables, or add the custom table's schema name (e.g. contoso_Project) to STANDARD_TABLES in "
        "shared/tenants/security_role.py; until then create the role by hand.",
    ),
    Explanation(
        "user_api_disabled",
        "Onboarding",
        "The signed-in users' API is switched off",
        "USER_API_ENABLED=false: `/api/me*` answers 404 with this code, and the app's security role no longer "
        "holds prvActOnBehalfOfAnotherUser unless WEBHOOK_IMPERSONATE_INITIATING_USER needs it.",
        "Set USER_API_ENABLED=true (and onboard again, or add prvActOnBehalfOfAnotherUser to the role) to serve it.",
    ),
]


_WEBHOOKS = [
    Explanation(
        "unauthenticated",
        "Webhooks",
        "A webhook delivery was not proven to come from an active customer org",
        "The receiver answers one and the same 401 for an x-ms-dynamics-organization host it does not know, an org "
        "that is not an active org of an active tenant, and a missing or wrong org secret (WEBHOOK_SECRET_HEADER): a "
        "holder of the shared function key learns nothing about which hosts are customers. Nothing is queued.",
        "Check the org is active (`python -m cli tenants show <tenant>`) and that its service endpoint sends the "
        "function key in x-functions-key and the org's current secret (`python -m cli tenants webhook-secret "
        "<tenant> --org <org url>` issues a new one). Dataverse does not retry a 401.",
    ),
    Explanation(
        "organization_mismatch",
        "Webhooks",
        "An authenticated delivery names another organisation",
        "The delivery carried the org's own secret, but the body's OrganizationId is not the organisation id WhoAmI "
        "reported for that org host. 403; nothing is queued.",
        "Re-verify the tenant (`python -m cli tenants verify <tenant>`) to refresh the org index; if it persists, "
        "the endpoint's secret is shared with another org: rotate it.",
    ),
    Explanation(
        "webhook_endpoint_not_updated",
        "Webhooks",
        "A rotated webhook secret could not be put on the org's service endpoint",
        "`tenants webhook-secret --org` stored the new secret, but the app's own S2S token could not rewrite the "
        "endpoint: `endpoint` says why — not_found (no endpoint named 'S2S webhook <client id>': registered by "
        "hand), refused (the role lacks prvReadServiceEndpoint or prvWriteServiceEndpoint: made before the app "
        "looked after its endpoint, or trimmed), failed (token or Dataverse trouble), not_configured (no usable "
        "WEBHOOK_FUNCTION_KEY where the CLI ran). The answer shows the new secret once; the previous one is "
        "accepted until previous_secret_valid_until (WEBHOOK_SECRET_OVERLAP_SECONDS).",
        "Put the shown header and value on the endpoint (Plug-in Registration tool: the endpoint's HttpHeader "
        "values) before the overlap ends; or fix the cause (the administrator onboards again to reset the role's "
        "privileges, or run the CLI with WEBHOOK_FUNCTION_KEY set) and rotate again.",
        ("prvwriteserviceendpoint", "prvreadserviceendpoint"),
    ),
    Explanation(
        "org_disconnected",
        "Webhooks",
        "The org is disconnected: it gets no webhook secret",
        "`tenants webhook-secret` was asked for an org whose tenant was offboarded (or that was disconnected). A "
        "disconnected org's webhook secrets were dropped with it, so that a secret from before cannot work again "
        "after a re-onboarding; nothing was changed.",
        "Nothing to rotate. If the customer comes back, a System Administrator of the org onboards it again, which "
        "issues a new secret and registers the webhook.",
    ),
    Explanation(
        "webhook_left_in_org",
        "Webhooks",
        "Offboarding could not remove the app's webhook from an environment",
        "Offboarding deletes each active environment's steps and then the service endpoint 'S2S webhook <client "
        "id>' with the app's S2S token. Where the org was not active (no_access), the role lacks "
        "prvReadSdkMessageProcessingStep, prvDeleteSdkMessageProcessingStep or prvDeleteServiceEndpoint (refused), "
        "or the call failed, `left_in_customer_environments` names the endpoint as left. The org's webhook secret "
        "is dropped either way, so the endpoint's deliveries are refused (401).",
        "Send the environment's System Administrator the `left` list: delete the endpoint's steps, then the "
        "endpoint (Plug-in Registration tool, or DELETE through the Web API), then deactivate the application user "
        "and delete the security role.",
        ("prvdeleteserviceendpoint", "prvdeletesdkmessageprocessingstep"),
    ),
]


def catalog() -> list[Explanation]:
    return _entra() + _KEY_VAULT + _DATAVERSE + _ONBOARDING + _WEBHOOKS


def _names(entry: Explanation) -> set[str]:
    names = {entry.code.lower(), *entry.aliases}
    if entry.code.startswith("0x"):
        names.add(str(int(entry.code, 16) - 2**32))  # the signed decimal form .NET error messages show
    return names


_AADSTS = re.compile(r"aadsts(\d{4,8})")


def explain(code: str) -> Explanation | None:
    """The catalogue's entry for ``code``; for an AADSTS code it has none for, what every such code means here
    and where Entra documents it (codes and texts change: entra reference-error-codes)."""
    wanted = code.strip().lower()
    wanted = wanted if wanted.startswith("aadsts") or not wanted.isdigit() else f"aadsts{wanted}"
    for entry in catalog():
        if wanted in _names(entry):
            return entry
    # Only a code written as AADSTS<n>: a bare unknown number may as well be a typo of a known one.
    match = _AADSTS.fullmatch(code.strip().lower())
    if match is None:
        return None
    number = match.group(1)
    return Explanation(
        f"AADSTS{number}",
        "Entra ID",
        "An Entra ID error this app has no entry for",
        "Entra ID refused the token request with a code outside this catalogue. The tenant keeps its status when "
        "the answer was a 5xx; otherwise the failure is recorded on the tenant's registry entry with Entra's own "
        "description and correlation id.",
        f"Look the code up at https://login.microsoftonline.com/error?code={number} (in a sovereign cloud, the "
        "same path on its sign-in host) and quote the correlation id in a support case.",
    )


def render_markdown() -> str:
    lines = [
        "# Troubleshooting",
        "",
        "Every Entra ID, Key Vault, Dataverse and onboarding error the app can meet, what it means in this app, and "
        "the fix.",
        "`python -m cli explain <code>` prints the same (e.g. `700016`, `0x80072560`, `disabled`).",
        "An AADSTS code not listed here: `explain` points to Entra's own lookup,",
        "`https://login.microsoftonline.com/error?code=<number>`.",
        "Generated from `shared/troubleshooting.py`; a test keeps this file in step.",
        "",
    ]
    for source in ("Entra ID", "Key Vault", "Dataverse", "Onboarding", "Webhooks"):
        lines += [f"## {source}", ""]
        for entry in (e for e in catalog() if e.source == source):
            lines += [
                f"### {entry.code} — {entry.title}",
                "",
                f"**Means:** {entry.meaning}",
                "",
                f"**Fix:** {entry.fix}",
                "",
            ]
    return "\n".join(lines)
