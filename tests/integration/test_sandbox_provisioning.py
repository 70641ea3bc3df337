"""The Dataverse stand-in's provisioning operations (sandbox.dataverse.provisioning), through HTTPS with real
tokens: a System Administrator's delegated token creates a security role in the root business unit, sets its
privileges (looked up by name), creates the app's application user and associates the role, after which the app's
own S2S token reads what the role grants and nothing else; webhook service endpoints and steps really deliver,
with the endpoint's HttpHeader values; refusals name the missing privilege (403) or the bad payload (400).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from sandbox import Sandbox
from sandbox.state import SandboxState

from .conftest import DataverseOrg
from .test_sandbox_webhooks import Receiver

pytestmark = pytest.mark.integration

SA = "System Administrator"


@dataclass(frozen=True)
class Provisionable:
    """An org whose tenant consented to the app (no application user yet), with a System Administrator and a
    clerk, each with a delegated Dataverse token."""

    org: DataverseOrg
    admin_token: str
    clerk_token: str

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {**self.org.headers(), "Authorization": f"Bearer {token or self.admin_token}"}
        return requests.request(method, f"{self.org.api}/{path}", headers=headers, timeout=10, **kwargs)

    def app(self, method: str, path: str, **headers: str) -> requests.Response:
        """A call with the app's own S2S token."""
        return requests.request(method, f"{self.org.api}/{path}", headers=self.org.headers(**headers), timeout=10)

    def one(self, path: str) -> dict[str, Any]:
        response = self.call("GET", path)
        assert response.status_code == 200, response.text
        (row,) = response.json()["value"]
        return row

    def create(self, path: str, body: dict[str, Any], token: str | None = None) -> str:
        response = self.call("POST", path, token, json=body)
        assert response.status_code == 204, response.text
        return response.headers["OData-EntityId"][-37:-1]


@pytest.fixture
def world(sandbox_env: Sandbox, new_org: Callable[..., DataverseOrg]) -> Provisionable:
    state = sandbox_env.state
    org = new_org(app_user=False)
    admin = state.add_user(org.app.tenant_id, display_name="Grace Admin")
    clerk = state.add_user(org.app.tenant_id, display_name="Carl Clerk")
    state.add_org_user(org.url, admin.object_id, "Grace Admin", roles=(SA,))
    state.add_org_user(org.url, clerk.object_id, "Carl Clerk", roles=("Salesperson",))
    state.seed_rows(org.url, "accounts", 3)

    def token(user: Any) -> str:
        return state.issue_user_token(
            user, audience=org.url, scopes=("user_impersonation",), client_id=org.app.client_id
        )

    return Provisionable(org, token(admin), token(clerk))


@pytest.fixture
def state(sandbox_env: Sandbox) -> Iterator[SandboxState]:
    yield sandbox_env.state
    sandbox_env.state.set_webhook_timeout()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.stop()


def root_unit(world: Provisionable) -> str:
    return str(
        world.one("businessunits?$filter=_parentbusinessunitid_value eq null&$select=businessunitid")["businessunitid"]
    )


def privilege(world: Provisionable, name: str) -> str:
    return str(world.one(f"privileges?$filter=name eq '{name}'&$select=privilegeid,name")["privilegeid"])


def new_role(world: Provisionable, name: str, privileges: dict[str, str], token: str | None = None) -> str:
    unit = root_unit(world)
    role_id = world.create("roles", {"name": name, "businessunitid@odata.bind": f"/businessunits({unit})"}, token)
    body = {
        "Privileges": [
            {"PrivilegeId": privilege(world, p), "Depth": depth, "BusinessUnitId": unit}
            for p, depth in privileges.items()
        ]
    }
    response = world.call("POST", f"roles({role_id})/Microsoft.Dynamics.CRM.ReplacePrivilegesRole", token, json=body)
    assert response.status_code == 204, response.text
    return role_id


def new_application_user(world: Provisionable, token: str | None = None) -> str:
    unit = root_unit(world)
    body = {"applicationid": world.org.app.client_id, "businessunitid@odata.bind": f"/businessunits({unit})"}
    return world.create("systemusers", body, token)


def associate(world: Provisionable, user_id: str, role_id: str, token: str | None = None) -> requests.Response:
    body = {"@odata.id": f"{world.org.api}/roles({role_id})"}
    return world.call("POST", f"systemusers({user_id})/systemuserroles_association/$ref", token, json=body)


# -- roles, application user, association ---------------------------------------------------------------


def test_an_administrator_provisions_the_app_which_then_reads_exactly_what_its_role_grants(
    world: Provisionable, state: SandboxState
) -> None:
    assert world.app("GET", "WhoAmI").status_code == 403  # no application user yet

    role_id = new_role(world, "Contoso Sync", {"prvReadAccount": "Global"})
    user_id = new_application_user(world)
    before = world.app("GET", "accounts?$select=name")
    assert before.status_code == 403 and "prvReadAccount" in before.json()["error"]["message"]

    assert associate(world, user_id, role_id).status_code == 204

    who = world.app("GET", "WhoAmI")
    assert who.status_code == 200 and who.json()["UserId"] == user_id
    accounts = world.app("GET", "accounts?$select=name")
    assert accounts.status_code == 200 and len(accounts.json()["value"]) == 3
    roles = world.call("GET", f"systemusers({user_id})/systemuserroles_association").json()["value"]
    assert [(r["roleid"], r["name"]) for r in roles] == [(role_id, "Contoso Sync")]
    granted = world.call("GET", f"roles({role_id})/roleprivileges_association").json()["value"]
    assert [p["name"] for p in granted] == ["prvReadAccount"]
    (row,) = [r for r in state.rows(world.org.url, "systemusers") if r["systemuserid"] == user_id]
    assert (row["applicationid"], row["accessmode"], row["isdisabled"]) == (world.org.app.client_id, 4, False)
    assert row["_businessunitid_value"] == root_unit(world)
    # Impersonation was not granted: CallerObjectId is refused with the privilege named.
    admin_object = next(r for r in state.rows(world.org.url, "systemusers") if r["fullname"] == "Grace Admin")
    impersonated = world.app("GET", "WhoAmI", CallerObjectId=admin_object["azureactivedirectoryobjectid"])
    assert impersonated.status_code == 403 and "prvActOnBehalfOfAnotherUser" in impersonated.text


def test_replacing_privileges_sets_exactly_them_and_takes_effect_for_the_holder(world: Provisionable) -> None:
    role_id = new_role(world, "Sync", {"prvReadAccount": "Global", "prvActOnBehalfOfAnotherUser": "Global"})
    user_id = new_application_user(world)
    assert associate(world, user_id, role_id).status_code == 204
    assert world.app("GET", "accounts?$select=name").status_code == 200

    body = {"Privileges": [{"PrivilegeId": privilege(world, "prvReadContact"), "Depth": "Global"}]}
    replaced = world.call("POST", f"roles({role_id})/Microsoft.Dynamics.CRM.ReplacePrivilegesRole", json=body)

    assert replaced.status_code == 204
    granted = world.call("GET", f"roles({role_id})/roleprivileges_association").json()["value"]
    assert [p["name"] for p in granted] == ["prvReadContact"]
    assert world.app("GET", "accounts?$select=name").status_code == 403


def test_a_user_without_the_privileges_is_refused_with_the_privilege_named_and_nothing_changes(
    world: Provisionable, state: SandboxState
) -> None:
    unit = root_unit(world)

    def custom_roles() -> list[dict[str, object]]:
        return [r for r in state.rows(world.org.url, "roles") if r["name"] != SA]

    users_before = len(state.rows(world.org.url, "systemusers"))

    role = world.call(
        "POST", "roles", world.clerk_token, json={"name": "X", "businessunitid@odata.bind": f"/businessunits({unit})"}
    )
    user = world.call(
        "POST",
        "systemusers",
        world.clerk_token,
        json={"applicationid": world.org.app.client_id, "businessunitid@odata.bind": f"/businessunits({unit})"},
    )

    assert role.status_code == 403 and role.json()["error"]["code"] == "0x80040220"
    assert "is missing prvCreateRole privilege" in role.json()["error"]["message"]
    assert user.status_code == 403 and "is missing prvCreateUser privilege" in user.json()["error"]["message"]
    assert custom_roles() == []
    assert len(state.rows(world.org.url, "systemusers")) == users_before
    assert [u for u in state.rows(world.org.url, "systemusers") if u["applicationid"]] == []


def test_nobody_but_an_administrator_grants_a_privilege_they_do_not_hold(world: Provisionable) -> None:
    delegate = new_role(
        world,
        "Role maker",
        {"prvCreateRole": "Global", "prvWriteRole": "Global", "prvReadRole": "Global", "prvReadAccount": "Basic"},
    )
    user_id = new_application_user(world)
    assert associate(world, user_id, delegate).status_code == 204
    app_token = world.org.token

    created = world.call(
        "POST",
        "roles",
        app_token,
        json={"name": "Escalated", "businessunitid@odata.bind": f"/businessunits({root_unit(world)})"},
    )
    assert created.status_code == 204, created.text  # it holds prvCreateRole
    role_id = created.headers["OData-EntityId"][-37:-1]
    for name, depth in (("prvReadContact", "Global"), ("prvReadAccount", "Global")):
        body = {"Privileges": [{"PrivilegeId": privilege(world, name), "Depth": depth}]}
        refused = world.call("POST", f"roles({role_id})/Microsoft.Dynamics.CRM.AddPrivilegesRole", app_token, json=body)
        assert refused.status_code == 403 and f"is missing {name} privilege" in refused.text
    assert world.call("GET", f"roles({role_id})/roleprivileges_association").json()["value"] == []


def _item(privilege_id: str, depth: object) -> dict[str, Any]:
    return {"Privileges": [{"PrivilegeId": privilege_id, "Depth": depth}]}


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (lambda ids: _item("not-a-guid", "Global"), 400, "PrivilegeId"),
        (lambda ids: _item(ids["prvReadAccount"], "Everywhere"), 400, "Depth"),
        (lambda ids: _item(str(uuid.uuid4()), "Global"), 404, "privilege With Id"),
        (lambda ids: _item(ids["prvActOnBehalfOfAnotherUser"], "Basic"), 400, "cannot be granted at Basic"),
        (lambda ids: {"Privileges": "prvReadAccount"}, 400, "Privileges parameter"),
    ],
)
def test_bad_privilege_payloads_are_refused(
    world: Provisionable, body: Callable[[dict[str, str]], dict[str, Any]], status: int, needle: str
) -> None:
    role_id = new_role(world, "Sync", {"prvReadAccount": "Global"})
    ids = {name: privilege(world, name) for name in ("prvReadAccount", "prvActOnBehalfOfAnotherUser")}
    response = world.call("POST", f"roles({role_id})/Microsoft.Dynamics.CRM.AddPrivilegesRole", json=body(ids))
    assert response.status_code == status and needle in response.json()["error"]["message"]
    granted = world.call("GET", f"roles({role_id})/roleprivileges_association").json()["value"]
    assert [p["name"] for p in granted] == ["prvReadAccount"]


def test_application_user_payloads_and_duplicates_are_refused(
    world: Provisionable, state: SandboxState, new_app: Callable[..., Any]
) -> None:
    unit = f"/businessunits({root_unit(world)})"
    missing = world.call("POST", "systemusers", json={"businessunitid@odata.bind": unit})
    stranger = new_app(consent=False).client_id
    unconsented = world.call("POST", "systemusers", json={"applicationid": stranger, "businessunitid@odata.bind": unit})
    no_unit = world.call("POST", "systemusers", json={"applicationid": world.org.app.client_id})
    assert missing.status_code == 400 and "applicationid is required" in missing.text
    assert unconsented.status_code == 400 and "no service principal" in unconsented.text
    assert no_unit.status_code == 400 and "business unit" in no_unit.text

    user_id = new_application_user(world)
    again = world.call(
        "POST", "systemusers", json={"applicationid": world.org.app.client_id, "businessunitid@odata.bind": unit}
    )
    role_id = new_role(world, "Sync", {"prvReadAccount": "Global"})
    duplicate_role = world.call("POST", "roles", json={"name": "Sync", "businessunitid@odata.bind": unit})
    assert associate(world, user_id, role_id).status_code == 204
    twice = associate(world, user_id, role_id)

    assert again.status_code == 412 and duplicate_role.status_code == 412 and twice.status_code == 412
    assert [u for u in state.rows(world.org.url, "systemusers") if u["applicationid"] == world.org.app.client_id] != []
    assert len([r for r in state.rows(world.org.url, "roles") if r["name"] == "Sync"]) == 1


def test_a_disabled_application_user_is_enabled_through_isdisabled(world: Provisionable, state: SandboxState) -> None:
    role_id = new_role(world, "Sync", {"prvReadAccount": "Global"})
    user_id = new_application_user(world)
    associate(world, user_id, role_id)
    assert world.call("PATCH", f"systemusers({user_id})", json={"isdisabled": True}).status_code == 204
    assert world.app("GET", "WhoAmI").status_code == 400  # disabled (sandbox.dataverse.service)

    assert world.call("PATCH", f"systemusers({user_id})", json={"isdisabled": False}).status_code == 204
    assert world.app("GET", "WhoAmI").status_code == 200
    refused = world.call("PATCH", f"systemusers({user_id})", world.clerk_token, json={"isdisabled": True})
    assert refused.status_code == 403 and "prvWriteUser" in refused.text
    assert world.app("GET", "WhoAmI").status_code == 200


# -- webhooks: service endpoints and steps -------------------------------------------------------------


def settings_xml(pairs: dict[str, str]) -> str:
    return "<settings>" + "".join(f'<setting name="{k}" value="{v}" />' for k, v in pairs.items()) + "</settings>"


def new_step(world: Provisionable, endpoint_id: str, table: str, message: str, **extra: Any) -> str:
    message_id = world.one(f"sdkmessages?$filter=name eq '{message}'&$select=sdkmessageid")["sdkmessageid"]
    filter_id = world.one(
        f"sdkmessagefilters?$filter=primaryobjecttypecode eq '{table}' and _sdkmessageid_value eq {message_id}"
    )["sdkmessagefilterid"]
    body = {
        "name": f"{table} {message}",
        "mode": 1,
        "stage": 40,
        "rank": 1,
        "supporteddeployment": 0,
        "sdkmessageid@odata.bind": f"/sdkmessages({message_id})",
        "sdkmessagefilterid@odata.bind": f"/sdkmessagefilters({filter_id})",
        "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({endpoint_id})",
        **extra,
    }
    return world.create("sdkmessageprocessingsteps", body)


def test_a_registered_step_delivers_with_the_endpoints_headers_and_follows_its_changes(
    world: Provisionable, state: SandboxState, receiver: Receiver
) -> None:
    endpoint = {
        "name": "S2S receiver",
        "url": receiver.url,
        "contract": 8,
        "authtype": 5,
        "authvalue": settings_xml({"x-functions-key": "key-1", "x-s2s-webhook-secret": "secret-1"}),
    }
    endpoint_id = world.create("serviceendpoints", endpoint)
    step_id = new_step(world, endpoint_id, "account", "Update", filteringattributes="name")
    account_id = state.seed_rows(world.org.url, "accounts", 1)[0]

    assert world.call("PATCH", f"accounts({account_id})", json={"telephone1": "1"}).status_code == 204
    assert world.call("PATCH", f"accounts({account_id})", json={"name": "Renamed"}).status_code == 204
    state.wait_for_webhooks()

    (first,) = receiver.received  # the telephone change is filtered out
    assert first.headers["x-functions-key"] == "key-1" and first.headers["x-s2s-webhook-secret"] == "secret-1"
    assert first.query == {} and first.json()["OwningExtension"]["Id"] == step_id
    read_back = world.call("GET", f"serviceendpoints({endpoint_id})").json()
    assert read_back["url"] == receiver.url and "authvalue" not in read_back

    rotated = {"authvalue": settings_xml({"x-functions-key": "key-1", "x-s2s-webhook-secret": "secret-2"})}
    assert world.call("PATCH", f"serviceendpoints({endpoint_id})", json=rotated).status_code == 204
    world.call("PATCH", f"accounts({account_id})", json={"name": "Again"})
    state.wait_for_webhooks()
    assert receiver.received[-1].headers["x-s2s-webhook-secret"] == "secret-2"

    blocked = world.call("DELETE", f"serviceendpoints({endpoint_id})")
    assert blocked.status_code == 400 and "processing steps" in blocked.text
    assert world.call("DELETE", f"sdkmessageprocessingsteps({step_id})").status_code == 204
    assert world.call("DELETE", f"serviceendpoints({endpoint_id})").status_code == 204
    world.call("PATCH", f"accounts({account_id})", json={"name": "Unheard"})
    state.wait_for_webhooks()
    assert len(receiver.received) == 2
    assert state.rows(world.org.url, "serviceendpoints") == []


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"authvalue": "x-functions-key: k"}, "authvalue must be <settings>"),
        ({"authvalue": settings_xml({"bad header": "v"})}, "invalid header"),
        ({"authtype": 2}, "not a webhook authentication type"),
        ({"contract": 1}, "webhook service endpoints only"),
        ({"url": "/relative"}, "absolute http(s) url"),
    ],
)
def test_bad_service_endpoints_are_refused(
    world: Provisionable, state: SandboxState, changes: dict[str, Any], needle: str
) -> None:
    endpoint = {"name": "e", "url": "https://example.test/api", "contract": 8, "authtype": 5}
    endpoint["authvalue"] = settings_xml({"x-functions-key": "k"})
    response = world.call("POST", "serviceendpoints", json={**endpoint, **changes})
    assert response.status_code == 400 and needle in response.json()["error"]["message"]
    assert state.rows(world.org.url, "serviceendpoints") == []


def test_a_step_on_a_filter_of_another_message_or_a_clerk_is_refused(world: Provisionable, state: SandboxState) -> None:
    endpoint = {"name": "e", "url": "https://example.test/api", "contract": 8, "authtype": 4, "authvalue": "k"}
    endpoint_id = world.create("serviceendpoints", endpoint)
    create_id = world.one("sdkmessages?$filter=name eq 'Create'")["sdkmessageid"]
    update_id = world.one("sdkmessages?$filter=name eq 'Update'")["sdkmessageid"]
    update_filter = world.one(
        f"sdkmessagefilters?$filter=primaryobjecttypecode eq 'account' and _sdkmessageid_value eq {update_id}"
    )["sdkmessagefilterid"]
    body = {
        "name": "mismatch",
        "mode": 1,
        "stage": 40,
        "sdkmessageid@odata.bind": f"/sdkmessages({create_id})",
        "sdkmessagefilterid@odata.bind": f"/sdkmessagefilters({update_filter})",
        "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({endpoint_id})",
    }
    mismatch = world.call("POST", "sdkmessageprocessingsteps", json=body)
    synchronous_late = world.call(
        "POST",
        "sdkmessageprocessingsteps",
        json={**body, "sdkmessageid@odata.bind": f"/sdkmessages({update_id})", "stage": 20},
    )
    clerk = world.call("POST", "sdkmessageprocessingsteps", world.clerk_token, json=body)
    assert mismatch.status_code == 400 and "is not a filter of the message Create" in mismatch.text
    assert synchronous_late.status_code == 400 and "stage 40" in synchronous_late.text
    assert clerk.status_code == 403 and "prvCreateSdkMessageProcessingStep" in clerk.text
    assert state.rows(world.org.url, "sdkmessageprocessingsteps") == []
