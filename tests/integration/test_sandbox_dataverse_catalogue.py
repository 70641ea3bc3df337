"""The Dataverse stand-in's edges and its table catalogue (sandbox/dataverse/tables.json), over plain `requests`
and through our client: unknown or wrong-case entity sets answer 404 0x8006088a, POST to the WhoAmI function
answers 404, an org the sandbox does not have is "no such organisation" at once, and the catalogue's tables
(leads, opportunities, tasks, systemusers, businessunits, teams, a custom table) with their choices and lookups.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
import requests

from sandbox import Sandbox
from shared.bootstrap import build_services
from shared.dataverse.errors import OrganizationNotFoundError, RowNotFoundError, UnknownTableError
from tests.integration.conftest import app_with_certificate, cert_file_settings, customer_org

from .conftest import DataverseOrg
from .test_sandbox_dataverse import _proxy_connect

pytestmark = pytest.mark.integration


# -- edges ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("segment", ["Account", "Accounts", "leadz", "account"])
def test_unknown_or_wrong_case_entity_set_is_404_resource_not_found(
    new_org: Callable[..., DataverseOrg], segment: str
) -> None:
    org = new_org()
    row = str(uuid.uuid4())

    listed = requests.get(f"{org.api}/{segment}", headers=org.headers(), timeout=10)
    deleted = requests.delete(f"{org.api}/{segment}({row})", headers=org.headers(), timeout=10)

    for response in (listed, deleted):
        assert response.status_code == 404
        assert response.json() == {
            "error": {"code": "0x8006088a", "message": f"Resource not found for the segment '{segment}'."}
        }


def test_post_to_the_who_am_i_function_is_404_no_http_resource(new_org: Callable[..., DataverseOrg]) -> None:
    org = new_org()

    response = requests.post(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10)

    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "",
        "message": f"No HTTP resource was found that matches the request URI '{org.api}/WhoAmI'.",
    }


def test_proxy_answers_404_for_an_org_host_it_does_not_have(sandbox_env: Sandbox) -> None:
    before = sandbox_env.state.count("proxy_connect", status=404)

    assert _proxy_connect(sandbox_env, "nosuchorg.crm4.dynamics.com:443") == b"HTTP/1.1 404 Not Found"
    assert _proxy_connect(sandbox_env, "nosuchorg.crm4.dynamics.com:8443") == b"HTTP/1.1 403 Forbidden"
    assert _proxy_connect(sandbox_env, "a.b.crm4.dynamics.com:443") == b"HTTP/1.1 403 Forbidden"

    assert sandbox_env.state.count("proxy_connect", status=404) == before + 1


@pytest.fixture
def client_world(sandbox: Sandbox, sandbox_env: Sandbox, tmp_path):  # type: ignore[no-untyped-def]
    st = sandbox.state
    client_id, _, cert_file = app_with_certificate(st, "Catalogue client test", tmp_path)
    tenant, org_url, _ = customer_org(st, client_id, "cat", suffix="crm4.dynamics.com")
    services = build_services(cert_file_settings(sandbox, client_id, cert_file, dataverse_retry_budget_seconds=30))
    return st, services, tenant, org_url


def test_client_tells_an_unknown_table_from_a_missing_row(client_world) -> None:  # type: ignore[no-untyped-def]
    st, services, tenant, org_url = client_world
    client = services.dataverse.for_org(tenant, org_url)
    (kept,) = st.seed_rows(org_url, "accounts", 1)

    with pytest.raises(UnknownTableError) as unknown:
        client.delete("Accounts", kept)
    missing = client.delete("accounts", str(uuid.uuid4()))

    assert missing is False
    assert not isinstance(unknown.value, RowNotFoundError)
    assert unknown.value.error_code == "0x8006088a"
    assert [row["accountid"] for row in st.rows(org_url, "accounts")] == [kept]


def test_client_reports_no_such_organisation_at_once(client_world) -> None:  # type: ignore[no-untyped-def]
    _, services, tenant, _ = client_world
    client = services.dataverse.for_org(tenant, f"https://nosuch{uuid.uuid4().hex[:8]}.crm4.dynamics.com")

    started = time.monotonic()
    with pytest.raises(OrganizationNotFoundError) as info:
        client.whoami()

    assert time.monotonic() - started < 3  # no round of retries
    assert "No Dataverse organisation at https://nosuch" in info.value.message


# -- the catalogue ------------------------------------------------------------------------------------------


def test_service_document_lists_every_catalogue_table(new_org: Callable[..., DataverseOrg]) -> None:
    org = new_org()

    names = {item["name"] for item in requests.get(f"{org.api}/", headers=org.headers(), timeout=10).json()["value"]}

    assert {"accounts", "contacts", "leads", "opportunities", "tasks", "systemusers", "businessunits", "teams"} <= names
    assert "contoso_projects" in names


def test_leads_round_trip_with_choices_lookups_and_computed_full_name(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org()
    (account,) = sandbox_env.state.seed_rows(org.url, "accounts", 1)

    created = requests.post(
        f"{org.api}/leads",
        json={
            "subject": "Interested in 40 bikes",
            "firstname": "Ada",
            "lastname": "Lovelace",
            "leadsourcecode": 8,
            "parentaccountid@odata.bind": f"/accounts({account})",
        },
        headers=org.headers(Prefer="return=representation"),
        timeout=10,
    )
    bad_choice = requests.post(f"{org.api}/leads", json={"leadsourcecode": 99}, headers=org.headers(), timeout=10)
    bad_state = requests.post(f"{org.api}/leads", json={"statecode": 7}, headers=org.headers(), timeout=10)

    assert created.status_code == 201, created.text
    (row,) = sandbox_env.state.rows(org.url, "leads")
    assert row["fullname"] == "Ada Lovelace"
    assert row["leadsourcecode"] == 8
    assert row["_parentaccountid_value"] == account
    assert row["statecode"] == 0
    assert created.json()["leadid"] == row["leadid"]
    assert bad_choice.status_code == 400 and bad_choice.json()["error"]["code"] == "0x80044331"
    assert bad_state.status_code == 400
    assert len(sandbox_env.state.rows(org.url, "leads")) == 1


def test_seed_rows_fills_any_catalogue_table(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()
    state = sandbox_env.state

    lead_ids = state.seed_rows(org.url, "leads", 4, prefix="Lead")
    project_ids = state.seed_rows(org.url, "contoso_projects", 3, prefix="Project")
    listed = requests.get(
        f"{org.api}/contoso_projects?$select=contoso_name,contoso_stage&$orderby=contoso_name",
        headers=org.headers(),
        timeout=10,
    ).json()["value"]

    leads = state.rows(org.url, "leads")
    assert sorted(row["leadid"] for row in leads) == sorted(lead_ids)
    assert sorted(row["fullname"] for row in leads) == ["Lead 1", "Lead 2", "Lead 3", "Lead 4"]
    assert [row["leadsourcecode"] for row in sorted(leads, key=lambda r: r["lastname"])] == [1, 2, 3, 4]
    assert [row["contoso_name"] for row in listed] == ["Project 1", "Project 2", "Project 3"]
    assert [row["contoso_stage"] for row in listed] == [100000000, 100000001, 100000002]
    assert {row["contoso_projectid"] for row in listed} == set(project_ids)
    with pytest.raises(ValueError, match="add_org_user"):
        state.seed_rows(org.url, "systemusers", 1)
    with pytest.raises(ValueError, match="table must be one of"):
        state.seed_rows(org.url, "invoices", 1)


def test_users_and_the_root_business_unit_are_rows(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()
    state = sandbox_env.state
    person = state.add_org_user(org.url, str(uuid.uuid4()), "Grace Hopper")

    roots = requests.get(
        f"{org.api}/businessunits?$filter=_parentbusinessunitid_value eq null&$select=businessunitid,name",
        headers=org.headers(),
        timeout=10,
    ).json()["value"]
    app_users = requests.get(
        f"{org.api}/systemusers?$filter=applicationid eq {org.app.client_id}&$select=fullname,accessmode,isdisabled",
        headers=org.headers(),
        timeout=10,
    ).json()["value"]
    state.set_application_user(org.url, org.app.client_id, enabled=False)
    disabled = [row for row in state.rows(org.url, "systemusers") if row["systemuserid"] == org.app_user_id]

    assert [row["businessunitid"] for row in roots] == [org.org.root_business_unit_id]
    assert [row["systemuserid"] for row in app_users] == [org.app_user_id]
    assert app_users[0]["accessmode"] == 4
    assert app_users[0]["isdisabled"] is False
    assert disabled[0]["isdisabled"] is True
    assert any(row["systemuserid"] == person for row in state.rows(org.url, "systemusers"))


def test_metadata_describes_catalogue_tables_and_their_choices(new_org: Callable[..., DataverseOrg]) -> None:
    org = new_org()

    lead = requests.get(
        f"{org.api}/EntityDefinitions(LogicalName='lead')?$select=EntitySetName,PrimaryIdAttribute,IsCustomEntity",
        headers=org.headers(),
        timeout=10,
    ).json()
    custom = requests.get(
        f"{org.api}/EntityDefinitions(LogicalName='contoso_project')?$select=EntitySetName,IsCustomEntity",
        headers=org.headers(),
        timeout=10,
    ).json()
    picklists = requests.get(
        f"{org.api}/EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
        "?$select=LogicalName&$expand=OptionSet($select=Options)",
        headers=org.headers(),
        timeout=10,
    ).json()["value"]

    assert (lead["EntitySetName"], lead["PrimaryIdAttribute"], lead["IsCustomEntity"]) == ("leads", "leadid", False)
    assert (custom["EntitySetName"], custom["IsCustomEntity"]) == ("contoso_projects", True)
    quality = next(item for item in picklists if item["LogicalName"] == "leadqualitycode")
    labels = {o["Value"]: o["Label"]["LocalizedLabels"][0]["Label"] for o in quality["OptionSet"]["Options"]}
    assert labels == {1: "Hot", 2: "Warm", 3: "Cold"}
