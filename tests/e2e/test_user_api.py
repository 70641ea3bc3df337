"""Users of an onboarded tenant call the API with tokens from the sandbox's Entra ID; Dataverse, reached with the
app's S2S token impersonating each of them, shows each only their own accounts."""

from __future__ import annotations

from types import SimpleNamespace

import azure.functions as func
import pytest
import requests

from devhost import DevHost
from shared.bootstrap import build_services, use_services
from shared.tenants.orgs import OrgStatus
from shared.tenants.registry import TenantStatus
from tests.integration.conftest import app_with_certificate, cert_file_settings, customer_org

pytestmark = pytest.mark.integration


def user_app() -> func.FunctionApp:
    from functions.user_api import bp

    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(bp)
    return app


@pytest.fixture
def world(sandbox, sandbox_env, azurite, tmp_path):
    st = sandbox.state
    client_id, _, cert = app_with_certificate(st, "User API test", tmp_path)
    tenant, org, _ = customer_org(st, client_id, "users", act_on_behalf=True)
    ada = st.add_user(tenant, display_name="Ada Lovelace")
    bob = st.add_user(tenant, display_name="Bob Babbage")
    ada_user = st.add_org_user(org, ada.object_id, "Ada Lovelace")
    st.add_org_user(org, bob.object_id, "Bob Babbage")
    rows = st.seed_rows(org, "accounts", 5)
    st.assign_rows(org, "accounts", rows[:3], ada.object_id)
    st.assign_rows(org, "accounts", rows[3:], bob.object_id)
    settings = cert_file_settings(
        sandbox,
        client_id,
        cert,
        storage_connection_string=azurite.connection_string,
        oidc_v1_issuer_template=f"{sandbox.authority_host}/{{tenantid}}/",
    )
    services = build_services(settings)
    use_services(services)
    for status in (TenantStatus.PENDING_CONSENT, TenantStatus.CONSENTED, TenantStatus.ACTIVE):
        services.registry.record(tenant, status, reason="test", actor="test", org_url=org)
    services.registry.set_org_status(tenant, org, OrgStatus.ACTIVE, reason="seed", actor="test")
    host = DevHost(user_app()).start()
    yield SimpleNamespace(
        st=st,
        host=host,
        client_id=client_id,
        tenant=tenant,
        org=org,
        ada=ada,
        bob=bob,
        ada_user=ada_user,
        rows=rows,
        services=services,
    )
    host.stop()
    use_services(None)


def get(world, path, token, **params):
    return requests.get(
        f"{world.host.url}/api/{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def test_each_user_sees_only_their_own_accounts(world):
    ada_token = world.st.issue_user_token(world.ada, audience=world.client_id)
    bob_token = world.st.issue_user_token(world.bob, audience=f"api://{world.client_id}", version="1.0")
    me = get(world, "me", ada_token).json()
    assert (me["tenant_id"], me["object_id"], me["tenant_status"]) == (world.tenant, world.ada.object_id, "active")
    assert get(world, "me/whoami", ada_token).json()["user_id"] == world.ada_user
    ada_rows = {a["id"] for a in get(world, "me/accounts", ada_token, top=50).json()["accounts"]}
    bob_rows = {a["id"] for a in get(world, "me/accounts", bob_token, top=50).json()["accounts"]}
    assert ada_rows == set(world.rows[:3]) and bob_rows == set(world.rows[3:])


def test_without_the_act_on_behalf_privilege_the_answer_is_a_clear_403(world):
    world.st.set_application_user(world.org, world.client_id, act_on_behalf=False)
    resp = get(world, "me/whoami", world.st.issue_user_token(world.ada, audience=world.client_id))
    assert resp.status_code == 403 and "prvActOnBehalfOfAnotherUser" in resp.json()["error"]["message"]


def test_tokens_of_other_tenants_and_bad_tokens_are_refused(world):
    stranger_tenant = world.st.add_tenant(display_name="Stranger")
    stranger = world.st.add_user(stranger_tenant, display_name="Eve")
    resp = get(world, "me", world.st.issue_user_token(stranger, audience=world.client_id))
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "tenant_not_active"
    wrong_audience = get(world, "me", world.st.issue_user_token(world.ada, audience="api://other"))
    assert wrong_audience.status_code == 401
    assert wrong_audience.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert get(world, "me", "garbage").status_code == 401


def test_signing_key_rotation_needs_no_restart(world):
    assert get(world, "me", world.st.issue_user_token(world.ada, audience=world.client_id)).status_code == 200
    world.st.rotate_signing_key()
    world.services.user_tokens._jwks._min_refetch = 0  # the test does not wait a minute for the refetch window
    assert get(world, "me", world.st.issue_user_token(world.ada, audience=world.client_id)).status_code == 200


def test_a_key_published_for_another_tenant_cannot_sign_for_this_one(world):
    other = world.st.add_tenant(display_name="Other")
    kid = world.st.add_tenant_signing_key(other)
    world.services.user_tokens._jwks._min_refetch = 0
    forged = world.st.issue_user_token(world.ada, audience=world.client_id, signing_kid=kid)
    resp = get(world, "me", forged)
    assert resp.status_code == 401 and "does not belong" in resp.json()["error"]["message"]
