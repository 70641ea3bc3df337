"""The Dataverse Web API stand-in reached the way production code reaches Dataverse: plain `requests` to
https://<org>.crm4.dynamics.com with only HTTPS_PROXY/REQUESTS_CA_BUNDLE pointing at the sandbox. Covers the
CONNECT proxy, the bearer challenge, application users (protocol §1, §4), WhoAmI and impersonation.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
import requests

from sandbox import Sandbox

from .conftest import DataverseOrg

pytestmark = pytest.mark.integration


def _proxy_connect(sandbox: Sandbox, target: str) -> bytes:
    """Send a raw CONNECT to the sandbox proxy and return its status line."""
    proxy = urlsplit(sandbox.https_proxy)
    with socket.create_connection((proxy.hostname, proxy.port), timeout=5) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return sock.recv(1024).split(b"\r\n", 1)[0]


def test_env_routes_org_urls_through_the_proxy_and_keeps_loopback_direct(sandbox_env: Sandbox) -> None:
    env = sandbox_env.env()

    assert env["HTTPS_PROXY"] == env["https_proxy"] == sandbox_env.https_proxy
    assert env["NO_PROXY"] == env["no_proxy"] == "127.0.0.1,localhost"
    assert sandbox_env.https_proxy.startswith("http://127.0.0.1:")
    assert sandbox_env.dataverse_port > 0


def test_who_am_i_through_the_proxy_with_env_vars_only(new_org: Callable[..., DataverseOrg]) -> None:
    org = new_org()

    response = requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10)

    assert response.status_code == 200
    assert response.headers["OData-Version"] == "4.0"
    assert response.json() == {
        "@odata.context": f"{org.api}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
        "BusinessUnitId": org.org.root_business_unit_id,
        "UserId": org.app_user_id,
        "OrganizationId": org.org.org_id,
    }


def test_every_org_suffix_is_covered_by_the_certificate(new_org: Callable[..., DataverseOrg]) -> None:
    for suffix in ("crm.dynamics.com", "crm11.dynamics.com", "crm21.dynamics.com"):
        org = new_org(suffix=suffix)
        assert requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10).status_code == 200


def test_proxy_refuses_hosts_that_are_not_registered_orgs(sandbox_env: Sandbox) -> None:
    before = sandbox_env.state.count("proxy_connect", status=403)

    assert _proxy_connect(sandbox_env, "login.microsoftonline.com:443") == b"HTTP/1.1 403 Forbidden"
    assert _proxy_connect(sandbox_env, "unregistered.example.com:443") == b"HTTP/1.1 403 Forbidden"
    with pytest.raises(requests.exceptions.ProxyError, match="403"):
        requests.get("https://example.com/", timeout=10)

    assert sandbox_env.state.count("proxy_connect", status=403) == before + 3


def test_proxy_tunnels_only_port_443_of_an_org(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()

    assert _proxy_connect(sandbox_env, f"{org.org.host}:443") == b"HTTP/1.1 200 Connection established"
    assert _proxy_connect(sandbox_env, f"{org.org.host}:8443") == b"HTTP/1.1 403 Forbidden"


def test_missing_token_gets_the_bearer_challenge_naming_the_org_tenant(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org()

    response = requests.get(f"{org.api}/WhoAmI", timeout=10)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f"Bearer authorization_uri={sandbox_env.authority_host}/{org.org.tenant_id}/oauth2/authorize, "
        f"resource_id={org.url}/"
    )


def test_token_for_another_org_is_rejected(new_org: Callable[..., DataverseOrg]) -> None:
    first, second = new_org(), new_org()

    response = requests.get(f"{second.api}/WhoAmI", headers=first.headers(), timeout=10)

    assert response.status_code == 401
    assert f"/{second.org.tenant_id}/oauth2/authorize" in response.headers["WWW-Authenticate"]


def test_garbage_token_is_rejected(new_org: Callable[..., DataverseOrg]) -> None:
    org = new_org()

    response = requests.get(f"{org.api}/WhoAmI", headers={"Authorization": "Bearer not.a.jwt"}, timeout=10)

    assert response.status_code == 401


def test_app_without_application_user_is_not_a_member(new_org: Callable[..., DataverseOrg]) -> None:
    org = new_org(app_user=False)

    response = requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10)

    assert response.status_code == 403
    assert response.json() == {
        "error": {"code": "0x80072560", "message": "The user is not a member of the organization."}
    }


def test_disabled_application_user_is_refused_and_can_be_enabled(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org(enabled=False)

    refused = requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10)
    sandbox_env.state.set_application_user(org.url, org.app.client_id, enabled=True)
    allowed = requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10)

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "0x80040225"
    assert error["message"].startswith(
        f"The user with SystemUserId={org.app_user_id} in OrganizationContext={org.org.org_id} is disabled."
    )
    assert "users are disabled if they don't have a license assigned to them" in error["message"]
    assert allowed.status_code == 200


def test_removed_application_user_is_no_longer_a_member(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org()
    sandbox_env.state.remove_application_user(org.url, org.app.client_id)

    response = requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10)

    assert response.json()["error"]["code"] == "0x80072560"


def test_responses_carry_request_ids_and_dop_hint(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()
    sandbox_env.state.set_dataverse_limits(org.url, dop_hint=12)
    client_request_id = str(uuid.uuid4())

    first = requests.get(f"{org.api}/WhoAmI", headers=org.headers(**{"x-ms-client-request-id": client_request_id}))
    second = requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10)

    assert first.headers["x-ms-client-request-id"] == client_request_id
    assert "x-ms-client-request-id" not in second.headers
    assert uuid.UUID(first.headers["x-ms-service-request-id"]) != uuid.UUID(second.headers["x-ms-service-request-id"])
    assert first.headers["x-ms-dop-hint"] == "12"
    assert sandbox_env.state.count("dataverse_request", org=org.url, status=200, method="GET") == 2


# -- impersonation (protocol §4) ---------------------------------------------------------------------------


def test_impersonation_needs_act_on_behalf_privilege(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org()
    object_id = str(uuid.uuid4())
    sandbox_env.state.add_org_user(org.url, object_id, "Dana Delegate")

    response = requests.get(f"{org.api}/WhoAmI", headers=org.headers(CallerObjectId=object_id), timeout=10)

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "0x80040220"
    assert f"Principal user (Id={org.app_user_id}" in error["message"]
    assert "prvActOnBehalfOfAnotherUser" in error["message"]


def test_impersonated_who_am_i_and_writes_record_the_real_actor(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org(act_on_behalf=True)
    object_id = str(uuid.uuid4())
    user_id = sandbox_env.state.add_org_user(org.url, object_id, "Dana Delegate")
    headers = org.headers(CallerObjectId=object_id)

    who = requests.get(f"{org.api}/WhoAmI", headers=headers, timeout=10).json()
    created = requests.post(f"{org.api}/accounts", json={"name": "On behalf"}, headers=headers, timeout=10)
    plain = requests.post(f"{org.api}/accounts", json={"name": "Directly"}, headers=org.headers(), timeout=10)

    assert who["UserId"] == user_id
    assert created.status_code == plain.status_code == 204
    rows = {row["name"]: row for row in sandbox_env.state.rows(org.url, "accounts")}
    assert rows["On behalf"]["_ownerid_value"] == user_id
    assert rows["On behalf"]["_createdby_value"] == user_id
    assert rows["On behalf"]["_createdonbehalfby_value"] == org.app_user_id
    assert rows["On behalf"]["_modifiedonbehalfby_value"] == org.app_user_id
    assert rows["Directly"]["_ownerid_value"] == org.app_user_id
    assert rows["Directly"]["_createdonbehalfby_value"] is None


def test_legacy_mscrmcallerid_names_the_systemuser(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org(act_on_behalf=True)
    user_id = sandbox_env.state.add_org_user(org.url, str(uuid.uuid4()), "Lee Legacy")

    who = requests.get(f"{org.api}/WhoAmI", headers=org.headers(MSCRMCallerID=user_id), timeout=10).json()

    assert who["UserId"] == user_id


def test_impersonating_unknown_or_disabled_users_fails_clearly(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org(act_on_behalf=True)
    unknown = str(uuid.uuid4())
    disabled = str(uuid.uuid4())
    disabled_id = sandbox_env.state.add_org_user(org.url, disabled, "Gone User", enabled=False)

    missing = requests.get(f"{org.api}/WhoAmI", headers=org.headers(CallerObjectId=unknown), timeout=10)
    off = requests.get(f"{org.api}/WhoAmI", headers=org.headers(CallerObjectId=disabled), timeout=10)

    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "0x80040217"
    assert unknown in missing.json()["error"]["message"]
    assert off.status_code == 400
    assert off.json()["error"]["code"] == "0x80040225"
    assert f"SystemUserId={disabled_id}" in off.json()["error"]["message"]
