"""The Key Vault stand-in with the real SecretClient: challenge, managed identity and app credentials,
PEM and PFX certificate secrets, rotation, versions, 404 and 403.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import CertificateCredential, ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient
from cryptography.hazmat.primitives.serialization import pkcs12

from sandbox import Sandbox
from sandbox.demo import DemoSeed
from sandbox.net.pki import CertificateBundle, make_certificate

from .conftest import RegisteredApp

pytestmark = pytest.mark.integration


@pytest.fixture
def client(sandbox_env: Sandbox, demo: DemoSeed) -> SecretClient:
    credential = ManagedIdentityCredential(client_id=demo.managed_identity.client_id)
    return SecretClient(sandbox_env.vault_url, credential, verify_challenge_resource=False)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_anonymous_request_gets_bearer_challenge(sandbox: Sandbox) -> None:
    response = requests.get(
        f"{sandbox.vault_url}secrets/anything/",
        params={"api-version": "2025-07-01"},
        verify=str(sandbox.ca_bundle_path),
        timeout=5,
    )

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer authorization="{sandbox.authority_host}/{sandbox.state.home_tenant_id}", '
        'resource="https://vault.azure.net"'
    )
    assert response.json()["error"]["code"] == "Unauthorized"


def test_reads_pem_certificate_secret_with_managed_identity(
    sandbox: Sandbox, client: SecretClient, demo: DemoSeed
) -> None:
    before = sandbox.state.count("vault_get", name=demo.certificate_name)

    secret = client.get_secret(demo.certificate_name)

    bundle = CertificateBundle.from_pem(secret.value or "")
    assert bundle.sha256_x5t == demo.certificate.sha256_x5t
    assert secret.properties.content_type == "application/x-pem-file"
    assert secret.properties.managed is True
    assert secret.properties.key_id == f"{sandbox.vault_url}keys/{demo.certificate_name}/{secret.properties.version}"
    assert secret.properties.expires_on is not None
    assert secret.properties.expires_on.timestamp() == int(demo.certificate.not_after.timestamp())
    assert sandbox.state.count("vault_get", name=demo.certificate_name) == before + 1


def test_reads_pfx_certificate_secret_without_password(sandbox: Sandbox, client: SecretClient) -> None:
    name = _unique("pfx")
    certificate = make_certificate("pfx-client")
    sandbox.state.create_certificate(name, certificate, content_type="application/x-pkcs12")

    secret = client.get_secret(name)

    key, cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(secret.value or ""), None)
    assert secret.properties.content_type == "application/x-pkcs12"
    assert key is not None
    assert cert is not None
    assert cert.serial_number == certificate.certificate.serial_number


def test_latest_version_after_rotation_and_older_version_by_id(sandbox: Sandbox, client: SecretClient) -> None:
    name = _unique("rotating")
    first, second = make_certificate("gen-1"), make_certificate("gen-2")
    old_version = sandbox.state.create_certificate(name, first)
    new_version = sandbox.state.create_certificate(name, second)

    latest = client.get_secret(name)
    older = client.get_secret(name, old_version)
    versions = {p.version for p in client.list_properties_of_secret_versions(name)}

    assert latest.properties.version == new_version
    assert CertificateBundle.from_pem(latest.value or "").sha256_x5t == second.sha256_x5t
    assert latest.properties.previous_version == old_version
    assert CertificateBundle.from_pem(older.value or "").sha256_x5t == first.sha256_x5t
    assert versions == {old_version, new_version}
    assert len(new_version) == 32
    assert int(new_version, 16) >= 0


def test_lists_secret_properties(sandbox: Sandbox, client: SecretClient, demo: DemoSeed) -> None:
    name = _unique("plain")
    sandbox.state.set_secret(name, "hunter2", content_type="text/plain")

    listed = {p.name: p for p in client.list_properties_of_secrets()}

    assert listed[name].content_type == "text/plain"
    assert listed[demo.certificate_name].managed is True


def test_out_content_type_converts_certificate_secret(sandbox: Sandbox, client: SecretClient) -> None:
    name = _unique("convert")
    certificate = make_certificate("convert")
    sandbox.state.create_certificate(name, certificate)

    secret = client.get_secret(name, out_content_type="application/x-pkcs12")

    key, _, _ = pkcs12.load_key_and_certificates(base64.b64decode(secret.value or ""), None)
    assert secret.properties.content_type == "application/x-pkcs12"
    assert key is not None


def test_missing_secret_raises_resource_not_found(client: SecretClient) -> None:
    with pytest.raises(ResourceNotFoundError, match=r"SecretNotFound|was not found"):
        client.get_secret(_unique("missing"))


def test_missing_version_raises_resource_not_found(client: SecretClient, demo: DemoSeed) -> None:
    with pytest.raises(ResourceNotFoundError):
        client.get_secret(demo.certificate_name, uuid.uuid4().hex)


def test_identity_without_role_gets_403(sandbox_env: Sandbox) -> None:
    outsider = sandbox_env.state.add_managed_identity()
    client = SecretClient(
        sandbox_env.vault_url,
        ManagedIdentityCredential(client_id=outsider.client_id),
        verify_challenge_resource=False,
    )

    with pytest.raises(HttpResponseError) as raised:
        client.get_secret("s2s-client")

    assert raised.value.status_code == 403
    assert raised.value.error is not None
    assert raised.value.error.code == "Forbidden"


def test_app_certificate_credential_in_home_tenant_reads_secret(
    sandbox_env: Sandbox, demo: DemoSeed, new_app: Callable[..., RegisteredApp]
) -> None:
    state = sandbox_env.state
    app = new_app()
    state.grant_vault_secret_access(state.service_principal_object_id(state.home_tenant_id, app.client_id))
    credential = CertificateCredential(
        state.home_tenant_id,
        app.client_id,
        certificate_data=app.certificate.combined_pem.encode("ascii"),
        authority=sandbox_env.authority_host,
        disable_instance_discovery=True,
    )
    client = SecretClient(sandbox_env.vault_url, credential, verify_challenge_resource=False)

    secret = client.get_secret(demo.certificate_name)

    assert secret.value is not None
    assert state.count("token_issued", client_id=app.client_id, resource="https://vault.azure.net") == 1
