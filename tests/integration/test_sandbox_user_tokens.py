"""Signed user tokens from the sandbox's Entra (protocol §6): what a signed-in user of a customer tenant presents to
our API, verified here the way a resource does it, with PyJWT against the JWKS fetched over HTTPS.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest
import requests

from sandbox import Sandbox
from sandbox.entra.user_tokens import SandboxUser
from sandbox.state import SandboxLookupError

pytestmark = pytest.mark.integration

API_CLIENT_ID = "7d3f2a4c-1b5e-4c8f-9a0d-2e6b8c4f1a3d"
API_APP_ID_URI = f"api://{API_CLIENT_ID}"


def _jwks(sandbox: Sandbox, tenant: str = "common") -> list[dict[str, Any]]:
    response = requests.get(f"{sandbox.authority_host}/{tenant}/discovery/v2.0/keys", timeout=10)
    response.raise_for_status()
    keys: list[dict[str, Any]] = response.json()["keys"]
    return keys


def _verify(sandbox: Sandbox, token: str, *, audience: str, version: str = "2.0") -> dict[str, Any]:
    """A resource's checks: key by kid from the common JWKS, the key's issuer, then iss/aud/exp/nbf."""
    header = jwt.get_unverified_header(token)
    tid = jwt.decode(token, options={"verify_signature": False})["tid"]
    jwk = next(k for k in _jwks(sandbox) if k["kid"] == header["kid"])
    if jwk["issuer"].replace("{tenantid}", tid) != f"{sandbox.authority_host}/{tid}/v2.0":
        raise jwt.InvalidIssuerError("the signing key belongs to another issuer")
    expected_issuer = sandbox.state.token_issuer_template(version).replace("{tenantid}", tid)
    claims: dict[str, Any] = jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=["RS256"], audience=audience, issuer=expected_issuer
    )
    return claims


@pytest.fixture
def user(sandbox_env: Sandbox) -> SandboxUser:
    tenant_id = sandbox_env.state.add_tenant(display_name=f"Fabrikam {uuid.uuid4().hex[:6]}")
    return sandbox_env.state.add_user(tenant_id, display_name="Ada Lovelace")


def test_v2_token_verifies_against_the_common_jwks_with_v2_claims(sandbox_env: Sandbox, user: SandboxUser) -> None:
    client_id = str(uuid.uuid4())
    before = int(time.time())

    token = sandbox_env.state.issue_user_token(user, audience=API_CLIENT_ID, client_id=client_id)

    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    assert header["typ"] == "JWT"
    assert header["kid"] == header["x5t"] == sandbox_env.state.signing_keys.current.kid
    claims = _verify(sandbox_env, token, audience=API_CLIENT_ID)
    domain = sandbox_env.state.get_tenant(user.tenant_id).domains[0]
    assert claims["iss"] == f"{sandbox_env.authority_host}/{user.tenant_id}/v2.0"
    assert claims["ver"] == "2.0"
    assert (claims["tid"], claims["oid"]) == (user.tenant_id, user.object_id)
    assert claims["name"] == "Ada Lovelace"
    assert claims["preferred_username"] == user.upn == f"ada.lovelace@{domain}"
    assert claims["scp"] == "access_as_user"
    assert claims["azp"] == client_id
    assert "roles" not in claims
    assert {"appid", "upn", "unique_name"}.isdisjoint(claims)
    assert len(claims["sub"]) == 43 and claims["sub"] != user.object_id
    assert before <= claims["iat"] == claims["nbf"] <= claims["exp"] - 3600


def test_v1_token_carries_the_v1_issuer_appid_and_upn(sandbox_env: Sandbox, user: SandboxUser) -> None:
    token = sandbox_env.state.issue_user_token(
        user, audience=API_APP_ID_URI, version="1.0", scopes=("access_as_user", "Files.Read"), roles=("Reader",)
    )

    claims = _verify(sandbox_env, token, audience=API_APP_ID_URI, version="1.0")
    assert claims["iss"] == f"{sandbox_env.authority_host}/{user.tenant_id}/"
    assert sandbox_env.state.token_issuer_template("1.0") == f"{sandbox_env.authority_host}/{{tenantid}}/"
    assert claims["ver"] == "1.0"
    assert claims["appid"] == sandbox_env.state.default_user_client_id
    assert claims["upn"] == claims["unique_name"] == user.upn
    assert claims["scp"] == "access_as_user Files.Read"
    assert claims["roles"] == ["Reader"]
    assert {"azp", "preferred_username"}.isdisjoint(claims)
    assert (claims["tid"], claims["oid"], claims["name"]) == (user.tenant_id, user.object_id, user.display_name)


def test_sub_is_pairwise_per_user_and_audience(sandbox_env: Sandbox, user: SandboxUser) -> None:
    state = sandbox_env.state
    other = state.add_user(user.tenant_id, display_name="Grace Hopper", upn="grace@example.org")

    def sub(who: SandboxUser, audience: str) -> str:
        return str(
            jwt.decode(state.issue_user_token(who, audience=audience), options={"verify_signature": False})["sub"]
        )

    assert sub(user, API_CLIENT_ID) == sub(user, API_CLIENT_ID)
    assert sub(user, API_CLIENT_ID) != sub(user, API_APP_ID_URI)
    assert sub(user, API_CLIENT_ID) != sub(other, API_CLIENT_ID)
    assert other.upn == "grace@example.org"


def test_lifetime_not_before_and_extra_claims_shape_the_token(sandbox_env: Sandbox, user: SandboxUser) -> None:
    state = sandbox_env.state
    expired = state.issue_user_token(user, audience=API_CLIENT_ID, lifetime_seconds=-60)
    early = state.issue_user_token(user, audience=API_CLIENT_ID, not_before_offset=600)
    altered = state.issue_user_token(user, audience=API_CLIENT_ID, extra_claims={"tid": None, "xms_cc": ["cp1"]})

    with pytest.raises(jwt.ExpiredSignatureError):
        _verify(sandbox_env, expired, audience=API_CLIENT_ID)
    with pytest.raises(jwt.ImmatureSignatureError):
        _verify(sandbox_env, early, audience=API_CLIENT_ID)
    claims = jwt.decode(altered, options={"verify_signature": False})
    assert "tid" not in claims and claims["xms_cc"] == ["cp1"]
    assert state.count("user_token", tenant=user.tenant_id, version="2.0") == 3


def test_rotation_moves_new_tokens_to_the_new_key_and_keeps_the_old_one_published(
    sandbox_env: Sandbox, user: SandboxUser
) -> None:
    state = sandbox_env.state
    before = state.issue_user_token(user, audience=API_CLIENT_ID)
    old_kid = jwt.get_unverified_header(before)["kid"]

    new_kid = state.rotate_signing_key()
    after = state.issue_user_token(user, audience=API_CLIENT_ID)

    assert new_kid != old_kid
    assert jwt.get_unverified_header(after)["kid"] == new_kid
    kids = [key["kid"] for key in _jwks(sandbox_env)]
    assert kids[0] == new_kid and old_kid in kids
    assert _verify(sandbox_env, before, audience=API_CLIENT_ID)["oid"] == user.object_id
    assert _verify(sandbox_env, after, audience=API_CLIENT_ID)["oid"] == user.object_id
    signed_by_old = state.issue_user_token(user, audience=API_CLIENT_ID, signing_kid=old_kid)
    assert jwt.get_unverified_header(signed_by_old)["kid"] == old_kid


def test_tenant_key_is_published_with_its_guid_issuer_and_refused_for_another_tenant(
    sandbox_env: Sandbox, user: SandboxUser
) -> None:
    state = sandbox_env.state
    host = sandbox_env.authority_host
    owner_tenant = state.add_tenant(display_name="Key Owner")
    kid = state.add_tenant_signing_key(owner_tenant)

    foreign = state.issue_user_token(user, audience=API_CLIENT_ID, signing_kid=kid)

    common = {key["kid"]: key for key in _jwks(sandbox_env)}
    assert common[kid]["issuer"] == f"{host}/{owner_tenant}/v2.0"
    assert state.signing_keys_issuer_template() == f"{host}/{{tenantid}}/v2.0"
    current = state.signing_keys.current.kid
    assert common[current]["issuer"] == state.signing_keys_issuer_template()
    assert next(iter(common)) == current  # the current key leads, tenant keys come last
    assert kid in {key["kid"] for key in _jwks(sandbox_env, owner_tenant)}
    assert kid not in {key["kid"] for key in _jwks(sandbox_env, user.tenant_id)}
    # The signature is good, but the key's issuer is not the token's tenant's: a validator must refuse it.
    header_kid = jwt.get_unverified_header(foreign)["kid"]
    assert header_kid == kid
    claims = jwt.decode(foreign, jwt.PyJWK(common[kid]).key, algorithms=["RS256"], audience=API_CLIENT_ID)
    assert common[kid]["issuer"].replace("{tenantid}", claims["tid"]) != claims["iss"]
    with pytest.raises(jwt.InvalidIssuerError, match="another issuer"):
        _verify(sandbox_env, foreign, audience=API_CLIENT_ID)
    owner = state.add_user(owner_tenant, display_name="Key Owner User")
    own = state.issue_user_token(owner, audience=API_CLIENT_ID, signing_kid=kid)
    assert _verify(sandbox_env, own, audience=API_CLIENT_ID)["tid"] == owner_tenant


def test_bad_requests_fail_clearly(sandbox_env: Sandbox, user: SandboxUser) -> None:
    state = sandbox_env.state
    with pytest.raises(SandboxLookupError):
        state.add_user(str(uuid.uuid4()), display_name="Nobody")
    with pytest.raises(ValueError, match="already has a user"):
        state.add_user(user.tenant_id, display_name="Twin", object_id=user.object_id)
    with pytest.raises(SandboxLookupError):
        state.issue_user_token(user, audience=API_CLIENT_ID, signing_kid="no-such-kid")
    with pytest.raises(SandboxLookupError):
        state.add_tenant_signing_key(str(uuid.uuid4()))
    with pytest.raises(ValueError, match="version"):
        state.issue_user_token(user, audience=API_CLIENT_ID, version="3.0")
    with pytest.raises(ValueError, match="tuples"):
        state.issue_user_token(user, audience=API_CLIENT_ID, scopes="access_as_user")  # type: ignore[arg-type]
    stranger = SandboxUser(str(uuid.uuid4()), user.tenant_id, "Stranger", "stranger@example.org")
    with pytest.raises(SandboxLookupError):
        state.issue_user_token(stranger, audience=API_CLIENT_ID)
    assert state.get_user(user.tenant_id, user.object_id.upper()) == user
