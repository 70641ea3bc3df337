"""Per-user visibility on the Dataverse stand-in: while the application user impersonates an org user
(CallerObjectId, protocol §4), reads of accounts and contacts are held to that user's read depth — Basic sees the
rows it owns, Organization every row — and the application user itself still sees everything.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from sandbox import Sandbox
from sandbox.state import SandboxLookupError

from .conftest import DataverseOrg

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class OwnedRows:
    org: DataverseOrg
    a_object_id: str
    b_object_id: str
    a_user_id: str
    b_user_id: str
    a_rows: list[str]
    b_rows: list[str]
    system_rows: list[str]

    def get(self, path: str, *, as_user: str | None = None, **headers: str) -> requests.Response:
        extra = {"CallerObjectId": as_user} if as_user else {}
        return requests.get(f"{self.org.api}/{path}", headers=self.org.headers(**extra, **headers), timeout=10)


@pytest.fixture
def owned(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> OwnedRows:
    """An org whose app user may impersonate; org users A (7 accounts) and B (5), plus 3 accounts of SYSTEM."""
    state = sandbox_env.state
    org = new_org(act_on_behalf=True)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    a_user = state.add_org_user(org.url, a, "Avery A")
    b_user = state.add_org_user(org.url, b, "Blake B")
    a_rows = state.seed_rows(org.url, "accounts", 7, prefix="A", owner_object_id=a)
    b_rows = state.seed_rows(org.url, "accounts", 5, prefix="B", owner_object_id=b)
    system_rows = state.seed_rows(org.url, "accounts", 3, prefix="S")
    return OwnedRows(org, a, b, a_user, b_user, a_rows, b_rows, system_rows)


def _all_pages(owned: OwnedRows, first: str, *, as_user: str | None, page_size: int) -> list[list[dict[str, Any]]]:
    pages = []
    url: str | None = f"{owned.org.api}/{first}"
    extra = {"CallerObjectId": as_user} if as_user else {}
    while url:
        response = requests.get(
            url, headers=owned.org.headers(Prefer=f"odata.maxpagesize={page_size}", **extra), timeout=10
        )
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["value"])
        url = body.get("@odata.nextLink")
    return pages


def test_impersonated_basic_user_lists_only_the_accounts_it_owns(owned: OwnedRows) -> None:
    response = owned.get("accounts?$select=name,_ownerid_value&$count=true", as_user=owned.a_object_id)
    count = owned.get("accounts/$count", as_user=owned.a_object_id)
    who = owned.get("WhoAmI", as_user=owned.a_object_id).json()

    assert response.status_code == 200
    rows = response.json()["value"]
    assert sorted(row["accountid"] for row in rows) == sorted(owned.a_rows)
    assert {row["_ownerid_value"] for row in rows} == {owned.a_user_id}
    assert response.json()["@odata.count"] == 7
    assert count.text == "7"
    assert who["UserId"] == owned.a_user_id


def test_paging_as_an_impersonated_user_stays_within_its_rows(owned: OwnedRows) -> None:
    pages = _all_pages(owned, "accounts?$select=name&$orderby=name", as_user=owned.b_object_id, page_size=2)

    assert [len(page) for page in pages] == [2, 2, 1]
    names = [row["name"] for page in pages for row in page]
    assert names == [f"B {n}" for n in range(1, 6)]


def test_reading_another_users_row_is_refused_with_access_denied(owned: OwnedRows, sandbox_env: Sandbox) -> None:
    b_row = owned.b_rows[0]

    refused = owned.get(f"accounts({b_row})", as_user=owned.a_object_id)
    column = owned.get(f"accounts({b_row})/name", as_user=owned.a_object_id)
    own = owned.get(f"accounts({owned.a_rows[0]})?$select=name", as_user=owned.a_object_id)
    missing = owned.get(f"accounts({uuid.uuid4()})", as_user=owned.a_object_id)

    assert refused.status_code == column.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "0x80048306"
    assert error["message"].startswith(
        f"user with id {owned.a_user_id} does not have ReadAccess right(s) for record with id {b_row} "
        "of entity Account."
    )
    assert owned.b_user_id in error["message"]  # the owner, in the details
    assert own.status_code == 200 and own.json()["name"] == "A 1"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "0x80040217"
    assert sandbox_env.state.count("dataverse_request", org=owned.org.url, status=403, method="GET") == 2


def test_organization_depth_user_and_the_application_user_see_every_row(owned: OwnedRows, sandbox_env: Sandbox) -> None:
    sandbox_env.state.set_org_user_read_depth(owned.org.url, owned.b_object_id, "organization")
    everyone = sorted([*owned.a_rows, *owned.b_rows, *owned.system_rows])

    as_b = owned.get("accounts?$select=name", as_user=owned.b_object_id).json()["value"]
    as_app = _all_pages(owned, "accounts?$select=name", as_user=None, page_size=4)
    other_row = owned.get(f"accounts({owned.a_rows[0]})", as_user=owned.b_object_id)

    assert sorted(row["accountid"] for row in as_b) == everyone
    assert sorted(row["accountid"] for page in as_app for row in page) == everyone
    assert other_row.status_code == 200


def test_change_tracking_needs_organization_depth(owned: OwnedRows) -> None:
    basic = owned.get("accounts?$select=name", as_user=owned.a_object_id, Prefer="odata.track-changes")
    app = owned.get("accounts?$select=name", Prefer="odata.track-changes")

    assert basic.status_code == 403
    assert basic.json()["error"]["code"] == "0x80040220"
    assert "prvReadAccount" in basic.json()["error"]["message"]
    assert app.status_code == 200 and "@odata.deltaLink" in app.json()


def test_a_user_without_read_privilege_is_refused_every_read(owned: OwnedRows, sandbox_env: Sandbox) -> None:
    sandbox_env.state.set_org_user_read_depth(owned.org.url, owned.a_object_id, "none")

    listing = owned.get("accounts", as_user=owned.a_object_id)
    single = owned.get(f"accounts({owned.a_rows[0]})", as_user=owned.a_object_id)

    assert listing.status_code == single.status_code == 403
    error = listing.json()["error"]
    assert error["code"] == "0x80040220"
    assert f"Principal user (Id={owned.a_user_id}" in error["message"]
    assert "is missing prvReadAccount privilege" in error["message"]
    assert "OTC=1 for entity 'account'" in error["message"]


def test_assign_rows_moves_visibility_and_contacts_follow_the_same_rule(owned: OwnedRows, sandbox_env: Sandbox) -> None:
    state = sandbox_env.state
    url = owned.org.url
    state.assign_rows(url, "accounts", owned.b_rows[:2], owned.a_object_id)
    contacts = state.seed_rows(url, "contacts", 3, prefix="Casey", owner_object_id=owned.a_object_id)

    a_accounts = owned.get("accounts?$select=name", as_user=owned.a_object_id).json()["value"]
    b_accounts = owned.get("accounts?$select=name", as_user=owned.b_object_id).json()["value"]
    a_contacts = owned.get("contacts?$select=fullname", as_user=owned.a_object_id).json()["value"]
    b_contacts = owned.get("contacts?$select=fullname", as_user=owned.b_object_id).json()["value"]
    b_contact = owned.get(f"contacts({contacts[0]})", as_user=owned.b_object_id)

    assert len(a_accounts) == 9 and len(b_accounts) == 3
    assert sorted(row["contactid"] for row in a_contacts) == sorted(contacts)
    assert b_contacts == []
    assert b_contact.status_code == 403 and "of entity Contact." in b_contact.json()["error"]["message"]
    rows = {row["accountid"]: row for row in state.rows(url, "accounts")}
    assert rows[owned.b_rows[0]]["_ownerid_value"] == owned.a_user_id
    with pytest.raises(SandboxLookupError):
        state.assign_rows(url, "accounts", [str(uuid.uuid4())], owned.a_object_id)
    with pytest.raises(SandboxLookupError):
        state.assign_rows(url, "accounts", owned.a_rows[:1], str(uuid.uuid4()))
    with pytest.raises(ValueError, match="read depth"):
        state.set_org_user_read_depth(url, owned.a_object_id, "business_unit")
