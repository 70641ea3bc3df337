"""Richer reads on the Dataverse stand-in over plain `requests`: `$expand` (single- and collection-valued, with
options inside), `@odata.bind` on create and update, `Prefer: odata.include-annotations` (formatted values and
lookup annotations) and FetchXML (`?fetchXml=`) with its paging cookie.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote
from xml.etree import ElementTree

import pytest
import requests

from sandbox import Sandbox

from .conftest import DataverseOrg

pytestmark = pytest.mark.integration

FORMATTED = "@OData.Community.Display.V1.FormattedValue"


def _create(org: DataverseOrg, entity_set: str, body: dict[str, Any]) -> str:
    response = requests.post(f"{org.api}/{entity_set}", json=body, headers=org.headers(), timeout=10)
    assert response.status_code == 204, response.text
    return response.headers["OData-EntityId"][-37:-1]


@pytest.fixture
def crm(new_org: Callable[..., DataverseOrg]) -> tuple[DataverseOrg, dict[str, str]]:
    """An account with a primary contact, two more contacts and a task, linked through @odata.bind."""
    org = new_org()
    ada = _create(org, "contacts", {"firstname": "Ada", "lastname": "Lovelace"})
    account = _create(
        org,
        "accounts",
        {
            "name": "Contoso",
            "revenue": 1500.5,
            "customertypecode": 3,
            "primarycontactid@odata.bind": f"/contacts({ada})",
        },
    )
    grace = _create(
        org,
        "contacts",
        {"firstname": "Grace", "lastname": "Hopper", "parentcustomerid_account@odata.bind": f"/accounts({account})"},
    )
    alan = _create(
        org,
        "contacts",
        {"firstname": "Alan", "lastname": "Turing", "parentcustomerid_account@odata.bind": f"accounts({account})"},
    )
    task = _create(
        org,
        "tasks",
        {
            "subject": "Call back",
            "prioritycode": 2,
            "regardingobjectid_account_task@odata.bind": f"/accounts({account})",
        },
    )
    return org, {"account": account, "ada": ada, "grace": grace, "alan": alan, "task": task}


# -- @odata.bind ------------------------------------------------------------------------------------------


def test_odata_bind_sets_lookups_on_create_and_update(
    crm: tuple[DataverseOrg, dict[str, str]], sandbox_env: Sandbox
) -> None:
    org, ids = crm
    state = sandbox_env.state

    rebound = requests.patch(
        f"{org.api}/accounts({ids['account']})",
        json={"primarycontactid@odata.bind": f"/contacts({ids['grace']})"},
        headers=org.headers(),
        timeout=10,
    )
    wrong_target = requests.patch(
        f"{org.api}/accounts({ids['account']})",
        json={"primarycontactid@odata.bind": f"/accounts({ids['account']})"},
        headers=org.headers(),
        timeout=10,
    )

    assert rebound.status_code == 204
    assert wrong_target.status_code == 400
    (account,) = state.rows(org.url, "accounts")
    assert account["_primarycontactid_value"] == ids["grace"]
    contacts = {row["contactid"]: row for row in state.rows(org.url, "contacts")}
    assert contacts[ids["grace"]]["_parentcustomerid_value"] == ids["account"]
    assert contacts[ids["ada"]]["_parentcustomerid_value"] is None
    (task,) = state.rows(org.url, "tasks")
    assert task["_regardingobjectid_value"] == ids["account"]


# -- $expand ----------------------------------------------------------------------------------------------


def test_expand_single_and_collection_valued_with_options(crm: tuple[DataverseOrg, dict[str, str]]) -> None:
    org, ids = crm
    expand = (
        "primarycontactid($select=fullname),"
        "contact_customer_accounts($select=fullname;$orderby=fullname desc;$top=1),"
        "Account_Tasks($select=subject;$filter=prioritycode eq 2)"
    )

    listed = requests.get(f"{org.api}/accounts?$select=name&$expand={quote(expand)}", headers=org.headers(), timeout=10)
    single = requests.get(
        f"{org.api}/accounts({ids['account']})?$select=name&$expand=contact_customer_accounts($select=firstname)",
        headers=org.headers(),
        timeout=10,
    )
    lead_less = requests.get(
        f"{org.api}/contacts({ids['grace']})?$expand=parentcustomerid_contact", headers=org.headers(), timeout=10
    )

    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["@odata.context"].endswith(
        "#accounts(name,primarycontactid(fullname),contact_customer_accounts(fullname),Account_Tasks(subject))"
    )
    (account,) = body["value"]
    assert account["primarycontactid"]["fullname"] == "Ada Lovelace"
    assert account["primarycontactid"]["contactid"] == ids["ada"]
    assert [c["fullname"] for c in account["contact_customer_accounts"]] == ["Grace Hopper"]
    assert [t["activityid"] for t in account["Account_Tasks"]] == [ids["task"]]
    assert sorted(c["firstname"] for c in single.json()["contact_customer_accounts"]) == ["Alan", "Grace"]
    assert lead_less.json()["parentcustomerid_contact"] is None  # Grace's customer is an account


def test_expand_rejects_options_a_single_valued_property_cannot_take(crm: tuple[DataverseOrg, dict[str, str]]) -> None:
    org, _ = crm

    response = requests.get(f"{org.api}/accounts?$expand=primarycontactid($top=1)", headers=org.headers(), timeout=10)

    assert response.status_code == 400
    assert "Only $select applies" in response.json()["error"]["message"]


# -- annotations ------------------------------------------------------------------------------------------


def test_formatted_values_and_lookup_annotations_on_request(crm: tuple[DataverseOrg, dict[str, str]]) -> None:
    org, ids = crm
    columns = "name,revenue,customertypecode,statecode,_primarycontactid_value,createdon"
    url = f"{org.api}/accounts({ids['account']})?$select={columns}"

    plain = requests.get(url, headers=org.headers(), timeout=10).json()
    annotated = requests.get(url, headers=org.headers(Prefer='odata.include-annotations="*"'), timeout=10)
    formatted_only = requests.get(
        url,
        headers=org.headers(Prefer='odata.include-annotations="OData.Community.Display.V1.FormattedValue"'),
        timeout=10,
    ).json()

    assert not any("@" in name for name in plain if name not in {"@odata.etag", "@odata.context"})
    body = annotated.json()
    assert annotated.headers["Preference-Applied"] == 'odata.include-annotations="*"'
    assert body["revenue" + FORMATTED] == "$1,500.50"
    assert body["customertypecode" + FORMATTED] == "Customer"
    assert body["statecode" + FORMATTED] == "Active"
    assert body["_primarycontactid_value" + FORMATTED] == "Ada Lovelace"
    assert body["_primarycontactid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "contact"
    assert body["_primarycontactid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"] == "primarycontactid"
    assert re.fullmatch(r"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2} [AP]M", body["createdon" + FORMATTED])
    assert formatted_only["customertypecode" + FORMATTED] == "Customer"
    assert "_primarycontactid_value@Microsoft.Dynamics.CRM.lookuplogicalname" not in formatted_only


def test_annotations_on_a_collection_name_the_target_of_a_customer_lookup(
    crm: tuple[DataverseOrg, dict[str, str]],
) -> None:
    org, _ = crm

    response = requests.get(
        f"{org.api}/contacts?$select=fullname,_parentcustomerid_value&$filter=_parentcustomerid_value ne null",
        headers=org.headers(Prefer='odata.include-annotations="*",odata.maxpagesize=10'),
        timeout=10,
    )

    rows = response.json()["value"]
    assert sorted(row["fullname"] for row in rows) == ["Alan Turing", "Grace Hopper"]
    for row in rows:
        assert row["_parentcustomerid_value" + FORMATTED] == "Contoso"
        assert row["_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "account"
        assert (
            row["_parentcustomerid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"]
            == "parentcustomerid_account"
        )


# -- FetchXML ---------------------------------------------------------------------------------------------

_FETCH_PREFER = (
    'odata.include-annotations="Microsoft.Dynamics.CRM.fetchxmlpagingcookie,Microsoft.Dynamics.CRM.morerecords"'
)


def _fetch(org: DataverseOrg, entity_set: str, xml: str, prefer: str = _FETCH_PREFER) -> requests.Response:
    return requests.get(
        f"{org.api}/{entity_set}?fetchXml={quote(xml, safe='')}", headers=org.headers(Prefer=prefer), timeout=30
    )


def test_fetchxml_attributes_filter_and_order(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()
    sandbox_env.state.seed_rows(org.url, "accounts", 12, prefix="Fetch")
    xml = """<fetch>
      <entity name="account">
        <attribute name="name" /><attribute name="revenue" />
        <filter type="and">
          <condition attribute="revenue" operator="ge" value="300" />
          <filter type="or">
            <condition attribute="name" operator="like" value="%1%" />
            <condition attribute="name" operator="in"><value>Fetch 5</value><value>Fetch 6</value></condition>
          </filter>
        </filter>
        <order attribute="revenue" descending="true" />
      </entity>
    </fetch>"""

    response = _fetch(org, "accounts", xml)
    wrong_entity = _fetch(org, "contacts", xml)
    link_entity = _fetch(
        org, "accounts", '<fetch><entity name="account"><link-entity name="contact" /></entity></fetch>'
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["name"] for row in body["value"]] == ["Fetch 12", "Fetch 11", "Fetch 10", "Fetch 6", "Fetch 5"]
    assert set(body["value"][0]) == {"@odata.etag", "name", "revenue", "accountid"}
    assert body["@Microsoft.Dynamics.CRM.morerecords"] is False
    assert "@Microsoft.Dynamics.CRM.fetchxmlpagingcookie" not in body
    assert wrong_entity.status_code == 400
    assert link_entity.status_code == 400 and "link-entity" in link_entity.json()["error"]["message"]


def test_fetchxml_pages_with_the_paging_cookie(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()
    seeded = set(sandbox_env.state.seed_rows(org.url, "leads", 25, prefix="Paged"))
    fetch = ElementTree.fromstring(
        '<fetch count="10"><entity name="lead"><attribute name="fullname" />'
        '<order attribute="fullname" /></entity></fetch>'
    )
    seen: list[str] = []
    cookies = []

    while True:
        body = _fetch(org, "leads", ElementTree.tostring(fetch, encoding="unicode")).json()
        seen.extend(row["leadid"] for row in body["value"])
        if not body["@Microsoft.Dynamics.CRM.morerecords"]:
            break
        outer = ElementTree.fromstring(body["@Microsoft.Dynamics.CRM.fetchxmlpagingcookie"])
        cookies.append(outer.get("pagingcookie"))
        fetch.set("paging-cookie", unquote(unquote(outer.get("pagingcookie", ""))))
        fetch.set("page", outer.get("pagenumber", ""))

    assert len(seen) == 25
    assert set(seen) == seeded
    assert len(cookies) == 2
    assert unquote(unquote(cookies[0])).startswith('<cookie page="1">')


def test_fetchxml_simple_paging_by_page_number(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()
    sandbox_env.state.seed_rows(org.url, "contacts", 7, prefix="Simple")
    xml = (
        '<fetch count="3" page="3"><entity name="contact"><attribute name="lastname" />'
        '<order attribute="lastname" /></entity></fetch>'
    )

    body = _fetch(org, "contacts", xml).json()

    assert [row["lastname"] for row in body["value"]] == ["7"]  # "1","2","3" | "4","5","6" | "7"
    assert body["@Microsoft.Dynamics.CRM.morerecords"] is False
