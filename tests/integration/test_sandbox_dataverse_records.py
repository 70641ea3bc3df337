"""Dataverse stand-in rows over plain `requests`: create / retrieve / update / upsert / delete, alternate keys,
etags, queries with $select/$filter/$orderby, server-driven paging (page-results.md) and EntityDefinitions.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests

from sandbox import Sandbox

from .conftest import DataverseOrg

pytestmark = pytest.mark.integration


def _get_all(org: DataverseOrg, url: str, page_size: int, **headers: str) -> list[dict[str, Any]]:
    """Follow @odata.nextLink unchanged with the same maxpagesize; returns every page's body."""
    pages = []
    while url:
        response = requests.get(
            url, headers=org.headers(Prefer=f"odata.maxpagesize={page_size}", **headers), timeout=30
        )
        assert response.status_code == 200, response.text
        assert response.headers["Preference-Applied"] == f"odata.maxpagesize={page_size}"
        pages.append(response.json())
        url = pages[-1].get("@odata.nextLink")
    return pages


def test_create_returns_entity_id_and_retrieve_reads_it(new_org: Callable[..., DataverseOrg]) -> None:
    org = new_org()

    created = requests.post(
        f"{org.api}/accounts", json={"name": "Contoso", "revenue": 1200.5}, headers=org.headers(), timeout=10
    )
    entity_url = created.headers["OData-EntityId"]
    read = requests.get(f"{entity_url}?$select=name,revenue", headers=org.headers(), timeout=10)

    assert created.status_code == 204
    assert entity_url.startswith(f"{org.api}/accounts(")
    record_id = entity_url[-37:-1]
    body = read.json()
    assert body["@odata.context"] == f"{org.api}/$metadata#accounts(name,revenue)/$entity"
    assert body["name"] == "Contoso"
    assert body["revenue"] == 1200.5
    assert body["accountid"] == record_id
    assert body["@odata.etag"].startswith('W/"')
    assert read.headers["ETag"] == body["@odata.etag"]


def test_create_with_representation_and_client_supplied_id(new_org: Callable[..., DataverseOrg]) -> None:
    org = new_org()
    record_id = str(uuid.uuid4())

    response = requests.post(
        f"{org.api}/contacts?$select=fullname",
        json={"contactid": record_id, "firstname": "Ada", "lastname": "Lovelace"},
        headers=org.headers(Prefer="return=representation"),
        timeout=10,
    )

    assert response.status_code == 201
    assert response.headers["Preference-Applied"] == "return=representation"
    assert response.json()["contactid"] == record_id
    assert response.json()["fullname"] == "Ada Lovelace"


def test_missing_row_is_0x80040217(new_org: Callable[..., DataverseOrg]) -> None:
    org = new_org()
    record_id = str(uuid.uuid4())

    read = requests.get(f"{org.api}/accounts({record_id})", headers=org.headers(), timeout=10)
    delete = requests.delete(f"{org.api}/accounts({record_id})", headers=org.headers(), timeout=10)

    for response in (read, delete):
        assert response.status_code == 404
        assert response.json() == {
            "error": {"code": "0x80040217", "message": f"account With Id = {record_id} Does Not Exist"}
        }


def test_update_delete_and_versions_increase(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()
    entity = requests.post(f"{org.api}/accounts", json={"name": "A"}, headers=org.headers()).headers["OData-EntityId"]
    first = requests.get(entity, headers=org.headers(), timeout=10).json()

    updated = requests.patch(entity, json={"telephone1": "555-0100"}, headers=org.headers(**{"If-Match": "*"}))
    second = requests.get(entity, headers=org.headers(), timeout=10).json()
    deleted = requests.delete(entity, headers=org.headers(), timeout=10)

    assert updated.status_code == 204
    assert second["telephone1"] == "555-0100"
    assert second["versionnumber"] > first["versionnumber"]
    assert deleted.status_code == 204
    assert sandbox_env.state.rows(org.url, "accounts") == []


def test_patch_upsert_variants(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()
    record_id = str(uuid.uuid4())
    url = f"{org.api}/accounts({record_id})"

    update_only = requests.patch(url, json={"name": "X"}, headers=org.headers(**{"If-Match": "*"}), timeout=10)
    upserted = requests.patch(url, json={"name": "Created by upsert"}, headers=org.headers(), timeout=10)
    create_only = requests.patch(url, json={"name": "Y"}, headers=org.headers(**{"If-None-Match": "*"}), timeout=10)
    updated = requests.patch(url, json={"name": "Updated by upsert"}, headers=org.headers(), timeout=10)

    assert update_only.status_code == 404
    assert upserted.status_code == 204
    assert upserted.headers["OData-EntityId"] == url
    assert create_only.status_code == 412
    assert create_only.json()["error"]["code"] == "0x80040237"
    assert updated.status_code == 204
    (row,) = sandbox_env.state.rows(org.url, "accounts")
    assert row["accountid"] == record_id
    assert row["name"] == "Updated by upsert"


def test_optimistic_concurrency_with_etags(new_org: Callable[..., DataverseOrg]) -> None:
    org = new_org()
    entity = requests.post(f"{org.api}/accounts", json={"name": "A"}, headers=org.headers()).headers["OData-EntityId"]
    etag = requests.get(entity, headers=org.headers(), timeout=10).json()["@odata.etag"]

    fresh = requests.patch(entity, json={"name": "B"}, headers=org.headers(**{"If-Match": etag}), timeout=10)
    stale = requests.patch(entity, json={"name": "C"}, headers=org.headers(**{"If-Match": etag}), timeout=10)
    new_etag = requests.get(entity, headers=org.headers(), timeout=10).headers["ETag"]
    unchanged = requests.get(entity, headers=org.headers(**{"If-None-Match": new_etag}), timeout=10)

    assert fresh.status_code == 204
    assert stale.status_code == 412
    assert stale.json()["error"]["code"] == "0x80060882"
    assert unchanged.status_code == 304


def test_upsert_by_alternate_key(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()
    url = f"{org.api}/accounts(accountnumber='ACC-1')"

    created = requests.patch(url, json={"name": "Keyed"}, headers=org.headers(), timeout=10)
    updated = requests.patch(url, json={"revenue": 10}, headers=org.headers(), timeout=10)
    read = requests.get(url, headers=org.headers(), timeout=10)
    duplicate = requests.post(f"{org.api}/accounts", json={"accountnumber": "acc-1"}, headers=org.headers())

    assert created.status_code == updated.status_code == 204
    assert created.headers["OData-EntityId"] == updated.headers["OData-EntityId"]
    assert read.json()["name"] == "Keyed"
    assert read.json()["revenue"] == 10
    assert duplicate.status_code == 412
    assert len(sandbox_env.state.rows(org.url, "accounts")) == 1


def test_lookup_bind_sets_the_value_column(new_org: Callable[..., DataverseOrg]) -> None:
    org = new_org()
    account = requests.post(f"{org.api}/accounts", json={"name": "Parent"}, headers=org.headers())
    account_id = account.headers["OData-EntityId"][-37:-1]

    contact = requests.post(
        f"{org.api}/contacts",
        json={"lastname": "Child", "parentcustomerid_account@odata.bind": f"/accounts({account_id})"},
        headers=org.headers(Prefer="return=representation"),
        timeout=10,
    )
    dangling = requests.post(
        f"{org.api}/contacts",
        json={"lastname": "Orphan", "parentcustomerid_account@odata.bind": f"/accounts({uuid.uuid4()})"},
        headers=org.headers(),
        timeout=10,
    )

    assert contact.json()["_parentcustomerid_value"] == account_id
    assert dangling.status_code == 404


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"nosuchcolumn": 1}, "0x80060888"),
        ({"revenue": "lots"}, "0x80048d19"),
        ({"name": "x" * 161}, "0x80044331"),
        ({"_primarycontactid_value": str(uuid.uuid4())}, "0x80060888"),
    ],
)
def test_invalid_payloads_are_refused(new_org: Callable[..., DataverseOrg], payload: dict[str, Any], code: str) -> None:
    org = new_org()

    response = requests.post(f"{org.api}/accounts", json=payload, headers=org.headers(), timeout=10)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_filter_select_orderby_and_count(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()
    for name, revenue, state in [("Alpha", 10, 0), ("beta", 20, 0), ("Gamma", 30, 1), ("O'Brien", 40, 0)]:
        body = {"name": name, "revenue": revenue, "statecode": state}
        assert requests.post(f"{org.api}/accounts", json=body, headers=org.headers()).status_code == 204

    def names(query: str) -> list[str]:
        response = requests.get(f"{org.api}/accounts?{query}", headers=org.headers(), timeout=10)
        assert response.status_code == 200, response.text
        return [row["name"] for row in response.json()["value"]]

    assert names("$select=name&$filter=statecode eq 0&$orderby=name") == ["Alpha", "beta", "O'Brien"]
    assert names("$select=name&$filter=name eq 'BETA'") == ["beta"]
    assert names("$select=name&$filter=name eq 'O''Brien'") == ["O'Brien"]
    assert names("$select=name&$filter=revenue gt 15 and statecode ne 1&$orderby=revenue desc") == ["O'Brien", "beta"]
    assert names("$select=name&$filter=(revenue le 10 or revenue ge 40)&$orderby=name desc") == ["O'Brien", "Alpha"]
    assert names("$select=name&$filter=startswith(name,'g')") == ["Gamma"]
    assert names("$select=name&$top=2&$orderby=revenue") == ["Alpha", "beta"]
    counted = requests.get(f"{org.api}/accounts?$select=name&$count=true", headers=org.headers(), timeout=10)
    assert counted.json()["@odata.count"] == 4
    selected = requests.get(f"{org.api}/accounts?$select=name", headers=org.headers(), timeout=10).json()
    assert selected["@odata.context"] == f"{org.api}/$metadata#accounts(name)"
    assert set(selected["value"][0]) == {"@odata.etag", "name", "accountid"}


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("$skip=10", "$skip is not supported"),
        ("$expand=primarycontactid($expand=parentcustomerid_account)", "nested $expand is not supported"),
        ("$expand=nosuchnav", "Could not find a property named 'nosuchnav'"),
        ("$select=nosuch", "Could not find a property named 'nosuch'"),
        ("$filter=name eq 5", "incompatible types"),
        ("$filter=primarycontactid/fullname eq 'x'", "Navigation paths"),
        ("$filter=Microsoft.Dynamics.CRM.Today(PropertyName='createdon')", "'Microsoft.Dynamics.CRM.Today'"),
    ],
)
def test_unsupported_query_syntax_is_400_naming_it(
    new_org: Callable[..., DataverseOrg], query: str, fragment: str
) -> None:
    org = new_org()

    response = requests.get(f"{org.api}/accounts?{query}", headers=org.headers(), timeout=10)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "0x80060888"
    assert fragment in response.json()["error"]["message"]


def test_paging_12000_rows_in_three_pages(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()
    started = time.perf_counter()
    ids = sandbox_env.state.seed_rows(org.url, "accounts", 12_000)
    seeded_in = time.perf_counter() - started

    pages = _get_all(org, f"{org.api}/accounts?$select=name", 5000)

    assert seeded_in < 1.5
    assert [len(page["value"]) for page in pages] == [5000, 5000, 2000]
    assert pages[0]["@odata.nextLink"].startswith(f"{org.api}/accounts?$select=name&$skiptoken=%3Ccookie")
    assert "@odata.nextLink" not in pages[-1]
    served = [row["accountid"] for page in pages for row in page["value"]]
    assert sorted(served) == sorted(ids)


def test_seeding_20000_rows_is_fast_and_rows_snapshot_them(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org()

    started = time.perf_counter()
    ids = sandbox_env.state.seed_rows(org.url, "contacts", 20_000, prefix="Bulk")
    elapsed = time.perf_counter() - started

    assert elapsed < 1.5
    rows = sandbox_env.state.rows(org.url, "contacts")
    assert len(ids) == len(set(ids)) == len(rows) == 20_000
    assert rows[0]["fullname"] == "Bulk 1"
    assert len({row["versionnumber"] for row in rows}) == 20_000


def test_paging_with_filter_and_order_is_stable_across_inserts(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org()
    sandbox_env.state.seed_rows(org.url, "contacts", 25, prefix="Pat")
    url = f"{org.api}/contacts?$select=lastname&$filter=firstname eq 'pat'&$orderby=lastname desc"
    first = requests.get(url, headers=org.headers(Prefer="odata.maxpagesize=10"), timeout=10).json()
    # A row that sorts before the cursor arrives between pages; keyset paging neither repeats nor skips.
    late = requests.post(f"{org.api}/contacts", json={"firstname": "Pat", "lastname": "99"}, headers=org.headers())
    assert late.status_code == 204

    rest = _get_all(org, first["@odata.nextLink"], 10)

    served = [row["lastname"] for page in [first, *rest] for row in page["value"]]
    assert served == sorted((str(n) for n in range(1, 26)), reverse=True)


def test_entity_definitions_lookup_used_by_the_sdk(new_org: Callable[..., DataverseOrg]) -> None:
    org = new_org()

    found = requests.get(
        f"{org.api}/EntityDefinitions",
        params={"$select": "LogicalName,EntitySetName,PrimaryIdAttribute", "$filter": "LogicalName eq 'contact'"},
        headers=org.headers(),
        timeout=10,
    ).json()
    single = requests.get(
        f"{org.api}/EntityDefinitions(LogicalName='account')?$select=PrimaryNameAttribute", headers=org.headers()
    ).json()

    (contact,) = found["value"]
    assert contact == {
        "MetadataId": contact["MetadataId"],
        "LogicalName": "contact",
        "EntitySetName": "contacts",
        "PrimaryIdAttribute": "contactid",
    }
    assert single["PrimaryNameAttribute"] == "name"
