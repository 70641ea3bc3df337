"""The composition root: the only place that turns Settings into concrete adapters.

Functions call ``get_services()``; it builds everything on first use (never at import time) and keeps it for
the worker's life, because MSAL apps and their token caches must be long-lived. Tests pass fakes to
``build_services`` instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.certificate_sources import (
    CertificateProvider,
    CertificateSource,
    FileCertificateSource,
    KeyVaultCertificateSource,
)
from shared.client_assertions import (
    CertificateAssertionSource,
    ClientAssertionSource,
    ManagedIdentityAssertionSource,
)
from shared.dataverse_clients import DataverseClients
from shared.settings import CredentialSource, Settings
from shared.token_provider import TenantTokenProvider

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential


@dataclass
class Services:
    settings: Settings
    tokens: TenantTokenProvider
    dataverse: DataverseClients


def azure_credential(settings: Settings) -> TokenCredential:
    """The app's own Azure identity for Azure resources (Key Vault): the managed identity in Azure, developer
    credentials (Azure CLI and friends) on a workstation."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(
        managed_identity_client_id=settings.managed_identity_client_id,
        exclude_interactive_browser_credential=True,
    )


def build_certificate_source(
    settings: Settings, credential_factory: Callable[[], TokenCredential] | None = None
) -> CertificateSource:
    if settings.credential_source is CredentialSource.CERTIFICATE_FILE:
        assert settings.certificate_path is not None  # guaranteed by Settings validation
        return FileCertificateSource(settings.certificate_path, settings.certificate_password)
    assert settings.key_vault_url is not None and settings.key_vault_certificate_name is not None
    return KeyVaultCertificateSource(
        settings.key_vault_url,
        settings.key_vault_certificate_name,
        credential_factory or (lambda: azure_credential(settings)),
        verify_challenge_resource=settings.key_vault_verify_challenge_resource,
    )


def build_assertion_source(
    settings: Settings, certificate_source: CertificateSource | None = None
) -> ClientAssertionSource:
    if settings.credential_source is CredentialSource.MANAGED_IDENTITY_FEDERATION:
        assert settings.managed_identity_client_id is not None
        return ManagedIdentityAssertionSource(settings.managed_identity_client_id, settings.federation_audience)
    provider = CertificateProvider(
        certificate_source or build_certificate_source(settings),
        refresh_seconds=settings.certificate_refresh_seconds,
    )
    return CertificateAssertionSource(provider, send_certificate_chain=settings.send_certificate_chain)


def build_services(settings: Settings, assertion_source: ClientAssertionSource | None = None) -> Services:
    tokens = TenantTokenProvider(
        client_id=settings.entra_client_id,
        authority_host=settings.entra_authority_host,
        assertion_source=assertion_source or build_assertion_source(settings),
        max_tenants=settings.token_client_cache_size,
        http_timeout=settings.http_timeout_seconds,
    )
    return Services(settings=settings, tokens=tokens, dataverse=DataverseClients(settings, tokens))


_services: Services | None = None
_services_lock = threading.Lock()


def get_services() -> Services:
    """The worker's services, built from the environment on first call. Raises ConfigurationError."""
    global _services  # noqa: PLW0603 - the worker-lifetime singleton is the point
    with _services_lock:
        if _services is None:
            _services = build_services(Settings.from_env())
        return _services
