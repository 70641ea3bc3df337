"""The development world `make start` runs: the Contoso Sync app (certificate in Key Vault, read by a managed
identity that is also its federated credential), and two customer tenants — Fabrikam, whose org has our
application user, and Northwind, whose org does not yet — each with a Global Administrator who is System
Administrator of its org, Fabrikam with a clerk too, and rows in their tables. `connect_app` points the world at
the running function app (redirect URIs; and, only when the app does not provision its own at onboarding,
webhooks on every org that deliver to it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from sandbox.entra.directory import GLOBAL_ADMINISTRATOR, ManagedIdentity
from sandbox.entra.issuers import TENANT_TEMPLATE, v1_issuer
from sandbox.net.pki import make_certificate
from sandbox.server import Sandbox
from sandbox.state import SandboxState

logger = logging.getLogger(__name__)

APP_NAME = "Contoso Sync"
CERTIFICATE_NAME = "s2s-client"
WEBHOOK_ENTITIES = ("account", "contact")


@dataclass(frozen=True)
class SeedOrg:
    tenant: str
    url: str
    application_user: bool
    accounts: int
    contacts: int
    admin: str
    clerk: str | None = None


SEED_ORGS = (
    SeedOrg("Fabrikam", "https://fabrikam.crm4.dynamics.com", True, 25, 25, "Grace Admin", "Carl Clerk"),
    SeedOrg("Northwind", "https://northwind.crm.dynamics.com", False, 10, 0, "Nora Admin"),
)


@dataclass
class DevWorld:
    """What the development sandbox knows it made: the app, its certificate's name, the managed identity, and
    every org (seeded or added later) — the snapshot saves exactly these."""

    client_id: str
    certificate_name: str
    managed_identity: dict[str, str]  # client_id, principal_id, tenant_id, name
    orgs: list[str] = field(default_factory=list)
    app_url: str | None = None
    webhook_key: str | None = field(default=None, repr=False)
    webhook_ids: list[tuple[str, str]] = field(default_factory=list)  # (org URL, serviceendpoint id)

    def to_dict(self) -> dict[str, Any]:
        saved = asdict(self)
        for transient in ("app_url", "webhook_key", "webhook_ids"):
            saved.pop(transient)
        return saved

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> DevWorld:
        return cls(
            client_id=saved["client_id"],
            certificate_name=saved["certificate_name"],
            managed_identity=dict(saved["managed_identity"]),
            orgs=list(saved.get("orgs", [])),
        )


def seed_world(state: SandboxState) -> DevWorld:
    """Create the development world in a fresh state (the sandbox must be running: issuers name its host)."""
    home = state.home_tenant_id
    client_id = state.register_application(home_tenant=home, display_name=APP_NAME)
    certificate = make_certificate("contoso-s2s")
    state.add_application_certificate(client_id, certificate.cert_pem)
    state.create_certificate(CERTIFICATE_NAME, certificate)
    identity = state.add_managed_identity(tenant_id=home, name="id-contoso-sync")
    state.grant_vault_secret_access(identity.principal_id)
    world = DevWorld(
        client_id=client_id,
        certificate_name=CERTIFICATE_NAME,
        managed_identity={
            "client_id": identity.client_id,
            "principal_id": identity.principal_id,
            "tenant_id": identity.tenant_id,
            "name": identity.resource_id.rsplit("/", 1)[-1],
        },
    )
    for seed in SEED_ORGS:
        tenant = state.add_tenant(display_name=seed.tenant)
        state.add_org(tenant, seed.url)
        world.orgs.append(seed.url)
        if seed.application_user:
            state.add_application_user(seed.url, client_id)
        admin = state.add_user(tenant, display_name=seed.admin, directory_roles=(GLOBAL_ADMINISTRATOR,))
        state.add_org_user(seed.url, admin.object_id, seed.admin, roles=("System Administrator",))
        if seed.clerk:
            clerk = state.add_user(tenant, display_name=seed.clerk)
            state.add_org_user(seed.url, clerk.object_id, seed.clerk, roles=("Salesperson",))
        if seed.accounts:
            state.seed_rows(seed.url, "accounts", seed.accounts, prefix=f"{seed.tenant} account")
        if seed.contacts:
            state.seed_rows(seed.url, "contacts", seed.contacts, prefix=seed.tenant)
    return world


def managed_identity(world: DevWorld) -> ManagedIdentity:
    mi = world.managed_identity
    return ManagedIdentity(mi["client_id"], mi["principal_id"], mi["tenant_id"])


def connect_app(state: SandboxState, world: DevWorld, app_url: str, webhook_key: str) -> None:
    """Point the world at the function app at `app_url`: its redirect URIs (as given, and with localhost and
    127.0.0.1 swapped), the managed identity as the app's federated credential (its issuer names this run's
    authority host), and a webhook on every org for accounts and contacts that sends `webhook_key` in
    x-functions-key.
    Webhooks from an earlier call are removed first."""
    world.app_url = app_url.rstrip("/")
    world.webhook_key = webhook_key
    callback = f"{world.app_url}/api/consent/callback"
    for uri in {callback, callback.replace("127.0.0.1", "localhost"), callback.replace("localhost", "127.0.0.1")}:
        state.add_redirect_uri(world.client_id, uri)
    identity = managed_identity(world)
    state.add_federated_credential(
        world.client_id, issuer=state.managed_identity_issuer(identity), subject=identity.principal_id
    )
    for org_url, webhook_id in world.webhook_ids:
        state.unregister_webhook(org_url, webhook_id)
    world.webhook_ids = []
    for org_url in world.orgs:
        register_app_webhooks(state, world, org_url)


def app_provisions() -> bool:
    """Whether the app onboards with ONBOARDING_PROVISIONING (its default; `make start` passes this process's
    environment to the app too, so `ONBOARDING_PROVISIONING=false make start` turns it off for both)."""
    return os.environ.get("ONBOARDING_PROVISIONING", "true").strip().lower() not in ("false", "0", "no", "off")


def register_app_webhooks(state: SandboxState, world: DevWorld, org_url: str) -> None:
    """Webhooks on `org_url` that deliver account and contact changes to the connected app (none before
    connect_app). None when the app provisions: onboarding an org registers the app's own webhook there (with the
    org's secret), as in a real environment, and the snapshot keeps it."""
    if world.app_url is None or world.webhook_key is None or app_provisions():
        return
    for entity in WEBHOOK_ENTITIES:
        webhook_id = state.register_webhook(
            org_url,
            f"{world.app_url}/api/webhooks/dataverse",
            auth_type="HttpHeader",  # the function key in a header: no key travels in a URL
            auth_value={"x-functions-key": world.webhook_key},
            entity=entity,
        )
        world.webhook_ids.append((org_url, webhook_id))


def app_settings(sandbox: Sandbox, world: DevWorld) -> dict[str, str]:
    """App settings (NAME -> value) that point the function app at this sandbox and world."""
    settings = {
        "ENTRA_AUTHORITY_HOST": sandbox.authority_host,
        "ENTRA_CLIENT_ID": world.client_id,
        "ENTRA_HOME_TENANT_ID": sandbox.state.home_tenant_id,
        "CREDENTIAL_SOURCE": "key_vault",
        "KEY_VAULT_URL": sandbox.vault_url,
        "KEY_VAULT_CERTIFICATE_NAME": world.certificate_name,
        "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "false",
        "MANAGED_IDENTITY_CLIENT_ID": world.managed_identity["client_id"],
        "APP_DISPLAY_NAME": APP_NAME,
        # The sandbox issues v1 user tokens under its own host (sandbox.entra.issuers), not sts.windows.net.
        "OIDC_V1_ISSUER_TEMPLATE": v1_issuer(sandbox.authority_host, TENANT_TEMPLATE),
        **sandbox.env(),
    }
    if world.app_url:
        settings["ONBOARDING_REDIRECT_URI"] = f"{world.app_url}/api/consent/callback"
    if app_provisions():
        # Onboarding registers the app's own webhook in the org: it sends to the app's receiver with the key the
        # development host serves (a host key is valid for every function) and the org's own secret.
        if world.app_url and world.webhook_key:
            settings["WEBHOOK_RECEIVER_URL"] = f"{world.app_url}/api/webhooks/dataverse"
            settings["WEBHOOK_FUNCTION_KEY"] = world.webhook_key
    else:
        # The dev world registers its webhooks by hand, with no per-org secret: the documented migration mode.
        # Such deliveries are accepted but not trusted for impersonation.
        settings["WEBHOOK_SECRET_REQUIRED"] = "false"
    return settings
