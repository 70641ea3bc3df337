"""The auth module end to end: real MSAL, azure-identity and SecretClient against the cloud-in-a-box."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace

import jwt
import pytest

from sandbox.net.pki import make_certificate, pem_to_pfx
from shared.bootstrap import build_services
from shared.errors import CertificateError, TokenAcquisitionError
from shared.settings import CredentialSource, Settings
from tests.integration.conftest import key_vault_app, key_vault_settings

pytestmark = pytest.mark.integration

ORG = "https://contoso.crm.dynamics.com"


@dataclass
class World:
    sandbox: object
    client_id: str
    home: str
    tenants: list[str]
    mi_client_id: str
    cert_name: str
    settings: Settings
    bundle: object


@pytest.fixture
def world(sandbox, sandbox_env):
    """A fresh app with its own certificate in Key Vault, a managed identity and two consenting tenants."""
    st = sandbox.state
    kv = key_vault_app(st, "S2S test app", "cert")
    tenants = []
    for name in ("Fabrikam", "Northwind"):
        tenant = st.add_tenant(display_name=name)
        st.grant_consent(tenant, kv.client_id)
        tenants.append(tenant)
    settings = key_vault_settings(sandbox, kv, certificate_refresh_seconds=3600)
    return World(
        sandbox, kv.client_id, kv.home, tenants, kv.managed_identity_client_id, kv.cert_name, settings, kv.bundle
    )


def verified_claims(sandbox, token: str, audience: str) -> dict:
    import requests

    header = jwt.get_unverified_header(token)
    keys = requests.get(f"{sandbox.authority_host}/common/discovery/v2.0/keys", timeout=10).json()["keys"]
    jwk = next(k for k in keys if k["kid"] == header["kid"])
    return jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["RS256"], audience=audience)


def test_key_vault_certificate_gives_tokens_for_two_tenants_and_then_serves_from_cache(world):
    services = build_services(world.settings)
    sb = world.sandbox
    for tenant in world.tenants:
        first = services.tokens.get_token(tenant, ORG)
        second = services.tokens.get_token(tenant, ORG)
        assert (first.source, second.source) == ("identity_provider", "cache")
        claims = verified_claims(sb, first.token, ORG)
        assert claims["tid"] == tenant
        assert claims["appid"] == world.client_id
        assert claims["oid"] == sb.state.service_principal_object_id(tenant, world.client_id)
        assert sb.state.count("token", tenant=tenant) == 1
    assert sb.state.count("vault_get", name=world.cert_name) == 1


def test_pfx_backed_key_vault_certificate_works(world):
    st = world.sandbox.state
    bundle = make_certificate("s2s-pfx")
    st.add_application_certificate(world.client_id, bundle.cert_pem)
    name = f"pfx-{world.client_id[:8]}"
    st.create_certificate(name, bundle, content_type="application/x-pkcs12")
    services = build_services(replace(world.settings, key_vault_certificate_name=name))
    assert services.tokens.get_token(world.tenants[0], ORG).source == "identity_provider"
    described = services.tokens.assertion_source.describe()
    assert described["subject"] == "CN=s2s-pfx"
    assert described["sha1_thumbprint"] == bundle.sha1_thumbprint_hex


def test_fifty_threads_first_token_is_one_request(world):
    services = build_services(world.settings)
    barrier = threading.Barrier(50)
    got: list[str] = []

    def ask():
        barrier.wait()
        got.append(services.tokens.get_token(world.tenants[0], ORG).token)

    threads = [threading.Thread(target=ask) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 50 and len(set(got)) == 1
    assert world.sandbox.state.count("token", tenant=world.tenants[0]) == 1


def test_rotation_is_picked_up_after_the_refresh_interval(world):
    st = world.sandbox.state
    services = build_services(replace(world.settings, certificate_refresh_seconds=1))
    services.tokens.get_token(world.tenants[0], ORG)
    v1 = services.tokens.assertion_source.describe()["version"]
    new = make_certificate("s2s-rotated")
    st.add_application_certificate(world.client_id, new.cert_pem)
    v2 = st.create_certificate(world.cert_name, new)
    time.sleep(1.2)
    # A token nobody has cached yet: MSAL asks for an assertion, which is signed with the new version.
    services.tokens.get_token(world.tenants[0], "https://other.crm4.dynamics.com")
    described = services.tokens.assertion_source.describe()
    assert described["version"] == v2 != v1
    assert described["sha1_thumbprint"] == new.sha1_thumbprint_hex


def test_rejected_old_certificate_is_reread_and_retried_once(world):
    st = world.sandbox.state
    services = build_services(world.settings)  # refresh interval of an hour: only the rejection can re-read
    services.tokens.get_token(world.tenants[0], ORG)
    new = make_certificate("s2s-rotated")
    st.add_application_certificate(world.client_id, new.cert_pem)
    st.create_certificate(world.cert_name, new)
    st.remove_application_certificate(world.client_id, world.bundle.cert_pem)
    st.reset_counters()
    token = services.tokens.get_token(world.tenants[1], ORG)
    assert token.source == "identity_provider"
    assert st.count("token", tenant=world.tenants[1]) == 2  # rejected once (AADSTS700027), then accepted
    assert st.count("vault_get", name=world.cert_name) == 1
    assert services.tokens.assertion_source.describe()["sha1_thumbprint"] == new.sha1_thumbprint_hex


def test_tenant_that_never_consented_gets_700016_with_correlation_id(world):
    stranger = world.sandbox.state.add_tenant(display_name="Stranger")
    services = build_services(world.settings)
    with pytest.raises(TokenAcquisitionError) as info:
        services.tokens.get_token(stranger, ORG)
    err = info.value
    assert err.aadsts_code == 700016
    assert err.category == "consent_missing"
    assert err.tenant_id == stranger
    assert err.correlation_id
    assert "consent" in err.fix


def test_revoked_consent_is_65001_and_unknown_tenant_is_90002(world):
    st = world.sandbox.state
    st.revoke_consent(world.tenants[1], world.client_id)
    services = build_services(world.settings)
    with pytest.raises(TokenAcquisitionError) as revoked:
        services.tokens.get_token(world.tenants[1], ORG)
    assert revoked.value.aadsts_code == 65001
    with pytest.raises(TokenAcquisitionError) as unknown:
        services.tokens.get_token("99999999-9999-9999-9999-999999999999", ORG)
    assert unknown.value.aadsts_code == 90002


def test_disabled_app_is_7000112(world):
    world.sandbox.state.set_application_enabled(world.client_id, False)
    services = build_services(world.settings)
    with pytest.raises(TokenAcquisitionError) as info:
        services.tokens.get_token(world.tenants[0], ORG)
    assert info.value.aadsts_code == 7000112
    assert info.value.category == "app_disabled"


def test_secretless_managed_identity_federation_reaches_a_customer_tenant(world):
    st = world.sandbox.state
    mi = st.add_managed_identity(tenant_id=world.home)
    st.add_federated_credential(world.client_id, f"{world.sandbox.authority_host}/{world.home}/v2.0", mi.principal_id)
    settings = replace(
        world.settings,
        credential_source=CredentialSource.MANAGED_IDENTITY_FEDERATION,
        managed_identity_client_id=mi.client_id,
    )
    services = build_services(settings)
    token = services.tokens.get_token(world.tenants[1], ORG)
    assert verified_claims(world.sandbox, token.token, ORG)["tid"] == world.tenants[1]
    assert services.tokens.assertion_source.describe()["credential"] == "managed_identity_federation"
    assert st.count("vault_get", name=world.cert_name) == 0


def test_identity_without_vault_access_gets_a_clear_error(world):
    st = world.sandbox.state
    outsider = st.add_managed_identity(tenant_id=world.home)
    services = build_services(replace(world.settings, managed_identity_client_id=outsider.client_id))
    with pytest.raises(CertificateError, match="Key Vault Secrets User"):
        services.tokens.get_token(world.tenants[0], ORG)


def test_missing_key_vault_certificate_is_named(world):
    services = build_services(replace(world.settings, key_vault_certificate_name="no-such-cert"))
    with pytest.raises(CertificateError, match="no-such-cert"):
        services.tokens.get_token(world.tenants[0], ORG)


def test_certificate_file_with_password(world, tmp_path):
    path = tmp_path / "client.pfx"
    path.write_bytes(pem_to_pfx(world.bundle, b"pa55"))
    settings = replace(
        world.settings,
        credential_source=CredentialSource.CERTIFICATE_FILE,
        certificate_path=str(path),
        certificate_password="pa55",
    )
    services = build_services(settings)
    assert services.tokens.get_token(world.tenants[0], ORG).source == "identity_provider"
    assert world.sandbox.state.count("vault_get", name=world.cert_name) == 0


def test_no_token_assertion_or_key_reaches_the_logs(world, caplog):
    caplog.set_level(logging.INFO)
    services = build_services(replace(world.settings, certificate_refresh_seconds=1))
    token = services.tokens.get_token(world.tenants[0], ORG)
    assertion = services.tokens.assertion_source({"client_id": world.client_id, "token_endpoint": "x"})
    text = caplog.text
    assert "Token acquired for tenant" in text
    assert token.token not in text
    assert assertion.split(".")[2] not in text
    key_line = world.bundle.key_pem.splitlines()[1]
    assert key_line not in text
