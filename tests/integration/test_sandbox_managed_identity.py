"""The App Service managed identity stand-in with azure-identity's ManagedIdentityCredential, and the managed
identity used as a federated credential of a multi-tenant app (ClientAssertionCredential, protocol §2).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import jwt
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientAssertionCredential, ManagedIdentityCredential

from sandbox import Sandbox
from sandbox.demo import DemoSeed

from .conftest import RegisteredApp

pytestmark = pytest.mark.integration

VAULT_SCOPE = "https://vault.azure.net/.default"
EXCHANGE_SCOPE = "api://AzureADTokenExchange/.default"
DATAVERSE_SCOPE = "https://contoso.crm.dynamics.com/.default"


def _claims(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


def test_user_assigned_identity_gets_vault_token(sandbox_env: Sandbox, demo: DemoSeed) -> None:
    identity = demo.managed_identity
    before = sandbox_env.state.count("msi_token", client_id=identity.client_id)

    token = ManagedIdentityCredential(client_id=identity.client_id).get_token(VAULT_SCOPE)

    claims = _claims(token.token)
    assert claims["aud"] == "https://vault.azure.net"
    assert claims["oid"] == identity.principal_id
    assert claims["appid"] == identity.client_id
    assert claims["tid"] == identity.tenant_id
    assert claims["iss"] == f"{sandbox_env.authority_host}/{identity.tenant_id}/"
    assert token.expires_on > time.time() + 3600
    assert sandbox_env.state.count("msi_token", client_id=identity.client_id) == before + 1


def test_token_exchange_token_has_v2_issuer_and_principal_subject(sandbox_env: Sandbox, demo: DemoSeed) -> None:
    identity = demo.managed_identity

    token = ManagedIdentityCredential(client_id=identity.client_id).get_token(EXCHANGE_SCOPE)

    claims = _claims(token.token)
    assert claims["aud"] == "api://AzureADTokenExchange"
    assert claims["iss"] == f"{sandbox_env.authority_host}/{identity.tenant_id}/v2.0"
    assert claims["sub"] == identity.principal_id


def test_unknown_client_id_is_refused(sandbox_env: Sandbox) -> None:
    credential = ManagedIdentityCredential(client_id=str(uuid.uuid4()))

    with pytest.raises(ClientAuthenticationError):
        credential.get_token(VAULT_SCOPE)


def test_request_without_identity_header_is_refused(sandbox: Sandbox) -> None:
    response = requests.get(
        sandbox.identity_endpoint,
        params={"api-version": "2019-08-01", "resource": "https://vault.azure.net"},
        timeout=5,
    )

    assert response.status_code == 401
    assert response.json()["statusCode"] == 401


def test_managed_identity_federated_credential_gets_app_token_in_customer_tenant(
    sandbox_env: Sandbox, demo: DemoSeed
) -> None:
    identity = demo.managed_identity
    mi = ManagedIdentityCredential(client_id=identity.client_id)
    credential = ClientAssertionCredential(
        demo.northwind_tenant,
        demo.client_id,
        lambda: mi.get_token(EXCHANGE_SCOPE).token,
        authority=sandbox_env.authority_host,
        disable_instance_discovery=True,
    )

    token = credential.get_token(DATAVERSE_SCOPE)

    claims = _claims(token.token)
    assert claims["tid"] == demo.northwind_tenant
    assert claims["appid"] == demo.client_id
    assert claims["oid"] == sandbox_env.state.service_principal_object_id(demo.northwind_tenant, demo.client_id)
    assert sandbox_env.state.count("client_assertion", client_id=demo.client_id, kind="federated") >= 1


def test_app_without_federated_credential_is_refused_with_70021(
    sandbox_env: Sandbox, demo: DemoSeed, new_app: Callable[..., RegisteredApp]
) -> None:
    app = new_app()
    mi = ManagedIdentityCredential(client_id=demo.managed_identity.client_id)
    credential = ClientAssertionCredential(
        app.tenant_id,
        app.client_id,
        lambda: mi.get_token(EXCHANGE_SCOPE).token,
        authority=sandbox_env.authority_host,
        disable_instance_discovery=True,
    )

    with pytest.raises(ClientAuthenticationError, match="AADSTS70021"):
        credential.get_token(DATAVERSE_SCOPE)
