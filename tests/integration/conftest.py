"""Fixtures for integration tests against the sandbox's stand-ins: one sandbox per session, per-test env vars,
and factories that register fresh apps and Dataverse orgs so tests never share directory or org state.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jwt
import msal
import pytest

from sandbox import Sandbox
from sandbox.dataverse.org import Org
from sandbox.demo import DemoSeed, seed_demo
from sandbox.net.pki import CertificateBundle, make_certificate
from shared.settings import CredentialSource, Settings


def app_with_certificate(
    state: Any, name: str, cert_dir: Path | None = None, *, days: int = 365
) -> tuple[str, CertificateBundle, Path]:
    """Register an app with a fresh certificate; with ``cert_dir``, its key and certificate are also written as
    one PEM file there (what ``CREDENTIAL_SOURCE=certificate_file`` reads). Returns (client id, bundle, path)."""
    client_id = state.register_application(display_name=name)
    bundle = make_certificate(name.lower().replace(" ", "-")[:40], days=days)
    state.add_application_certificate(client_id, bundle.cert_pem)
    path = (cert_dir or Path()) / f"{client_id}.pem"
    if cert_dir is not None:
        path.write_text(bundle.key_pem + bundle.cert_pem)
    return client_id, bundle, path


def cert_file_settings(sandbox: Sandbox, client_id: str, cert_path: Path, **overrides: Any) -> Settings:
    """Settings for the app ``client_id`` signing with a certificate file, against the sandbox's Entra ID."""
    return Settings(
        entra_client_id=client_id,
        entra_home_tenant_id=sandbox.state.home_tenant_id,
        entra_authority_host=sandbox.authority_host,
        credential_source=CredentialSource.CERTIFICATE_FILE,
        certificate_path=str(cert_path),
        **overrides,
    )


class KeyVaultApp(NamedTuple):
    client_id: str
    home: str
    bundle: CertificateBundle
    cert_name: str
    version: str
    managed_identity_client_id: str


def key_vault_app(state: Any, display_name: str, prefix: str) -> KeyVaultApp:
    """An app of a publisher tenant whose certificate (registered on the app) lives in the sandbox's Key Vault,
    read by a user-assigned managed identity that may read secrets there."""
    home = state.add_tenant(display_name="Publisher")
    client_id = state.register_application(home_tenant=home, display_name=display_name)
    bundle = make_certificate(f"{prefix}-cert")
    state.add_application_certificate(client_id, bundle.cert_pem)
    cert_name = f"{prefix}-{client_id[:8]}"
    version = state.create_certificate(cert_name, bundle)
    identity = state.add_managed_identity(tenant_id=home)
    state.grant_vault_secret_access(identity.principal_id)
    return KeyVaultApp(client_id, home, bundle, cert_name, version, identity.client_id)


def key_vault_settings(sandbox: Sandbox, app: KeyVaultApp, **overrides: Any) -> Settings:
    """Settings for ``app`` reading its certificate from the sandbox's Key Vault with its managed identity."""
    return Settings(
        entra_client_id=app.client_id,
        entra_home_tenant_id=app.home,
        entra_authority_host=sandbox.authority_host,
        key_vault_url=sandbox.vault_url,
        key_vault_certificate_name=app.cert_name,
        key_vault_verify_challenge_resource=False,
        managed_identity_client_id=app.managed_identity_client_id,
        **overrides,
    )


class CustomerOrg(NamedTuple):
    tenant: str
    org_url: str
    app_user_id: str


def customer_org(
    state: Any, client_id: str, prefix: str, *, suffix: str = "crm.dynamics.com", rows: int = 0, **user_options: Any
) -> CustomerOrg:
    """A customer tenant that consented to the app, with one org where the app has its application user (and
    ``rows`` accounts)."""
    tenant = state.add_tenant(display_name=f"{prefix.title()} customer {uuid.uuid4().hex[:6]}")
    state.grant_consent(tenant, client_id)
    org_url = f"https://{prefix}{uuid.uuid4().hex[:8]}.{suffix}"
    state.add_org(tenant, org_url)
    app_user_id = state.add_application_user(org_url, client_id, **user_options)
    if rows:
        state.seed_rows(org_url, "accounts", rows)
    return CustomerOrg(tenant, org_url, app_user_id)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as running:
        yield running


@pytest.fixture(scope="session")
def demo(sandbox: Sandbox) -> DemoSeed:
    return seed_demo(sandbox.state)


@pytest.fixture
def sandbox_env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """Point REQUESTS_CA_BUNDLE, SSL_CERT_FILE, IDENTITY_ENDPOINT, IDENTITY_HEADER and HTTPS_PROXY/NO_PROXY
    at the sandbox.
    """
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    return sandbox


@dataclass(frozen=True)
class RegisteredApp:
    client_id: str
    certificate: CertificateBundle
    tenant_id: str  # a customer tenant that consented

    def pem_credential(self) -> dict[str, str]:
        """MSAL >= 1.35 form: PS256 + x5t#S256 + x5c (protocol §2)."""
        return {"private_key": self.certificate.key_pem, "public_certificate": self.certificate.cert_pem}

    def thumbprint_credential(self) -> dict[str, str]:
        """Legacy form: RS256 + SHA-1 x5t."""
        return {"private_key": self.certificate.key_pem, "thumbprint": self.certificate.sha1_thumbprint_hex}


@pytest.fixture
def new_app(sandbox: Sandbox) -> Callable[..., RegisteredApp]:
    """Register an app with a certificate and consent it in a fresh customer tenant."""

    def register(*, consent: bool = True, display_name: str = "Test App") -> RegisteredApp:
        state = sandbox.state
        client_id = state.register_application(display_name=display_name)
        certificate = make_certificate(f"cert-{client_id[:8]}")
        state.add_application_certificate(client_id, certificate.cert_pem)
        tenant_id = state.add_tenant(display_name=f"Customer {uuid.uuid4().hex[:6]}")
        if consent:
            state.grant_consent(tenant_id, client_id)
        return RegisteredApp(client_id, certificate, tenant_id)

    return register


@pytest.fixture
def cca(sandbox_env: Sandbox) -> Callable[..., msal.ConfidentialClientApplication]:
    """Build a real MSAL confidential client against a sandbox tenant."""

    def build(client_id: str, tenant_id: str, credential: Any) -> msal.ConfidentialClientApplication:
        return msal.ConfidentialClientApplication(
            client_id,
            authority=f"{sandbox_env.authority_host}/{tenant_id}",
            instance_discovery=False,
            client_credential=credential,
        )

    return build


def craft_assertion(
    app: RegisteredApp,
    token_endpoint: str,
    *,
    signing_key_pem: str | None = None,
    lifetime: int = 600,
    issued_at: float | None = None,
    jti: str | None = None,
    audience: str | None = None,
) -> str:
    """A client assertion built by hand (PS256 + x5t#S256), for cases MSAL will not produce."""
    now = issued_at if issued_at is not None else time.time()
    claims = {
        "aud": audience or token_endpoint,
        "iss": app.client_id,
        "sub": app.client_id,
        "jti": jti or str(uuid.uuid4()),
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now + lifetime),
    }
    return jwt.encode(
        claims,
        signing_key_pem or app.certificate.key_pem,
        algorithm="PS256",
        headers={"x5t#S256": app.certificate.sha256_x5t},
    )


@pytest.fixture
def assertion_factory(sandbox: Sandbox) -> Callable[..., str]:
    def build(app: RegisteredApp, **options: Any) -> str:
        endpoint = f"{sandbox.authority_host}/{app.tenant_id}/oauth2/v2.0/token"
        return craft_assertion(app, endpoint, **options)

    return build


@dataclass(frozen=True)
class DataverseOrg:
    """A fresh org in a fresh customer tenant, an app consented there and (usually) its application user."""

    org: Org
    app: RegisteredApp
    app_user_id: str | None
    token: str  # an app-only access token for the org, from MSAL against the sandbox's Entra

    @property
    def url(self) -> str:
        return self.org.url

    @property
    def api(self) -> str:
        return f"{self.org.url}/api/data/v9.2"

    def headers(self, **extra: str) -> dict[str, str]:
        """Authorization plus the OData headers Microsoft's samples send; `extra` adds or overrides."""
        return {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
            **extra,
        }


@pytest.fixture
def new_org(
    sandbox_env: Sandbox,
    new_app: Callable[..., RegisteredApp],
    cca: Callable[..., msal.ConfidentialClientApplication],
) -> Callable[..., DataverseOrg]:
    """Create an org (https://org<random>.<suffix>) whose app gets a token through MSAL; HTTPS_PROXY is set,
    so plain `requests` reaches the org URL unchanged.
    """

    def create(*, suffix: str = "crm4.dynamics.com", app_user: bool = True, **user_options: Any) -> DataverseOrg:
        state = sandbox_env.state
        app = new_app()
        org = state.add_org(app.tenant_id, f"https://org{uuid.uuid4().hex[:12]}.{suffix}")
        user_id = state.add_application_user(org.url, app.client_id, **user_options) if app_user else None
        result = cca(app.client_id, app.tenant_id, app.pem_credential()).acquire_token_for_client(
            [f"{org.url}/.default"]
        )
        assert "access_token" in result, result
        return DataverseOrg(org, app, user_id, result["access_token"])

    return create
