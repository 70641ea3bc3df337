"""The demo scenario: the Contoso Sync app, its certificate in Key Vault, a managed identity that may use it,
and two customer tenants that consented; plus the app settings that point the project at it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.entra.directory import ManagedIdentity
from sandbox.net.pki import CertificateBundle, make_certificate
from sandbox.server import Sandbox
from sandbox.state import SandboxState

CERTIFICATE_NAME = "s2s-client"
# The onboarding callback as served by `python -m devhost` on its default port (local.settings.example.json).
DEMO_REDIRECT_URIS = (
    "http://localhost:7071/api/consent/callback",
    "http://127.0.0.1:7071/api/consent/callback",
)


@dataclass(frozen=True)
class DemoSeed:
    client_id: str
    home_tenant: str
    tenant_ids: tuple[str, ...]  # the consenting customer tenants: Fabrikam, Northwind
    fabrikam_tenant: str
    northwind_tenant: str
    managed_identity: ManagedIdentity
    certificate: CertificateBundle
    certificate_name: str = CERTIFICATE_NAME


def seed_demo(state: SandboxState, redirect_uris: tuple[str, ...] = DEMO_REDIRECT_URIS) -> DemoSeed:
    """Register the demo scenario in `state` and describe it; `redirect_uris` are registered on the app for
    the admin-consent page.

    Call it once the sandbox runs (the federated credential names the running authority host).
    Raises RuntimeError before that.
    """
    if state.authority_host is None:
        raise RuntimeError("seed_demo needs a running Sandbox: the federated credential names its host")
    home = state.home_tenant_id
    client_id = state.register_application(home_tenant=home, display_name="Contoso Sync")
    certificate = make_certificate("contoso-s2s")
    state.add_application_certificate(client_id, certificate.cert_pem)
    for uri in redirect_uris:
        state.add_redirect_uri(client_id, uri)
    state.create_certificate(CERTIFICATE_NAME, certificate)

    identity = state.add_managed_identity(tenant_id=home, name="id-contoso-sync")
    state.grant_vault_secret_access(identity.principal_id)
    # The managed identity as a federated credential of the app (protocol §2): issuer is the v2 issuer of
    # the identity's tenant, subject its principal id.
    state.add_federated_credential(
        client_id, issuer=state.managed_identity_issuer(identity), subject=identity.principal_id
    )

    fabrikam = state.add_tenant(display_name="Fabrikam")
    northwind = state.add_tenant(display_name="Northwind")
    for tenant in (fabrikam, northwind):
        state.grant_consent(tenant, client_id)
    return DemoSeed(
        client_id=client_id,
        home_tenant=home,
        tenant_ids=(fabrikam, northwind),
        fabrikam_tenant=fabrikam,
        northwind_tenant=northwind,
        managed_identity=identity,
        certificate=certificate,
    )


def demo_settings(sandbox: Sandbox, seed: DemoSeed) -> dict[str, str]:
    """App settings (NAME -> value) that point the project at the running sandbox and the demo seed."""
    return {
        "ENTRA_AUTHORITY_HOST": sandbox.authority_host,
        "ENTRA_CLIENT_ID": seed.client_id,
        "ENTRA_HOME_TENANT_ID": seed.home_tenant,
        "KEY_VAULT_URL": sandbox.vault_url,
        "KEY_VAULT_CERTIFICATE_NAME": seed.certificate_name,
        "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "false",
        "MANAGED_IDENTITY_CLIENT_ID": seed.managed_identity.client_id,
        "IDENTITY_ENDPOINT": sandbox.identity_endpoint,
        "IDENTITY_HEADER": sandbox.identity_header,
        "REQUESTS_CA_BUNDLE": str(sandbox.ca_bundle_path),
        "SSL_CERT_FILE": str(sandbox.ca_bundle_path),
        # Dataverse org URLs stay real (https://<org>.crm4.dynamics.com); the sandbox proxy serves them.
        "HTTPS_PROXY": sandbox.https_proxy,
        "NO_PROXY": "127.0.0.1,localhost",
        "SANDBOX_TENANTS": ",".join(seed.tenant_ids),
    }
