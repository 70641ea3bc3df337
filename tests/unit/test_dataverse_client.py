import json
import logging
import threading
import time

import pytest
import requests
import urllib3

from shared.auth.token_provider import AccessToken
from shared.dataverse.client import DataverseClient, RetryPolicy
from shared.dataverse.errors import (
    ApplicationUserDisabledError,
    ApplicationUserMissingError,
    DataverseError,
    DataverseUnreachableError,
    DeltaTokenExpiredError,
    ImpersonationNotAllowedError,
    PreconditionFailedError,
    RowNotFoundError,
    ThrottledError,
)
from shared.dataverse.governor import OrgGovernor

ORG = "https://contoso.crm.dynamics.com"
API = f"{ORG}/api/data/v9.2"
TENANT = "11111111-1111-1111-1111-111111111111"
ROW = "22222222-2222-2222-2222-222222222222"
USER = "33333333-3333-3333-3333-333333333333"
SECRET_TOKEN = "eyJsecret.token.value"


class Tokens:
    def __init__(self):
        self.asked = []

    def get_token(self, tenant_id, resource):
        self.asked.append((tenant_id, resource))
        return AccessToken(SECRET_TOKEN, time.time() + 3600, tenant_id, resource, "cache")


class RawBody:
    """The urllib3 response a ``stream=True`` request leaves in ``Response.raw``: read once, to the end."""

    def __init__(self, body):
        self.body = body
        self.reads = 0

    def read(self, *, decode_content):
        assert decode_content is True
        self.reads += 1
        body, self.body = self.body, b""
        return body


class BrokenBody(RawBody):
    """A body cut off after the headers arrived (urllib3 raises from ``read``, not requests)."""

    def read(self, *, decode_content):
        self.reads += 1
        raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(1200 bytes read, 800 more expected)")


class Response:
    def __init__(self, status, headers=None, body=b""):
        self.status_code = status
        self.headers = requests.structures.CaseInsensitiveDict(headers or {})
        self.raw = RawBody(body if isinstance(body, bytes) else json.dumps(body).encode())


class ScriptedSession:
    """Pops (status, headers, body) or an exception per request; records what was sent and when."""

    def __init__(self, *script):
        self.script = list(script)
        self.sent = []
        self.lock = threading.Lock()

    def request(self, method, url, **kwargs):
        with self.lock:
            self.sent.append({"method": method, "url": url, "at": time.monotonic(), **kwargs})
            item = self.script.pop(0) if self.script else (200, {}, {"value": []})
        if isinstance(item, Exception):
            raise item
        return item if isinstance(item, Response) else Response(*item)


def client(session, **kwargs):
    retry = kwargs.pop(
        "retry", RetryPolicy(max_attempts=4, budget_seconds=10, base_backoff_seconds=0.01, max_backoff_seconds=0.02)
    )
    return DataverseClient(
        ORG,
        TENANT,
        kwargs.pop("tokens", Tokens()),
        session,
        kwargs.pop("governor", OrgGovernor()),
        retry=retry,
        **kwargs,
    )


def test_whoami_sends_odata_headers_and_a_fresh_request_id_each_call():
    body = {"UserId": "u", "BusinessUnitId": "b", "OrganizationId": "o"}
    session = ScriptedSession((200, {}, body), (200, {}, body))
    c = client(session)
    who = c.whoami()
    c.whoami()
    assert (who.user_id, who.business_unit_id, who.organization_id) == ("u", "b", "o")
    first, second = session.sent
    assert first["url"] == f"{API}/WhoAmI"
    headers = first["headers"]
    assert headers["OData-Version"] == "4.0" and headers["OData-MaxVersion"] == "4.0"
    assert headers["Accept"] == "application/json"
    assert headers["Authorization"] == f"Bearer {SECRET_TOKEN}"
    assert headers["x-ms-client-request-id"] != second["headers"]["x-ms-client-request-id"]
    assert "CallerObjectId" not in headers
    assert first["timeout"] > 0


def test_impersonation_sends_caller_object_id_and_validates_it():
    session = ScriptedSession((200, {}, {"UserId": USER, "BusinessUnitId": "b", "OrganizationId": "o"}))
    client(session).whoami(caller_object_id=USER)
    assert session.sent[0]["headers"]["CallerObjectId"] == USER
    with pytest.raises(ValueError, match="object id"):
        client(ScriptedSession()).whoami(caller_object_id="not-a-guid")


def test_query_pages_follow_next_link_unchanged_with_the_same_page_size():
    next_link = f"{API}/accounts?$select=name&$skiptoken=%3Ccookie%20pagenumber=%222%22/%3E"
    session = ScriptedSession(
        (200, {}, {"value": [{"name": "a"}], "@odata.nextLink": next_link}),
        (200, {}, {"value": [{"name": "b"}]}),
    )
    pages = list(client(session).query("accounts", select=["name"], filter="statecode eq 0", page_size=1))
    assert [p.rows for p in pages] == [[{"name": "a"}], [{"name": "b"}]]
    assert session.sent[0]["url"] == f"{API}/accounts?$select=name&$filter=statecode%20eq%200"
    assert session.sent[1]["url"] == next_link
    assert all(s["headers"]["Prefer"] == "odata.maxpagesize=1" for s in session.sent)


def test_a_next_link_to_another_host_is_not_followed():
    session = ScriptedSession((200, {}, {"value": [], "@odata.nextLink": "https://evil.example/steal"}))
    with pytest.raises(DataverseError, match="outside this organisation"):
        list(client(session).query("accounts"))
    assert len(session.sent) == 1


def test_bad_names_never_reach_the_url():
    c = client(ScriptedSession())
    for call in (
        lambda: c.get_row("accounts", "1 or 1=1"),
        lambda: c.get_row("../x", ROW),
        lambda: list(c.query("accounts", select=["name,evil"])),
        lambda: c.upsert("accounts", {"a b": "x"}, {}),
    ):
        with pytest.raises(ValueError):
            call()


def test_create_returns_the_id_from_odata_entity_id():
    session = ScriptedSession((204, {"OData-EntityId": f"{API}/accounts({ROW.upper()})"}, b""))
    assert client(session).create("accounts", {"name": "Contoso"}) == ROW
    sent = session.sent[0]
    assert sent["method"] == "POST" and json.loads(sent["data"]) == {"name": "Contoso"}
    assert sent["headers"]["Content-Type"].startswith("application/json")


def test_update_is_update_only_and_carries_the_etag():
    session = ScriptedSession((204, {}, b""), (412, {}, {"error": {"code": "0x80060882", "message": "changed"}}))
    c = client(session)
    c.update("accounts", ROW, {"name": "x"})
    assert session.sent[0]["headers"]["If-Match"] == "*"
    with pytest.raises(PreconditionFailedError):
        c.update("accounts", ROW, {"name": "y"}, if_match='W/"12"')
    assert session.sent[1]["headers"]["If-Match"] == 'W/"12"'


def test_upsert_by_alternate_key_quotes_the_value():
    session = ScriptedSession((204, {}, b""))
    client(session).upsert("accounts", {"accountnumber": "O'Neil 1"}, {"name": "x"})
    assert session.sent[0]["url"] == f"{API}/accounts(accountnumber='O''Neil%201')"
    assert session.sent[0]["method"] == "PATCH" and "If-Match" not in session.sent[0]["headers"]


def test_delete_of_a_row_already_gone_is_success():
    session = ScriptedSession((204, {}, b""), (404, {}, {"error": {"code": "0x80040217", "message": "gone"}}))
    c = client(session)
    assert c.delete("accounts", ROW) is True
    assert c.delete("accounts", ROW) is False


@pytest.mark.parametrize(
    ("status", "body", "error_type"),
    [
        (
            403,
            {"error": {"code": "0x80072560", "message": "The user is not a member of the organization."}},
            ApplicationUserMissingError,
        ),
        (
            403,
            {"error": {"code": "0x80040225", "message": "The user with SystemUserId=x is disabled."}},
            ApplicationUserDisabledError,
        ),
        (  # the status a disabled user has been seen answered with (the code and message decide, not it)
            400,
            {"error": {"code": "0x80040225", "message": "The user with SystemUserId=x is disabled."}},
            ApplicationUserDisabledError,
        ),
        (
            403,
            {"error": {"code": "0x80040220", "message": "Principal user is missing prvActOnBehalfOfAnotherUser"}},
            ImpersonationNotAllowedError,
        ),
        (
            400,
            {"error": {"code": "0x80044352", "message": "Version stamp associated with the client has expired."}},
            DeltaTokenExpiredError,
        ),
        (404, {"error": {"code": "0x80040217", "message": "account With Id = x Does Not Exist"}}, RowNotFoundError),
    ],
)
def test_errors_are_typed_with_codes_and_request_ids(status, body, error_type):
    session = ScriptedSession((status, {"x-ms-service-request-id": "svc-1"}, body))
    with pytest.raises(error_type) as info:
        client(session).get_row("accounts", ROW)
    err = info.value
    assert err.status_code == status
    assert err.error_code == body["error"]["code"]
    assert err.service_request_id == "svc-1"
    assert err.client_request_id == session.sent[0]["headers"]["x-ms-client-request-id"]
    assert SECRET_TOKEN not in str(err.to_dict())


def test_429_is_waited_out_for_every_caller_of_the_org():
    governor = OrgGovernor()
    throttled = {"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit"}}
    session = ScriptedSession((429, {"Retry-After": "0.3"}, throttled))
    first = client(session, governor=governor)
    other = client(session, governor=governor)  # another client of the same org in this worker
    done = []
    t = threading.Thread(target=lambda: done.append(first.get_row("accounts", ROW)))
    t.start()
    time.sleep(0.1)  # inside the window announced to the first caller
    other.get_row("accounts", ROW)
    t.join()
    throttled_at = session.sent[0]["at"]
    later = [s["at"] for s in session.sent[1:]]
    assert len(later) == 2 and all(at - throttled_at >= 0.29 for at in later)
    assert governor.throttle_waits >= 1


def test_429_past_the_budget_raises_throttled_with_retry_after():
    session = ScriptedSession((429, {"Retry-After": "120"}, {"error": {"code": "0x80072326", "message": "52"}}))
    with pytest.raises(ThrottledError) as info:
        client(session).get_row("accounts", ROW)
    assert info.value.retry_after == 120 and info.value.is_transient
    assert len(session.sent) == 1


def test_503_on_a_read_is_retried_with_backoff_but_not_on_a_create():
    session = ScriptedSession((503, {}, b""), (503, {}, b""), (200, {}, {"name": "ok"}))
    assert client(session).get_row("accounts", ROW) == {"name": "ok"}
    assert len(session.sent) == 3
    post = ScriptedSession((503, {}, b""))
    with pytest.raises(DataverseError) as info:
        client(post).create("accounts", {"name": "x"})
    assert info.value.is_transient and len(post.sent) == 1


def test_a_post_that_may_have_reached_the_server_is_not_replayed():
    session = ScriptedSession(requests.ReadTimeout("read timed out"))
    with pytest.raises(DataverseUnreachableError, match="may have been applied"):
        client(session).create("accounts", {"name": "x"})
    assert len(session.sent) == 1


def test_a_post_that_never_left_is_retried():
    session = ScriptedSession(
        requests.ConnectTimeout("connect timed out"), (204, {"OData-EntityId": f"{API}/accounts({ROW})"}, b"")
    )
    assert client(session).create("accounts", {"name": "x"}) == ROW
    assert len(session.sent) == 2


def test_upsert_is_retried_after_a_read_timeout():
    session = ScriptedSession(requests.ReadTimeout("slow"), (204, {}, b""))
    client(session).upsert("accounts", ROW, {"name": "x"})
    assert len(session.sent) == 2


def test_retry_budget_bounds_attempts():
    session = ScriptedSession(*[(503, {}, b"")] * 10)
    with pytest.raises(DataverseError):
        client(session).get_row("accounts", ROW)
    assert len(session.sent) == 4  # max_attempts


def test_dop_hint_sets_concurrency_capped_under_52():
    governor = OrgGovernor()
    session = ScriptedSession((200, {"x-ms-dop-hint": "12"}, {}), (200, {"x-ms-dop-hint": "500"}, {}))
    c = client(session, governor=governor)
    c.get_row("accounts", ROW)
    assert governor.limit == 12
    c.get_row("accounts", ROW)
    assert governor.limit == 50


def test_change_tracking_separates_deletions_and_returns_the_delta_link():
    delta = f"{API}/accounts?$select=name&$deltatoken=919042%2108"
    session = ScriptedSession(
        (200, {}, {"value": [{"accountid": ROW, "name": "a"}], "@odata.nextLink": f"{API}/accounts?$skiptoken=x"}),
        (
            200,
            {},
            {
                "value": [
                    {"@odata.context": f"{API}/$metadata#accounts/$deletedEntity", "id": USER, "reason": "deleted"}
                ],
                "@odata.deltaLink": delta,
            },
        ),
    )
    pages = list(client(session).track_changes("accounts", select=["name"]))
    assert pages[0].upserts == [{"accountid": ROW, "name": "a"}] and pages[0].delta_link is None
    assert pages[1].deletions == [USER] and pages[1].delta_link == delta
    assert "odata.track-changes" in session.sent[0]["headers"]["Prefer"]
    resumed = ScriptedSession((200, {}, {"value": [], "@odata.deltaLink": delta}))
    list(client(resumed).track_changes("accounts", select=["name"], delta_link=delta))
    assert resumed.sent[0]["url"] == delta


def test_change_tracking_keeps_row_order_and_tells_a_deletion_from_a_row_with_an_id_column():
    deleted = {"@odata.context": f"{API}/$metadata#accounts/$deletedEntity", "id": USER, "reason": "deleted"}
    rows = [{"accountid": f"{ROW[:-2]}{i:02d}", "name": f"r{i}"} for i in range(4)]
    with_id_column = {"id": "not-a-deletion", "name": "x", "reason": "deleted", "extra": 1}
    page = [rows[0], deleted, rows[1], with_id_column, rows[2], rows[3]]
    session = ScriptedSession((200, {}, {"value": page, "@odata.deltaLink": f"{API}/accounts?$deltatoken=1"}))
    (only,) = client(session).track_changes("accounts", select=["name"])
    assert only.upserts == [rows[0], rows[1], with_id_column, rows[2], rows[3]]
    assert only.deletions == [USER.lower()]


def test_bodies_are_streamed_and_read_once_whole():
    response = Response(200, {}, {"value": [{"name": "a"}]})
    session = ScriptedSession(response)
    (page,) = client(session).query("accounts", select=["name"])
    assert page.rows == [{"name": "a"}]
    assert session.sent[0]["stream"] is True and response.raw.reads == 1


def test_a_body_cut_off_mid_read_is_retried_on_a_read_but_not_replayed_for_a_create():
    cut = Response(200)
    cut.raw = BrokenBody(b"")
    session = ScriptedSession(cut, (200, {}, {"name": "ok"}))
    assert client(session).get_row("accounts", ROW) == {"name": "ok"}
    assert len(session.sent) == 2 and cut.raw.reads == 1
    cut_create = Response(204)
    cut_create.raw = BrokenBody(b"")
    post = ScriptedSession(cut_create)
    with pytest.raises(DataverseUnreachableError, match="may have been applied") as info:
        client(post).create("accounts", {"name": "x"})
    assert len(post.sent) == 1 and info.value.is_transient


def test_no_token_in_logs_or_errors(caplog):
    caplog.set_level(logging.DEBUG)
    session = ScriptedSession((429, {"Retry-After": "0.01"}, b""), (500, {}, b"oops"))
    with pytest.raises(DataverseError) as info:
        client(session).get_row("accounts", ROW)
    assert SECRET_TOKEN not in caplog.text
    assert SECRET_TOKEN not in repr(info.value.__dict__)


def test_a_429_answered_to_the_signed_in_administrator_does_not_hold_back_the_application_users_calls():
    """Limits are per user: the delegated client of an onboarding flow has its own Retry-After window."""
    from shared.dataverse.clients import DataverseClients
    from shared.settings import CredentialSource, Settings

    settings = Settings(
        entra_client_id="11111111-2222-3333-4444-555555555555",
        entra_home_tenant_id=TENANT,
        credential_source=CredentialSource.CERTIFICATE_FILE,
        certificate_path="/tmp/none.pem",
        dataverse_max_attempts=1,
    )
    throttled = (429, {"Retry-After": "30"}, {"error": {"code": "0x80072322", "message": "Number of requests"}})
    session = ScriptedSession(throttled, (200, {}, {"UserId": "u", "BusinessUnitId": "b", "OrganizationId": "o"}))
    clients = DataverseClients(settings, Tokens(), session=session)
    admin = clients.delegated(ORG, AccessToken(SECRET_TOKEN, time.time() + 3600, TENANT, ORG, "identity_provider"))
    with pytest.raises(DataverseError):
        admin.whoami()
    assert admin.governor.blocked_for > 20  # the administrator waits out their window ...
    started = time.monotonic()
    assert clients.for_org(TENANT, ORG).whoami().user_id == "u"  # ... the application user does not
    assert time.monotonic() - started < 5
