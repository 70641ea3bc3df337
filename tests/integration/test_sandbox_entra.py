"""The Entra stand-in with the real MSAL and azure-identity clients: tokens, caching, discovery, and each
AADSTS error surfacing in MSAL's result dict.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import msal
import pytest
import requests
from azure.identity import CertificateCredential

from sandbox import Sandbox
from sandbox.net.pki import make_certificate

from .conftest import RegisteredApp

pytestmark = pytest.mark.integration

DATAVERSE_SCOPE = "https://contoso.crm.dynamics.com/.default"
DATAVERSE = "https://contoso.crm.dynamics.com"

AppFactory = Callable[..., RegisteredApp]
CcaFactory = Callable[..., msal.ConfidentialClientApplication]


def _json(sandbox: Sandbox, url: str) -> Any:
    response = requests.get(url, verify=str(sandbox.ca_bundle_path), timeout=5)
    response.raise_for_status()
    return response.json()


def _verify_with_jwks(sandbox: Sandbox, token: str, tenant_id: str, audience: str) -> dict[str, Any]:
    """Validate like a resource would: v1 metadata gives the issuer, the JWKS gives the key by kid."""
    metadata = _json(sandbox, f"{sandbox.authority_host}/{tenant_id}/.well-known/openid-configuration")
    keys = _json(sandbox, metadata["jwks_uri"])["keys"]
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWK(next(k for k in keys if k["kid"] == kid))
    return jwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=metadata["issuer"])


def test_msal_public_certificate_gets_token_then_serves_cache(
    sandbox: Sandbox, new_app: AppFactory, cca: CcaFactory
) -> None:
    app = new_app()
    client = cca(app.client_id, app.tenant_id, app.pem_credential())

    first = client.acquire_token_for_client([DATAVERSE_SCOPE])
    second = client.acquire_token_for_client([DATAVERSE_SCOPE])

    assert first["token_source"] == "identity_provider", first
    assert first["token_type"] == "Bearer"
    assert first["expires_in"] > 3000
    assert second["token_source"] == "cache"
    assert second["access_token"] == first["access_token"]
    state = sandbox.state
    assert state.count("token", tenant=app.tenant_id, client_id=app.client_id) == 1
    assert state.count("token_issued", tenant=app.tenant_id, client_id=app.client_id, resource=DATAVERSE) == 1
    assert state.count("client_assertion", client_id=app.client_id, alg="PS256", thumbprint="x5t#S256") == 1


def test_legacy_thumbprint_credential_signs_rs256_and_works(
    sandbox: Sandbox, new_app: AppFactory, cca: CcaFactory
) -> None:
    app = new_app()
    result = cca(app.client_id, app.tenant_id, app.thumbprint_credential()).acquire_token_for_client([DATAVERSE_SCOPE])

    assert "access_token" in result, result
    assert sandbox.state.count("client_assertion", client_id=app.client_id, alg="RS256", thumbprint="x5t") == 1


def test_access_token_claims_verify_against_published_keys(
    sandbox: Sandbox, new_app: AppFactory, cca: CcaFactory
) -> None:
    app = new_app()
    result = cca(app.client_id, app.tenant_id, app.pem_credential()).acquire_token_for_client(
        ["https://contoso.crm.dynamics.com//.default"]  # trailing-slash resource needs the double slash
    )

    claims = _verify_with_jwks(sandbox, result["access_token"], app.tenant_id, audience=DATAVERSE + "/")

    assert claims["tid"] == app.tenant_id
    assert claims["appid"] == app.client_id
    assert claims["oid"] == sandbox.state.service_principal_object_id(app.tenant_id, app.client_id)
    assert claims["sub"] == claims["oid"]
    assert claims["idtyp"] == "app"
    assert claims["ver"] == "1.0"
    assert claims["iss"] == f"{sandbox.authority_host}/{app.tenant_id}/"
    assert 3000 < claims["exp"] - time.time() <= 3600


def test_service_principal_object_id_differs_per_tenant_and_survives_reconsent(
    sandbox: Sandbox, new_app: AppFactory
) -> None:
    app = new_app()
    state = sandbox.state
    customer_oid = state.service_principal_object_id(app.tenant_id, app.client_id)
    home_oid = state.service_principal_object_id(state.home_tenant_id, app.client_id)

    state.revoke_consent(app.tenant_id, app.client_id)
    state.grant_consent(app.tenant_id, app.client_id)

    assert customer_oid != home_oid
    assert state.service_principal_object_id(app.tenant_id, app.client_id) == customer_oid


def test_openid_configuration_matches_entra_layout(sandbox: Sandbox, new_app: AppFactory) -> None:
    app = new_app()
    host = sandbox.authority_host

    v2 = _json(sandbox, f"{host}/{app.tenant_id}/v2.0/.well-known/openid-configuration")
    v1 = _json(sandbox, f"{host}/{app.tenant_id}/.well-known/openid-configuration")
    common = _json(sandbox, f"{host}/common/v2.0/.well-known/openid-configuration")
    organizations = _json(sandbox, f"{host}/organizations/v2.0/.well-known/openid-configuration")

    assert v2["issuer"] == f"{host}/{app.tenant_id}/v2.0"
    assert v2["token_endpoint"] == f"{host}/{app.tenant_id}/oauth2/v2.0/token"
    assert v2["jwks_uri"] == f"{host}/{app.tenant_id}/discovery/v2.0/keys"
    assert v2["id_token_signing_alg_values_supported"] == ["RS256"]
    assert v1["issuer"] == f"{host}/{app.tenant_id}/"
    assert v1["token_endpoint"] == f"{host}/{app.tenant_id}/oauth2/token"
    assert common["issuer"] == f"{host}/{{tenantid}}/v2.0"
    assert organizations["token_endpoint"] == f"{host}/organizations/oauth2/v2.0/token"
    keys = _json(sandbox, f"{host}/common/discovery/v2.0/keys")["keys"]
    assert {"kty", "use", "kid", "x5t", "n", "e", "x5c", "issuer"} <= set(keys[0])
    assert keys[0]["issuer"] == f"{host}/{{tenantid}}/v2.0"
    domain = sandbox.state.get_tenant(app.tenant_id).domains[0]
    by_domain = _json(sandbox, f"{host}/{domain}/v2.0/.well-known/openid-configuration")
    assert by_domain["issuer"] == v2["issuer"]


def test_azure_identity_certificate_credential_gets_token(sandbox_env: Sandbox, new_app: AppFactory) -> None:
    app = new_app()
    credential = CertificateCredential(
        app.tenant_id,
        app.client_id,
        certificate_data=app.certificate.combined_pem.encode("ascii"),
        authority=sandbox_env.authority_host,
        disable_instance_discovery=True,
        connection_verify=str(sandbox_env.ca_bundle_path),
    )

    token = credential.get_token(DATAVERSE_SCOPE)

    claims = jwt.decode(token.token, options={"verify_signature": False})
    assert claims["tid"] == app.tenant_id
    assert claims["appid"] == app.client_id
    assert token.expires_on > time.time() + 3000


def test_unknown_tenant_fails_msal_construction_with_90002(sandbox_env: Sandbox, new_app: AppFactory) -> None:
    app = new_app()
    unknown = str(uuid.uuid4())

    with pytest.raises(ValueError, match="Unable to get authority configuration") as raised:
        msal.ConfidentialClientApplication(
            app.client_id,
            authority=f"{sandbox_env.authority_host}/{unknown}",
            instance_discovery=False,
            client_credential=app.pem_credential(),
        )

    # MSAL wraps the discovery failure; the Entra error body is on the exception it was raised from.
    assert "AADSTS90002" in str(raised.value.__context__)


def test_error_response_has_entra_shape_and_echoes_correlation_id(sandbox: Sandbox) -> None:
    unknown = str(uuid.uuid4())
    correlation = str(uuid.uuid4())

    response = requests.post(
        f"{sandbox.authority_host}/{unknown}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": str(uuid.uuid4()), "scope": DATAVERSE_SCOPE},
        headers={"client-request-id": correlation},
        verify=str(sandbox.ca_bundle_path),
        timeout=5,
    )

    body = response.json()
    assert response.status_code == 400
    assert body["error"] == "invalid_request"
    assert body["error_codes"] == [90002]
    assert body["correlation_id"] == correlation
    assert body["error_description"].startswith(f"AADSTS90002: Tenant '{unknown}' not found.")
    assert f"Trace ID: {body['trace_id']} Correlation ID: {correlation} Timestamp: " in body["error_description"]
    assert set(body) == {
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
        "error_uri",
    }


def test_unconsented_tenant_gives_700016(sandbox: Sandbox, new_app: AppFactory, cca: CcaFactory) -> None:
    app = new_app(consent=False)

    result = cca(app.client_id, app.tenant_id, app.pem_credential()).acquire_token_for_client([DATAVERSE_SCOPE])

    assert result["error"] == "unauthorized_client"
    assert result["error_codes"] == [700016]
    assert (
        f"Application with identifier '{app.client_id}' was not found in the directory" in result["error_description"]
    )
    assert sandbox.state.count("token_error", tenant=app.tenant_id, code=700016) == 1


def test_unknown_application_gives_700016(new_app: AppFactory, cca: CcaFactory) -> None:
    app = new_app()
    stranger = RegisteredApp(str(uuid.uuid4()), app.certificate, app.tenant_id)

    result = cca(stranger.client_id, stranger.tenant_id, stranger.pem_credential()).acquire_token_for_client(
        [DATAVERSE_SCOPE]
    )

    assert result["error_codes"] == [700016]


def test_removed_service_principal_gives_700016_again(sandbox: Sandbox, new_app: AppFactory, cca: CcaFactory) -> None:
    app = new_app()
    old_oid = sandbox.state.service_principal_object_id(app.tenant_id, app.client_id)
    sandbox.state.remove_service_principal(app.tenant_id, app.client_id)

    result = cca(app.client_id, app.tenant_id, app.pem_credential()).acquire_token_for_client([DATAVERSE_SCOPE])

    assert result["error_codes"] == [700016]
    sandbox.state.grant_consent(app.tenant_id, app.client_id)
    assert sandbox.state.service_principal_object_id(app.tenant_id, app.client_id) != old_oid


def test_revoked_consent_gives_65001_until_consented_again(
    sandbox: Sandbox, new_app: AppFactory, cca: CcaFactory
) -> None:
    app = new_app()
    sandbox.state.revoke_consent(app.tenant_id, app.client_id)

    refused = cca(app.client_id, app.tenant_id, app.pem_credential()).acquire_token_for_client([DATAVERSE_SCOPE])
    sandbox.state.grant_consent(app.tenant_id, app.client_id)
    # A new client: MSAL replays a cached 400 for 60 s to an identical request from the same client.
    accepted = cca(app.client_id, app.tenant_id, app.pem_credential()).acquire_token_for_client([DATAVERSE_SCOPE])

    assert refused["error"] == "invalid_grant"
    assert refused["error_codes"] == [65001]
    assert "access_token" in accepted, accepted


def test_disabled_application_gives_7000112(sandbox: Sandbox, new_app: AppFactory, cca: CcaFactory) -> None:
    app = new_app()
    sandbox.state.set_application_enabled(app.client_id, False)

    result = cca(app.client_id, app.tenant_id, app.pem_credential()).acquire_token_for_client([DATAVERSE_SCOPE])

    assert result["error"] == "unauthorized_client"
    assert result["error_codes"] == [7000112]


def test_scope_without_default_suffix_gives_1002012(new_app: AppFactory, cca: CcaFactory) -> None:
    app = new_app()

    result = cca(app.client_id, app.tenant_id, app.pem_credential()).acquire_token_for_client(
        ["https://contoso.crm.dynamics.com/user_impersonation"]
    )

    assert result["error"] == "invalid_scope"
    assert result["error_codes"] == [1002012]


def test_client_secret_is_refused_with_7000215(new_app: AppFactory, cca: CcaFactory) -> None:
    app = new_app()

    result = cca(app.client_id, app.tenant_id, "not-a-registered-secret").acquire_token_for_client([DATAVERSE_SCOPE])

    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]


def test_unregistered_certificate_gives_700027(new_app: AppFactory, cca: CcaFactory) -> None:
    app = new_app()
    other = make_certificate("not-registered")
    credential = {"private_key": other.key_pem, "public_certificate": other.cert_pem}

    result = cca(app.client_id, app.tenant_id, credential).acquire_token_for_client([DATAVERSE_SCOPE])

    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [700027]
    assert "not registered on application" in result["error_description"]


def test_removed_certificate_gives_700027_and_new_one_works(
    sandbox: Sandbox, new_app: AppFactory, cca: CcaFactory
) -> None:
    app = new_app()
    replacement = make_certificate("rotated")
    sandbox.state.add_application_certificate(app.client_id, replacement.cert_pem)
    sandbox.state.remove_application_certificate(app.client_id, app.certificate.cert_pem)
    rotated = RegisteredApp(app.client_id, replacement, app.tenant_id)

    old = cca(app.client_id, app.tenant_id, app.pem_credential()).acquire_token_for_client([DATAVERSE_SCOPE])
    new = cca(app.client_id, app.tenant_id, rotated.pem_credential()).acquire_token_for_client([DATAVERSE_SCOPE])

    assert old["error_codes"] == [700027]
    assert "access_token" in new, new


def test_expired_registered_certificate_gives_700027(sandbox: Sandbox, new_app: AppFactory, cca: CcaFactory) -> None:
    app = new_app()
    expired = make_certificate("expired", days=30, not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    sandbox.state.add_application_certificate(app.client_id, expired.cert_pem)
    credential = {"private_key": expired.key_pem, "public_certificate": expired.cert_pem}

    result = cca(app.client_id, app.tenant_id, credential).acquire_token_for_client([DATAVERSE_SCOPE])

    assert result["error_codes"] == [700027]
    assert "expired" in result["error_description"]


def test_bad_signature_gives_7000274(
    new_app: AppFactory, cca: CcaFactory, assertion_factory: Callable[..., str]
) -> None:
    app = new_app()
    forged = assertion_factory(app, signing_key_pem=make_certificate("forger").key_pem)

    result = cca(app.client_id, app.tenant_id, {"client_assertion": lambda: forged}).acquire_token_for_client(
        [DATAVERSE_SCOPE]
    )

    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000274]


def test_expired_assertion_gives_700024(
    new_app: AppFactory, cca: CcaFactory, assertion_factory: Callable[..., str]
) -> None:
    app = new_app()
    stale = assertion_factory(app, issued_at=time.time() - 3600, lifetime=600)

    result = cca(app.client_id, app.tenant_id, {"client_assertion": lambda: stale}).acquire_token_for_client(
        [DATAVERSE_SCOPE]
    )

    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [700024]
    assert "not within its valid time range" in result["error_description"]


def test_assertion_for_another_tenant_gives_700023(
    sandbox: Sandbox, new_app: AppFactory, cca: CcaFactory, assertion_factory: Callable[..., str]
) -> None:
    app = new_app()
    wrong_audience = assertion_factory(
        app, audience=f"{sandbox.authority_host}/{sandbox.state.home_tenant_id}/oauth2/v2.0/token"
    )

    result = cca(app.client_id, app.tenant_id, {"client_assertion": lambda: wrong_audience}).acquire_token_for_client(
        [DATAVERSE_SCOPE]
    )

    assert result["error_codes"] == [700023]


def test_replayed_assertion_is_rejected(
    new_app: AppFactory, cca: CcaFactory, assertion_factory: Callable[..., str]
) -> None:
    app = new_app()
    assertion = assertion_factory(app)
    credential = {"client_assertion": lambda: assertion}

    first = cca(app.client_id, app.tenant_id, credential).acquire_token_for_client([DATAVERSE_SCOPE])
    replay = cca(app.client_id, app.tenant_id, credential).acquire_token_for_client([DATAVERSE_SCOPE])
    # MSAL itself reuses one assertion for ~9 minutes, e.g. for a second resource: that must keep working.
    other_resource = cca(app.client_id, app.tenant_id, credential).acquire_token_for_client(
        ["https://graph.microsoft.com/.default"]
    )

    assert "access_token" in first, first
    assert replay["error"] == "invalid_client"
    assert replay["error_codes"] == [50013]
    assert "already been used" in replay["error_description"]
    assert "access_token" in other_resource, other_resource


def test_signing_key_rotation_keeps_previous_key_published(
    sandbox: Sandbox, new_app: AppFactory, cca: CcaFactory
) -> None:
    app = new_app()
    before = cca(app.client_id, app.tenant_id, app.pem_credential()).acquire_token_for_client([DATAVERSE_SCOPE])
    old_kid = jwt.get_unverified_header(before["access_token"])["kid"]

    new_kid = sandbox.state.rotate_signing_key()
    after = cca(app.client_id, app.tenant_id, app.pem_credential()).acquire_token_for_client(
        ["https://graph.microsoft.com/.default"]
    )

    kids = {key["kid"] for key in _json(sandbox, f"{sandbox.authority_host}/common/discovery/v2.0/keys")["keys"]}
    assert {old_kid, new_kid} <= kids
    assert jwt.get_unverified_header(after["access_token"])["kid"] == new_kid
    assert _verify_with_jwks(sandbox, before["access_token"], app.tenant_id, DATAVERSE)["tid"] == app.tenant_id
