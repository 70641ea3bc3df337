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
    source: str  # "Entra ID", "Key Vault" or "Dataverse"
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
        Explanation(name, "Entra ID", conditions[name], info.meaning + _TRANSIENT_VIEW, info.fix)
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
]


def catalog() -> list[Explanation]:
    return _entra() + _KEY_VAULT + _DATAVERSE


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
        "Every Entra ID, Key Vault and Dataverse error the app can meet, what it means in this app, and the fix.",
        "`python -m cli explain <code>` prints the same (e.g. `700016`, `0x80072560`, `disabled`).",
        "An AADSTS code not listed here: `explain` points to Entra's own lookup,",
        "`https://login.microsoftonline.com/error?code=<number>`.",
        "Generated from `shared/troubleshooting.py`; a test keeps this file in step.",
        "",
    ]
    for source in ("Entra ID", "Key Vault", "Dataverse"):
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
