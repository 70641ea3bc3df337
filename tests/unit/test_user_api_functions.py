"""User API functions with fakes: every rejection is a 401 with WWW-Authenticate or a 403, never a 500."""

from __future__ import annotations

import json

import azure.functions as func
import pytest

from functions import user_api as fn
from shared.bootstrap import use_services
from shared.dataverse.client import WhoAmI
from shared.dataverse.errors import ImpersonationNotAllowedError
from shared.settings import Settings
from shared.signin.user_tokens import InvalidUserTokenError, UserPrincipal
from shared.tenants.registry import Tenant, TenantStatus

CLIENT = "11111111-2222-3333-4444-555555555555"
TID = "aaaaaaaa-0000-0000-0000-000000000001"
OID = "cccccccc-0000-0000-0000-000000000003"
ORG = "https://fab.crm.dynamics.com"


class FakeValidator:
    def __init__(self, error=None):
        self.error = error

    def validate(self, header):
        if self.error:
            raise InvalidUserTokenError(self.error)
        return UserPrincipal(TID, OID, "Ada", "ada@fab.example", ("access_as_user",), (), "2.0")


class FakeRegistry:
    def __init__(self, status):
        self.status = status

    def find_tenant(self, tenant_id):
        return None if self.status is None else Tenant(tenant_id, self.status, (ORG,), "t", "t")


class FakeClient:
    org_url = ORG

    def __init__(self, error=None):
        self.error = error
        self.callers = []

    def whoami(self, caller_object_id=None):
        self.callers.append(caller_object_id)
        if self.error:
            raise self.error
        return WhoAmI("user-1", "bu-1", "org-1")


class FakeDataverse:
    def __init__(self, client):
        self.client = client

    def for_org(self, tenant_id, org_url):
        return self.client


class FakeServices:
    def __init__(self, validator, status=TenantStatus.ACTIVE, client=None):
        self.settings = Settings(
            entra_client_id=CLIENT,
            entra_home_tenant_id=TID,
            key_vault_url="https://kv.vault.azure.net",
            key_vault_certificate_name="c",
        )
        self.user_tokens = validator
        self.registry = FakeRegistry(status)
        self.dataverse = FakeDataverse(client or FakeClient())


@pytest.fixture(autouse=True)
def reset():
    yield
    use_services(None)


def call(function, **params):
    return function(func.HttpRequest("GET", "/api/me", params=params, body=b"", headers={"authorization": "Bearer x"}))


def test_me_returns_the_caller_and_tenant_status():
    use_services(FakeServices(FakeValidator()))
    body = json.loads(call(fn.me).get_body())
    assert (body["tenant_id"], body["object_id"], body["tenant_status"]) == (TID, OID, "active")


def test_an_invalid_token_is_401_with_the_bearer_challenge():
    use_services(FakeServices(FakeValidator('The token has "expired".')))
    resp = call(fn.me)
    assert resp.status_code == 401
    assert (
        resp.headers["WWW-Authenticate"]
        == 'Bearer error="invalid_token", error_description="The token has \'expired\'."'
    )
    assert json.loads(resp.get_body())["error"]["code"] == "invalid_token"


@pytest.mark.parametrize("status", [None, TenantStatus.OFFBOARDED, TenantStatus.AWAITING_APPLICATION_USER])
def test_a_valid_token_of_a_tenant_that_is_not_active_is_403(status):
    use_services(FakeServices(FakeValidator(), status=status))
    resp = call(fn.me_whoami)
    assert resp.status_code == 403 and json.loads(resp.get_body())["error"]["code"] == "tenant_not_active"


def test_whoami_impersonates_the_caller():
    client = FakeClient()
    use_services(FakeServices(FakeValidator(), client=client))
    assert json.loads(call(fn.me_whoami).get_body())["user_id"] == "user-1"
    assert client.callers == [OID]


def test_missing_act_on_behalf_privilege_is_a_clear_403():
    error = ImpersonationNotAllowedError("needs prvActOnBehalfOfAnotherUser", org_url=ORG, status_code=403)
    use_services(FakeServices(FakeValidator(), client=FakeClient(error)))
    resp = call(fn.me_whoami)
    assert resp.status_code == 403 and "prvActOnBehalfOfAnotherUser" in json.loads(resp.get_body())["error"]["message"]


@pytest.mark.parametrize("top", ["0", "51", "-1", "ten", "1e3"])
def test_top_is_validated(top):
    use_services(FakeServices(FakeValidator()))
    resp = call(fn.me_accounts, top=top)
    assert resp.status_code == 400 and json.loads(resp.get_body())["error"]["code"] == "invalid_top"


@pytest.mark.parametrize("function", [fn.me, fn.me_whoami, fn.me_accounts])
def test_a_disabled_user_api_answers_404_and_calls_nothing(function):
    import dataclasses

    client = FakeClient()
    services = FakeServices(FakeValidator(), client=client)
    services.settings = dataclasses.replace(services.settings, user_api_enabled=False)
    use_services(services)
    resp = call(function)
    assert resp.status_code == 404
    assert json.loads(resp.get_body())["error"]["code"] == "user_api_disabled"
    assert client.callers == []
