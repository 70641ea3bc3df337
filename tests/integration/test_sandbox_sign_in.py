"""The sandbox's OpenID Connect code flow with real MSAL: the authorize page, code redemption with PKCE and a
client assertion, v2 ID tokens with the nonce, delegated Dataverse tokens honoured by the Dataverse stand-in
with the signed-in user's own security roles (protocol §6; entra/v2-oauth2-auth-code-flow.md).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msal
import pytest
import requests

from sandbox import Sandbox
from sandbox.entra.authorize import read_sign_in_form
from sandbox.entra.directory import GLOBAL_ADMINISTRATOR
from sandbox.entra.user_tokens import SandboxUser
from tests.integration.conftest import RegisteredApp

pytestmark = pytest.mark.integration

REDIRECT = "https://app.example/api/consent/callback"


def _sign_in_app(sandbox: Sandbox, app: RegisteredApp) -> msal.ConfidentialClientApplication:
    sandbox.state.add_redirect_uri(app.client_id, REDIRECT)
    return msal.ConfidentialClientApplication(
        app.client_id,
        authority=f"{sandbox.authority_host}/organizations",
        instance_discovery=False,
        client_credential=app.pem_credential(),
    )


def _answer(auth_uri: str, user: SandboxUser | None, decision: str = "accept") -> requests.Response:
    page = requests.get(auth_uri, timeout=10)
    assert page.status_code == 200, page.text
    form = read_sign_in_form(page.text)
    return requests.post(auth_uri, data=form.submission(decision, user=user), allow_redirects=False, timeout=10)


def _auth_response(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@pytest.fixture
def world(sandbox_env: Sandbox, new_app: Callable[..., RegisteredApp]) -> dict[str, Any]:
    state = sandbox_env.state
    app = new_app(consent=False, display_name="Sign-in App")
    admin = state.add_user(app.tenant_id, display_name="Grace Admin", directory_roles=(GLOBAL_ADMINISTRATOR,))
    clerk = state.add_user(app.tenant_id, display_name="Carl Clerk")
    org = f"https://signin{uuid.uuid4().hex[:8]}.crm.dynamics.com"
    state.add_org(app.tenant_id, org)
    state.add_org_user(org, admin.object_id, "Grace Admin", roles=("System Administrator",))
    state.add_org_user(org, clerk.object_id, "Carl Clerk", roles=("Salesperson",))
    return {"app": app, "admin": admin, "clerk": clerk, "org": org, "cca": _sign_in_app(sandbox_env, app)}


def test_admin_signs_in_consents_and_gets_id_and_dataverse_tokens(sandbox_env: Sandbox, world: dict[str, Any]):
    cca, admin, org = world["cca"], world["admin"], world["org"]
    assert sandbox_env.state.find_service_principal(admin.tenant_id, world["app"].client_id) is None
    flow = cca.initiate_auth_code_flow([f"{org}/user_impersonation"], redirect_uri=REDIRECT)
    assert flow["auth_uri"].startswith(f"{sandbox_env.authority_host}/organizations/oauth2/v2.0/authorize?")

    answer = _answer(flow["auth_uri"], admin)
    assert answer.status_code == 302 and answer.headers["Location"].startswith(REDIRECT)
    result = cca.acquire_token_by_auth_code_flow(flow, _auth_response(answer.headers["Location"]))

    assert "access_token" in result, result
    claims = result["id_token_claims"]
    assert (claims["tid"], claims["oid"]) == (admin.tenant_id, admin.object_id)
    # MSAL sends the SHA-256 of its nonce and checks the ID token carries that (msal/oauth2cli/oidc.py).
    assert claims["nonce"] == hashlib.sha256(flow["nonce"].encode()).hexdigest()
    assert claims["aud"] == world["app"].client_id
    assert claims["preferred_username"] == admin.upn
    # The administrator's sign-in created the service principal (consent for the organisation).
    assert sandbox_env.state.find_service_principal(admin.tenant_id, world["app"].client_id).consented
    headers = {"Authorization": f"Bearer {result['access_token']}", "Accept": "application/json"}
    who = requests.get(f"{org}/api/data/v9.2/WhoAmI", headers=headers, timeout=10)
    assert who.status_code == 200, who.text
    roles = requests.get(
        f"{org}/api/data/v9.2/systemusers({who.json()['UserId']})/systemuserroles_association",
        headers=headers,
        timeout=10,
    )
    assert [r["_roletemplateid_value"] for r in roles.json()["value"]] == ["627090ff-40a3-4053-8790-584edc5be201"]


def test_wids_only_when_the_registration_asks_for_them(sandbox_env: Sandbox, world: dict[str, Any]):
    cca, admin = world["cca"], world["admin"]
    for asks, expected in ((False, None), (True, [GLOBAL_ADMINISTRATOR])):
        sandbox_env.state.set_optional_claims(world["app"].client_id, ("wids",) if asks else ())
        flow = cca.initiate_auth_code_flow([f"{world['org']}/user_impersonation"], redirect_uri=REDIRECT)
        result = cca.acquire_token_by_auth_code_flow(
            flow, _auth_response(_answer(flow["auth_uri"], admin).headers["Location"])
        )
        assert result["id_token_claims"].get("wids") == expected


def test_a_user_who_cannot_consent_sees_need_admin_approval_and_gets_no_code(
    sandbox_env: Sandbox, world: dict[str, Any]
):
    flow = world["cca"].initiate_auth_code_flow([f"{world['org']}/user_impersonation"], redirect_uri=REDIRECT)
    answer = _answer(flow["auth_uri"], world["clerk"])
    assert answer.status_code == 403 and "AADSTS90094" in answer.text
    assert sandbox_env.state.find_service_principal(world["clerk"].tenant_id, world["app"].client_id) is None


def test_a_non_administrator_reads_only_its_own_roles(sandbox_env: Sandbox, world: dict[str, Any]):
    sandbox_env.state.grant_consent(world["clerk"].tenant_id, world["app"].client_id)
    cca = world["cca"]
    flow = cca.initiate_auth_code_flow([f"{world['org']}/user_impersonation"], redirect_uri=REDIRECT)
    result = cca.acquire_token_by_auth_code_flow(
        flow, _auth_response(_answer(flow["auth_uri"], world["clerk"]).headers["Location"])
    )
    headers = {"Authorization": f"Bearer {result['access_token']}", "Accept": "application/json"}
    api = f"{world['org']}/api/data/v9.2"
    me = requests.get(f"{api}/WhoAmI", headers=headers, timeout=10).json()["UserId"]
    own = requests.get(f"{api}/systemusers({me})/systemuserroles_association", headers=headers, timeout=10)
    assert [r["name"] for r in own.json()["value"]] == ["Salesperson"]
    assert own.json()["value"][0]["_roletemplateid_value"] is None
    admin_id = sandbox_env.state.get_org(world["org"]).org_id  # any other id: the org's own is no user
    other = requests.get(f"{api}/systemusers({admin_id})/systemuserroles_association", headers=headers, timeout=10)
    assert other.status_code == 404


def test_code_is_single_use_and_bound_to_the_pkce_verifier(sandbox_env: Sandbox, world: dict[str, Any]):
    cca, admin = world["cca"], world["admin"]
    flow = cca.initiate_auth_code_flow([f"{world['org']}/user_impersonation"], redirect_uri=REDIRECT)
    response = _auth_response(_answer(flow["auth_uri"], admin).headers["Location"])
    forged = {**flow, "code_verifier": "x" * 43}
    refused = cca.acquire_token_by_auth_code_flow(forged, response)
    assert refused.get("error") == "invalid_grant" and 501481 in refused.get("error_codes", [])
    replayed = cca.acquire_token_by_auth_code_flow(flow, response)
    assert replayed.get("error") == "invalid_grant" and 54005 in replayed.get("error_codes", [])


def test_cancel_redirects_with_access_denied_and_the_state(sandbox_env: Sandbox, world: dict[str, Any]):
    flow = world["cca"].initiate_auth_code_flow([f"{world['org']}/user_impersonation"], redirect_uri=REDIRECT)
    answer = _answer(flow["auth_uri"], world["admin"], decision="cancel")
    params = _auth_response(answer.headers["Location"])
    assert params["error"] == "access_denied" and params["state"] == flow["state"] and "code" not in params


def test_unregistered_redirect_uri_is_an_error_page_not_a_redirect(sandbox_env: Sandbox, world: dict[str, Any]):
    flow = world["cca"].initiate_auth_code_flow(
        [f"{world['org']}/user_impersonation"], redirect_uri="https://evil.example/cb"
    )
    page = requests.get(flow["auth_uri"], allow_redirects=False, timeout=10)
    assert page.status_code == 400 and "AADSTS50011" in page.text and "Location" not in page.headers


def test_delegated_token_of_a_user_not_in_the_org_is_refused(sandbox_env: Sandbox, world: dict[str, Any]):
    state = sandbox_env.state
    stranger = state.add_user(world["admin"].tenant_id, display_name="Sam Stranger")
    token = state.issue_user_token(stranger, audience=world["org"], scopes=("user_impersonation",), version="1.0")
    who = requests.get(f"{world['org']}/api/data/v9.2/WhoAmI", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert who.status_code == 403 and who.json()["error"]["code"] == "0x80072560"
