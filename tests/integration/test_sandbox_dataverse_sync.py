"""Change tracking (Prefer: odata.track-changes, delta links) and `$batch` with change sets on the Dataverse
stand-in, over plain `requests` (protocol §4).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests

from sandbox import Sandbox

from .conftest import DataverseOrg

pytestmark = pytest.mark.integration

CRLF = "\r\n"


def _follow(org: DataverseOrg, url: str, page_size: int = 5000) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All rows of a tracked query or delta, following nextLinks; returns (rows, last page)."""
    rows: list[dict[str, Any]] = []
    headers = org.headers(Prefer=f"odata.track-changes,odata.maxpagesize={page_size}")
    while True:
        response = requests.get(url, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        page = response.json()
        rows.extend(page["value"])
        if "@odata.nextLink" not in page:
            return rows, page
        url = page["@odata.nextLink"]


def test_change_tracking_round_trip(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()
    kept, changed, removed = sandbox_env.state.seed_rows(org.url, "accounts", 3, prefix="Tracked")

    initial, last = _follow(org, f"{org.api}/accounts?$select=name")
    delta_link = last["@odata.deltaLink"]
    created = requests.post(f"{org.api}/accounts", json={"name": "New"}, headers=org.headers(), timeout=10)
    requests.patch(f"{org.api}/accounts({changed})", json={"name": "Changed"}, headers=org.headers(), timeout=10)
    requests.delete(f"{org.api}/accounts({removed})", headers=org.headers(), timeout=10)
    delta, delta_last = _follow(org, delta_link)
    quiet, _ = _follow(org, delta_last["@odata.deltaLink"])

    assert {row["accountid"] for row in initial} == {kept, changed, removed}
    assert delta_link.startswith(f"{org.api}/accounts?$select=name&$deltatoken=")
    assert delta_last["@odata.context"] == f"{org.api}/$metadata#accounts(name)/$delta"
    new_id = created.headers["OData-EntityId"][-37:-1]
    assert [(row.get("accountid") or row["id"], row.get("name")) for row in delta] == [
        (new_id, "New"),
        (changed, "Changed"),
        (removed, None),
    ]
    assert delta[2] == {
        "@odata.context": f"{org.api}/$metadata#accounts/$deletedEntity",
        "id": removed,
        "reason": "deleted",
    }
    assert quiet == []


def test_tracked_full_sync_and_delta_are_paged(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()
    sandbox_env.state.seed_rows(org.url, "contacts", 25)

    initial, last = _follow(org, f"{org.api}/contacts?$select=lastname", page_size=10)
    fresh = sandbox_env.state.seed_rows(org.url, "contacts", 12, prefix="Later")
    delta, _ = _follow(org, last["@odata.deltaLink"], page_size=5)

    assert len(initial) == 25
    assert [row["contactid"] for row in delta] == fresh


def test_change_tracking_rejects_filter_orderby_and_top(new_org: Callable[..., DataverseOrg]) -> None:
    org = new_org()

    for query in ("$filter=statecode eq 0", "$orderby=name", "$top=5"):
        response = requests.get(
            f"{org.api}/accounts?$select=name&{query}", headers=org.headers(Prefer="odata.track-changes")
        )
        assert response.status_code == 400, query
        assert "change tracking" in response.json()["error"]["message"]


def test_expired_or_garbled_delta_token_asks_for_a_full_sync(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org()
    _, last = _follow(org, f"{org.api}/accounts?$select=name")
    sandbox_env.state.expire_delta_tokens(org.url)

    expired = requests.get(last["@odata.deltaLink"], headers=org.headers(), timeout=10)
    garbled = requests.get(f"{org.api}/accounts?$select=name&$deltatoken=123!nonsense", headers=org.headers())
    _, resynced = _follow(org, f"{org.api}/accounts?$select=name")
    works_again = requests.get(resynced["@odata.deltaLink"], headers=org.headers(), timeout=10)

    expected = {
        "error": {
            "code": "0x80044352",
            "message": "Version stamp associated with the client has expired. Please perform a full sync.",
        }
    }
    assert expired.status_code == garbled.status_code == 400
    assert expired.json() == garbled.json() == expected
    assert works_again.status_code == 200


# -- $batch ---------------------------------------------------------------------------------------------


def _part(
    method: str, url: str, body: dict[str, Any] | None = None, content_id: str | None = None, **headers: str
) -> str:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        lines.append(f"Content-ID: {content_id}")
    lines += ["", f"{method} {url} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items())]
    if body is not None:
        lines += ["Content-Type: application/json; type=entry", "", json.dumps(body)]
    else:
        lines += ["", ""]
    return CRLF.join(lines)


def _batch(org: DataverseOrg, items: list[str | list[str]], **headers: str) -> requests.Response:
    """POST $batch; a list item becomes a change set."""
    boundary = f"batch_{uuid.uuid4()}"
    chunks = []
    for item in items:
        if isinstance(item, list):
            inner = f"changeset_{uuid.uuid4()}"
            body = "".join(f"--{inner}{CRLF}{part}{CRLF}" for part in item) + f"--{inner}--"
            chunks.append(f"--{boundary}{CRLF}Content-Type: multipart/mixed; boundary={inner}{CRLF}{CRLF}{body}{CRLF}")
        else:
            chunks.append(f"--{boundary}{CRLF}{item}{CRLF}")
    payload = "".join(chunks) + f"--{boundary}--{CRLF}"
    return requests.post(
        f"{org.api}/$batch",
        data=payload.encode(),
        headers=org.headers(**{"Content-Type": f'multipart/mixed; boundary="{boundary}"', **headers}),
        timeout=30,
    )


def _statuses(response: requests.Response) -> list[str]:
    return [line for line in response.text.splitlines() if line.startswith("HTTP/1.1 ")]


def test_batch_with_change_set_and_references(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> None:
    org = new_org()

    response = _batch(
        org,
        [
            [
                _part("POST", "/api/data/v9.2/accounts", {"name": "Batch account"}, "1"),
                _part(
                    "POST", f"{org.api}/contacts", {"lastname": "Ref", "parentcustomerid_account@odata.bind": "$1"}, "2"
                ),
                _part("PATCH", "$1", {"telephone1": "555-0199"}, "3"),
            ],
            _part("GET", "accounts?$select=name,telephone1"),
        ],
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    assert "Content-Type: multipart/mixed; boundary=changesetresponse_" in response.text
    assert _statuses(response) == ["HTTP/1.1 204 No Content"] * 3 + ["HTTP/1.1 200 OK"]
    assert '"telephone1":"555-0199"' in response.text
    (account,) = sandbox_env.state.rows(org.url, "accounts")
    (contact,) = sandbox_env.state.rows(org.url, "contacts")
    assert contact["_parentcustomerid_value"] == account["accountid"]


def test_failed_change_set_rolls_back_and_stops_the_batch(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org()
    missing = str(uuid.uuid4())

    response = _batch(
        org,
        [
            [
                _part("POST", "accounts", {"name": "Rolled back"}, "1"),
                _part("PATCH", f"accounts({missing})", {"name": "nope"}, "2", **{"If-Match": "*"}),
            ],
            _part("POST", "accounts", {"name": "Never run"}),
        ],
    )

    assert response.status_code == 400
    assert _statuses(response) == ["HTTP/1.1 404 Not Found"]  # only the failing part answers for the set
    assert "0x80040217" in response.text
    assert "Content-ID: 2" in response.text
    assert sandbox_env.state.rows(org.url, "accounts") == []


def test_continue_on_error_reports_the_failed_change_set_and_goes_on(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org()
    (existing,) = sandbox_env.state.seed_rows(org.url, "accounts", 1)

    response = _batch(
        org,
        [
            [
                _part("PATCH", f"accounts({existing})", {"name": "Renamed"}, "1"),
                _part("POST", "accounts", {"name": "x" * 500}, "2"),
            ],
            _part("GET", f"accounts({existing})?$select=name"),
        ],
        Prefer="odata.continue-on-error",
    )

    assert response.status_code == 200
    assert _statuses(response) == ["HTTP/1.1 400 Bad Request", "HTTP/1.1 200 OK"]
    (row,) = sandbox_env.state.rows(org.url, "accounts")
    assert row["name"] == "Row 1"


def test_batch_over_1000_operations_is_refused(new_org: Callable[..., DataverseOrg]) -> None:
    org = new_org()

    response = _batch(org, [_part("GET", "WhoAmI")] * 1001)

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The batch contains 1001 requests; the limit is 1000."


def test_a_page_read_again_shows_writes_made_since_and_only_the_columns_asked(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    """The stand-in keeps encoded pages while an org is unchanged; a write, or another $select, is a new page."""
    org = new_org()
    sandbox_env.state.seed_rows(org.url, "accounts", 12, prefix="Cached")
    headers = org.headers(Prefer="odata.maxpagesize=5")
    url = f"{org.api}/accounts?$select=name"

    def first_page(query_url: str = url) -> requests.Response:
        response = requests.get(query_url, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return response

    before = first_page()
    assert first_page().content == before.content
    target = before.json()["value"][2]["accountid"]
    patched = requests.patch(
        f"{org.api}/accounts({target})", json={"name": "Renamed"}, headers=org.headers(), timeout=10
    )
    assert patched.status_code == 204, patched.text
    after = first_page().json()["value"]
    assert [row["accountid"] for row in after] == [row["accountid"] for row in before.json()["value"]]
    assert after[2]["name"] == "Renamed" and after[2]["@odata.etag"] != before.json()["value"][2]["@odata.etag"]
    wider = first_page(f"{org.api}/accounts?$select=name,revenue").json()["value"]
    assert all(set(row) == {"@odata.etag", "name", "revenue", "accountid"} for row in wider)
    assert all(set(row) == {"@odata.etag", "name", "accountid"} for row in after)
