"""Our Dataverse client against the emulator, through the real auth module, MSAL and the sandbox proxy."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import pytest

from shared.bootstrap import Services, build_services
from shared.dataverse.batch import BatchOperation
from shared.dataverse.errors import (
    ApplicationUserDisabledError,
    ApplicationUserMissingError,
    DeltaTokenExpiredError,
    ImpersonationNotAllowedError,
    PreconditionFailedError,
    RowNotFoundError,
)
from shared.dataverse.org_url import InvalidOrgUrlError
from tests.integration.conftest import app_with_certificate, cert_file_settings, customer_org

pytestmark = pytest.mark.integration


@dataclass
class OrgWorld:
    sandbox: object
    services: Services
    client_id: str
    tenant: str
    org_url: str
    app_user_id: str

    def client(self, **kwargs):
        return self.services.dataverse.for_org(self.tenant, self.org_url, **kwargs)


@pytest.fixture
def org_world(sandbox, sandbox_env, tmp_path):
    st = sandbox.state
    client_id, _, cert_file = app_with_certificate(st, "Dataverse client test", tmp_path)
    tenant, org_url, app_user = customer_org(st, client_id, "org", suffix="crm4.dynamics.com")
    settings = cert_file_settings(
        sandbox,
        client_id,
        cert_file,
        dataverse_retry_budget_seconds=30,
    )
    return OrgWorld(sandbox, build_services(settings), client_id, tenant, org_url, app_user)


def test_whoami_is_the_application_user(org_world):
    who = org_world.client().whoami()
    org = org_world.sandbox.state.get_org(org_world.org_url)
    assert who.user_id == org_world.app_user_id
    assert who.organization_id == org.org_id
    assert who.business_unit_id == org.root_business_unit_id


def test_org_outside_the_cloud_is_refused_before_any_token(org_world):
    st = org_world.sandbox.state
    before = st.count("token")
    for bad in ("https://evil.example.com", "https://x.crm.dynamics.com/api", "http://x.crm.dynamics.com"):
        with pytest.raises(InvalidOrgUrlError):
            org_world.services.dataverse.for_org(org_world.tenant, bad)
    assert st.count("token") == before


def test_missing_and_disabled_application_user_are_told_apart(org_world):
    st = org_world.sandbox.state
    st.set_application_user(org_world.org_url, org_world.client_id, enabled=False)
    with pytest.raises(ApplicationUserDisabledError):
        org_world.client().whoami()
    st.remove_application_user(org_world.org_url, org_world.client_id)
    with pytest.raises(ApplicationUserMissingError) as info:
        org_world.client().whoami()
    assert info.value.error_code == "0x80072560"
    assert info.value.service_request_id


def test_paged_query_yields_pages_of_the_requested_size(org_world):
    org_world.sandbox.state.seed_rows(org_world.org_url, "accounts", 12_000)
    pages = list(org_world.client().query("accounts", select=["accountid", "name"], page_size=5000))
    assert [len(p.rows) for p in pages] == [5000, 5000, 2000]
    ids = {row["accountid"] for p in pages for row in p.rows}
    assert len(ids) == 12_000


def test_crud_round_trip(org_world):
    c = org_world.client()
    row_id = c.create("accounts", {"name": "Contoso", "accountnumber": "A-1"})
    row = c.get_row("accounts", row_id, select=["name", "accountnumber"])
    assert row["name"] == "Contoso"
    c.update("accounts", row_id, {"name": "Contoso Ltd"}, if_match=row["@odata.etag"])
    with pytest.raises(PreconditionFailedError):
        c.update("accounts", row_id, {"name": "stale"}, if_match=row["@odata.etag"])
    c.upsert("accounts", {"accountnumber": "A-1"}, {"telephone1": "555"})
    c.upsert("accounts", {"accountnumber": "B-2"}, {"name": "Fabrikam"})
    mine = str(uuid.uuid4())
    c.upsert("accounts", mine, {"name": "Chosen id"})
    names = {r["name"] for r in org_world.sandbox.state.rows(org_world.org_url, "accounts")}
    assert {"Contoso Ltd", "Fabrikam", "Chosen id"} <= names
    assert c.get_row("accounts", row_id, select=["telephone1"])["telephone1"] == "555"
    assert c.delete("accounts", row_id) is True
    assert c.delete("accounts", row_id) is False
    with pytest.raises(RowNotFoundError):
        c.get_row("accounts", row_id)


def test_change_tracking_round_trip_and_expired_token(org_world):
    st = org_world.sandbox.state
    ids = st.seed_rows(org_world.org_url, "accounts", 30)
    c = org_world.client()
    pages = list(c.track_changes("accounts", select=["name"], page_size=10))
    assert sum(len(p.upserts) for p in pages) == 30
    delta = pages[-1].delta_link
    assert delta and all(p.delta_link is None for p in pages[:-1])
    new_id = c.create("accounts", {"name": "New"})
    c.update("accounts", ids[0], {"name": "Changed"})
    c.delete("accounts", ids[1])
    changes = list(c.track_changes("accounts", select=["name"], delta_link=delta))
    upserted = {r["accountid"] for p in changes for r in p.upserts}
    deleted = [d for p in changes for d in p.deletions]
    assert upserted == {new_id, ids[0]}
    assert deleted == [ids[1]]
    st.expire_delta_tokens(org_world.org_url)
    with pytest.raises(DeltaTokenExpiredError):
        list(c.track_changes("accounts", select=["name"], delta_link=changes[-1].delta_link))


def test_batch_change_set_is_all_or_nothing(org_world):
    c = org_world.client()
    missing = str(uuid.uuid4())
    parts = c.execute_batch(
        [
            BatchOperation("POST", "accounts", {"name": "in batch 1"}),
            BatchOperation("PATCH", f"accounts({missing})", {"name": "x"}, headers={"If-Match": "*"}),
        ]
    )
    assert len(parts) == 1 and parts[0].status == 404
    assert [type(e).__name__ for e in c.batch_errors(parts)] == ["RowNotFoundError"]
    names = {r["name"] for r in org_world.sandbox.state.rows(org_world.org_url, "accounts")}
    assert "in batch 1" not in names
    ok = c.execute_batch(
        [BatchOperation("POST", "accounts", {"name": f"b{i}"}) for i in range(5)]
        + [BatchOperation("GET", "accounts?$select=name")]
    )
    assert [p.status for p in ok][:5] == [204] * 5 and ok[-1].status == 200


def test_large_batches_are_split_at_1000(org_world):
    c = org_world.client()
    parts = c.execute_batch([BatchOperation("POST", "accounts", {"name": f"n{i}"}) for i in range(1500)])
    assert len(parts) == 1500 and all(p.status == 204 for p in parts)
    assert len(org_world.sandbox.state.rows(org_world.org_url, "accounts")) == 1500


def test_impersonation_needs_the_privilege_and_is_recorded(org_world):
    st = org_world.sandbox.state
    oid = str(uuid.uuid4())
    user_id = st.add_org_user(org_world.org_url, oid, "Ada Lovelace")
    c = org_world.client()
    with pytest.raises(ImpersonationNotAllowedError, match="prvActOnBehalfOfAnotherUser"):
        c.whoami(caller_object_id=oid)
    st.set_application_user(org_world.org_url, org_world.client_id, act_on_behalf=True)
    assert c.whoami(caller_object_id=oid).user_id == user_id
    row_id = c.create("accounts", {"name": "on behalf"}, caller_object_id=oid)
    row = c.get_row("accounts", row_id)
    assert row["_createdonbehalfby_value"] == org_world.app_user_id


def test_throttled_burst_completes_without_a_request_inside_retry_after(org_world):
    st = org_world.sandbox.state
    st.seed_rows(org_world.org_url, "accounts", 5)
    st.set_dataverse_limits(org_world.org_url, max_requests=20, window_seconds=1, retry_after_seconds=1)
    c = org_world.client()
    errors: list[BaseException] = []

    def burst():
        try:
            for _ in range(10):
                c.iter_rows("accounts", select=["name"]).__next__()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=burst) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert st.count("dataverse_throttled", org=org_world.org_url) >= 1
    assert st.count("dataverse_request_in_retry_after", org=org_world.org_url) == 0
    assert c.governor.throttle_waits >= 1


def test_after_the_first_rate_429_the_client_paces_instead_of_being_throttled_again(org_world):
    st = org_world.sandbox.state
    st.seed_rows(org_world.org_url, "accounts", 3)
    st.set_dataverse_limits(org_world.org_url, max_requests=3, window_seconds=1)
    c = org_world.client()
    started = time.monotonic()
    for _ in range(10):
        c.whoami()
    elapsed = time.monotonic() - started
    # The first window's 429 names the limit; the other windows are paced: one 429 in all, none ignored.
    assert st.count("dataverse_throttled", org=org_world.org_url) == 1
    assert st.count("dataverse_request_in_retry_after", org=org_world.org_url) == 0
    assert c.governor.paced_rate == (3, 1.0)
    assert c.governor.pacing_waits >= 2
    assert elapsed >= 3.0  # 10 requests at 3 per second: the fourth window opens after 3 s


def test_concurrency_follows_the_dop_hint(org_world):
    st = org_world.sandbox.state
    st.seed_rows(org_world.org_url, "accounts", 3)
    st.set_dataverse_limits(org_world.org_url, max_concurrent=6, dop_hint=4, latency_seconds=0.05)
    c = org_world.client()
    c.whoami()  # learn the hint
    threads = [threading.Thread(target=c.whoami) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.governor.limit == 4
    assert st.dataverse_peak_concurrency(org_world.org_url) <= 4
    assert st.count("dataverse_throttled", org=org_world.org_url) == 0
