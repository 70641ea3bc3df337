"""Everything the stand-ins know, in one handle for tests, the demo and the servers: a thin facade over the state
each stand-in owns (sandbox.entra.directory, sandbox.keyvault.vault, sandbox.dataverse.orgs and the webhook hub)
and the instruments they share (counters, injected faults, signing keys). It holds no logic of its own: every
admin method is the owner's bound method, so its docstring and errors are the owner's.
"""

from __future__ import annotations

import threading

from sandbox.counters import Counters
from sandbox.dataverse.orgs import Orgs
from sandbox.dataverse.webhooks.hub import WebhookHub
from sandbox.entra.directory import (
    TOKEN_EXCHANGE_AUDIENCE,
    Application,
    Directory,
    ManagedIdentity,
    RegisteredCertificate,
    ServicePrincipal,
    Tenant,
)
from sandbox.entra.signing import SigningKeyRing
from sandbox.faults import FaultInjector
from sandbox.identifiers import SandboxLookupError, is_guid, normalize_guid
from sandbox.keyvault.vault import PEM_CONTENT_TYPE, PFX_CONTENT_TYPE, SecretVersion, Vault

__all__ = [
    "PEM_CONTENT_TYPE",
    "PFX_CONTENT_TYPE",
    "TOKEN_EXCHANGE_AUDIENCE",
    "Application",
    "ManagedIdentity",
    "RegisteredCertificate",
    "SandboxLookupError",
    "SandboxState",
    "SecretVersion",
    "ServicePrincipal",
    "Tenant",
    "is_guid",
    "normalize_guid",
]


class SandboxState:
    """The sandbox's state: `directory` (Entra ID), `vault` (Key Vault), `orgs` (Dataverse) and `webhooks`
    (the orgs' webhook deliveries), with their admin methods reachable here by name, e.g. `state.add_tenant`
    is `state.directory.add_tenant`.
    """

    def __init__(self, home_tenant_name: str = "Contoso") -> None:
        self.counters = Counters(threading.RLock())
        self.faults = FaultInjector(threading.RLock())
        self.signing_keys = SigningKeyRing(threading.RLock())
        self.directory = Directory(self.counters, self.signing_keys, home_tenant_name)
        self.vault = Vault()
        self.webhooks = WebhookHub(self.counters)
        self.orgs = Orgs(self.directory, self.webhooks)

        # Counters (sandbox.counters) and injected faults (sandbox.faults).
        self.count = self.counters.count
        self.reset_counters = self.counters.reset
        self.inject_fault = self.faults.inject
        self.clear_faults = self.faults.clear

        # Entra ID: signing keys and issuers, tenants, users and their tokens, apps, consent, managed identities.
        directory = self.directory
        self.rotate_signing_key = directory.rotate_signing_key
        self.add_tenant_signing_key = directory.add_tenant_signing_key
        self.token_issuer_template = directory.token_issuer_template
        self.signing_keys_issuer_template = directory.signing_keys_issuer_template
        self.add_tenant = directory.add_tenant
        self.remove_tenant = directory.remove_tenant
        self.find_tenant = directory.find_tenant
        self.list_tenants = directory.list_tenants
        self.get_tenant = directory.get_tenant
        self.add_user = directory.add_user
        self.get_user = directory.get_user
        self.list_users = directory.list_users
        self.issue_user_token = directory.issue_user_token
        self.register_application = directory.register_application
        self.get_application = directory.get_application
        self.find_application = directory.find_application
        self.add_application_certificate = directory.add_application_certificate
        self.remove_application_certificate = directory.remove_application_certificate
        self.add_federated_credential = directory.add_federated_credential
        self.add_redirect_uri = directory.add_redirect_uri
        self.set_application_enabled = directory.set_application_enabled
        self.set_optional_claims = directory.set_optional_claims
        self.grant_consent = directory.grant_consent
        self.revoke_consent = directory.revoke_consent
        self.remove_service_principal = directory.remove_service_principal
        self.find_service_principal = directory.find_service_principal
        self.service_principal_object_id = directory.service_principal_object_id
        self.add_managed_identity = directory.add_managed_identity
        self.managed_identity_issuer = directory.managed_identity_issuer
        self.managed_identities = directory.managed_identities
        self.redeem_assertion = directory.redeem_assertion

        # Key Vault: secret and certificate versions, and who may read them.
        vault = self.vault
        self.grant_vault_secret_access = vault.grant_vault_secret_access
        self.revoke_vault_secret_access = vault.revoke_vault_secret_access
        self.has_vault_secret_access = vault.has_vault_secret_access
        self.set_secret = vault.set_secret
        self.create_certificate = vault.create_certificate
        self.find_secret_version = vault.find_secret_version
        self.list_secret_versions = vault.list_secret_versions
        self.list_latest_secrets = vault.list_latest_secrets

        # Dataverse: orgs, their users, rows and limits, and their webhooks.
        orgs = self.orgs
        self.add_org = orgs.add_org
        self.get_org = orgs.get_org
        self.find_org_store = orgs.find_org_store
        self.add_application_user = orgs.add_application_user
        self.set_application_user = orgs.set_application_user
        self.remove_application_user = orgs.remove_application_user
        self.add_org_user = orgs.add_org_user
        self.set_org_user_read_depth = orgs.set_org_user_read_depth
        self.assign_rows = orgs.assign_rows
        self.seed_rows = orgs.seed_rows
        self.rows = orgs.rows
        self.set_dataverse_limits = orgs.set_dataverse_limits
        self.expire_delta_tokens = orgs.expire_delta_tokens
        self.dataverse_peak_concurrency = orgs.dataverse_peak_concurrency
        self.register_webhook = orgs.register_webhook
        self.get_webhook = orgs.get_webhook
        self.unregister_webhook = orgs.unregister_webhook
        self.webhook_deliveries = orgs.webhook_deliveries
        self.set_webhook_timeout = orgs.set_webhook_timeout
        self.wait_for_webhooks = orgs.wait_for_webhooks
        self.emit_webhook_event = orgs.emit_webhook_event

    # The directory's settings, read and written here by tests and Sandbox.start().

    @property
    def authority_host(self) -> str | None:
        return self.directory.authority_host

    @authority_host.setter
    def authority_host(self, value: str | None) -> None:
        self.directory.authority_host = value

    @property
    def reject_assertion_replay(self) -> bool:
        return self.directory.reject_assertion_replay

    @reject_assertion_replay.setter
    def reject_assertion_replay(self, value: bool) -> None:
        self.directory.reject_assertion_replay = value

    @property
    def home_tenant_id(self) -> str:
        return self.directory.home_tenant_id

    @property
    def subscription_id(self) -> str:
        return self.directory.subscription_id

    @property
    def default_user_client_id(self) -> str:
        return self.directory.default_user_client_id
