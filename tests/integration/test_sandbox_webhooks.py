"""The Dataverse stand-in's webhooks (protocol §5): writes through the Web API POST a RemoteExecutionContext to a
local receiver with Dataverse's headers and authentication, retry only for 502/503/504, the 60 s timeout (made
short here), 256 KB truncation, change sets delivered only once committed, and synchronous steps that fail
the write.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from sandbox import Sandbox
from sandbox.state import SandboxState

from .conftest import DataverseOrg

pytestmark = pytest.mark.integration

CRLF = "\r\n"
ENTITY_TYPE = "Entity:http://schemas.microsoft.com/xrm/2011/Contracts"
REFERENCE_TYPE = "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts"


# -- a receiver on loopback ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """Records every POST and answers the scripted statuses in turn (200 once they run out)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.statuses: deque[int] = deque()
        self.delay_seconds = 0.0
        self.on_request: Callable[[Received], None] | None = None
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = urlsplit(self.path)
                request = Received(
                    parts.path,
                    dict(parse_qsl(parts.query)),
                    {name.lower(): value for name, value in self.headers.items()},
                    body,
                    time.monotonic(),
                )
                with receiver._lock:
                    receiver.received.append(request)
                    status = receiver.statuses.popleft() if receiver.statuses else 200
                if receiver.on_request is not None:
                    receiver.on_request(request)
                time.sleep(receiver.delay_seconds)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting (timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/webhooks/dataverse"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.stop()


@pytest.fixture
def state(sandbox_env: Sandbox) -> Iterator[SandboxState]:
    yield sandbox_env.state
    sandbox_env.state.set_webhook_timeout()  # the session's sandbox is shared: back to Dataverse's 60 s


# -- Web API helpers ----------------------------------------------------------------------------------


def _create(org: DataverseOrg, entity_set: str, values: dict[str, Any], **headers: str) -> str:
    response = requests.post(f"{org.api}/{entity_set}", json=values, headers=org.headers(**headers), timeout=10)
    assert response.status_code == 204, response.text
    return response.headers["OData-EntityId"][-37:-1]


def _patch(org: DataverseOrg, entity_set: str, record_id: str, values: dict[str, Any]) -> requests.Response:
    return requests.patch(f"{org.api}/{entity_set}({record_id})", json=values, headers=org.headers(), timeout=10)


def _pairs(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: item["value"] for item in items}


def _part(method: str, url: str, body: dict[str, Any] | None, content_id: str, **headers: str) -> str:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary", f"Content-ID: {content_id}", ""]
    lines += [f"{method} {url} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items())]
    lines += ["Content-Type: application/json; type=entry", "", json.dumps(body or {})]
    return CRLF.join(lines)


def _batch(org: DataverseOrg, change_sets: list[list[str]]) -> requests.Response:
    boundary = f"batch_{uuid.uuid4()}"
    chunks = []
    for parts in change_sets:
        inner = f"changeset_{uuid.uuid4()}"
        body = "".join(f"--{inner}{CRLF}{part}{CRLF}" for part in parts) + f"--{inner}--"
        chunks.append(f"--{boundary}{CRLF}Content-Type: multipart/mixed; boundary={inner}{CRLF}{CRLF}{body}{CRLF}")
    payload = "".join(chunks) + f"--{boundary}--{CRLF}"
    headers = org.headers(
        **{"Content-Type": f"multipart/mixed; boundary={boundary}", "Prefer": "odata.continue-on-error"}
    )
    return requests.post(f"{org.api}/$batch", data=payload.encode(), headers=headers, timeout=30)


# -- shapes and headers ---------------------------------------------------------------------------------


def test_create_update_delete_post_remote_execution_contexts(
    new_org: Callable[..., DataverseOrg], state: SandboxState, receiver: Receiver
) -> None:
    org = new_org()
    webhook_id = state.register_webhook(
        org.url, receiver.url, auth_value="function-key", include_pre_image=True, include_post_image=True
    )
    step = state.get_webhook(org.url, webhook_id)
    object_id = state.service_principal_object_id(org.app.tenant_id, org.app.client_id)

    record_id = _create(org, "accounts", {"name": "Contoso", "revenue": 1200.5})
    assert _patch(org, "accounts", record_id, {"telephone1": "555-0100"}).status_code == 204
    assert requests.delete(f"{org.api}/accounts({record_id})", headers=org.headers(), timeout=10).status_code == 204
    state.wait_for_webhooks()

    create, update, delete = receiver.received
    assert [r.headers["x-ms-dynamics-request-name"] for r in receiver.received] == ["Create", "Update", "Delete"]
    for request in receiver.received:
        assert request.path == "/api/webhooks/dataverse"
        assert request.query == {"code": "function-key"}
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-ms-dynamics-organization"] == org.org.host
        assert request.headers["x-ms-dynamics-entity-name"] == "account"
        assert request.headers["x-ms-correlation-request-id"] == request.json()["CorrelationId"]
        assert uuid.UUID(request.headers["x-request-id"])
        assert "x-ms-dynamics-msg-size-exceeded" not in request.headers
        # DataContractJsonSerializer escapes every slash, in dates and in __type alike.
        assert b'"OperationCreatedOn":"\\/Date(' in request.body
        assert b'"__type":"EntityReference:http:\\/\\/schemas.microsoft.com\\/xrm\\/2011\\/Contracts"' in request.body
    assert b'"__type":"Entity:http:\\/\\/schemas.microsoft.com\\/xrm\\/2011\\/Contracts"' in create.body

    body = create.json()
    assert list(body) == sorted(body)  # members in the serializer's (alphabetical) order
    assert body["MessageName"] == "Create"
    assert body["PrimaryEntityName"] == "account"
    assert body["PrimaryEntityId"] == record_id
    assert body["Stage"] == 40
    assert body["Mode"] == 1
    assert body["Depth"] == 1
    assert body["IsInTransaction"] is False
    assert body["SecondaryEntityName"] == "none"
    assert body["OrganizationId"] == org.org.org_id
    assert body["OrganizationName"] == org.org.name
    assert body["BusinessUnitId"] == org.org.root_business_unit_id
    assert body["UserId"] == body["InitiatingUserId"] == org.app_user_id
    assert body["UserAzureActiveDirectoryObjectId"] == object_id
    assert body["InitiatingUserAzureActiveDirectoryObjectId"] == object_id
    assert body["OperationCreatedOn"].startswith("/Date(")
    assert body["OwningExtension"] == {
        "Id": step.step_id("Create"),
        "KeyAttributes": [],
        "LogicalName": "sdkmessageprocessingstep",
        "Name": None,
        "RowVersion": None,
    }
    assert _pairs(body["OutputParameters"]) == {"id": record_id}
    target = _pairs(body["InputParameters"])["Target"]
    assert target["__type"] == ENTITY_TYPE
    assert target["LogicalName"] == "account"
    assert target["Id"] == record_id
    assert {"EntityState", "FormattedValues", "KeyAttributes", "RelatedEntities", "RowVersion"} <= set(target)
    attributes = _pairs(target["Attributes"])
    assert attributes["name"] == "Contoso"
    assert attributes["revenue"] == {"__type": "Money:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 1200.5}
    assert attributes["accountid"] == record_id
    assert attributes["createdon"].startswith("/Date(")
    assert attributes["ownerid"] == {
        "__type": REFERENCE_TYPE,
        "Id": org.app_user_id,
        "KeyAttributes": [],
        "LogicalName": "systemuser",
        "Name": None,
        "RowVersion": None,
    }
    assert attributes["statecode"]["Value"] == 0
    assert _pairs(body["PostEntityImages"])["Image"]["Id"] == record_id
    assert body["PreEntityImages"] == []
    parent = body["ParentContext"]
    assert parent["Stage"] == 30
    assert parent["ParentContext"] is None
    assert parent["CorrelationId"] == body["CorrelationId"]
    assert _pairs(parent["InputParameters"])["Target"]["LogicalName"] == "account"
    assert _pairs(parent["SharedVariables"])["ChangedEntityTypes"][0]["key"] == "account"

    body = update.json()
    changed = _pairs(_pairs(body["InputParameters"])["Target"]["Attributes"])
    assert changed["telephone1"] == "555-0100"
    assert "name" not in changed  # Update's Target carries what was set, plus what the platform set
    assert "modifiedon" in changed
    assert _pairs(_pairs(body["PreEntityImages"])["Image"]["Attributes"]).get("telephone1") is None
    assert _pairs(_pairs(body["PostEntityImages"])["Image"]["Attributes"])["telephone1"] == "555-0100"
    assert _pairs(_pairs(body["PostEntityImages"])["Image"]["Attributes"])["name"] == "Contoso"
    assert body["OwningExtension"]["Id"] == step.step_id("Update")

    body = delete.json()
    assert _pairs(body["InputParameters"])["Target"] == {
        "__type": REFERENCE_TYPE,
        "Id": record_id,
        "KeyAttributes": [],
        "LogicalName": "account",
        "Name": None,
        "RowVersion": None,
    }
    assert body["PostEntityImages"] == []
    assert _pairs(_pairs(body["PreEntityImages"])["Image"]["Attributes"])["name"] == "Contoso"

    deliveries = state.webhook_deliveries(org.url)
    assert [(d.message, d.attempt, d.status, d.truncated) for d in deliveries] == [
        ("Create", 1, 200, False),
        ("Update", 1, 200, False),
        ("Delete", 1, 200, False),
    ]
    assert all(d.webhook_id == webhook_id and d.url == receiver.url and d.row_id == record_id for d in deliveries)
    assert [d.request_id for d in deliveries] == [r.headers["x-request-id"] for r in receiver.received]
    assert state.count("webhook_delivery", org=org.url, status=200) == 3


def test_http_header_auth_on_contacts_with_a_customer_lookup(
    new_org: Callable[..., DataverseOrg], state: SandboxState, receiver: Receiver
) -> None:
    org = new_org()
    state.register_webhook(
        org.url,
        receiver.url,
        auth_type="HttpHeader",
        auth_value={"x-functions-key": "secret-1", "x-tenant": "fabrikam"},
        entity="contact",
        messages=("Create",),
    )
    account_id = _create(org, "accounts", {"name": "Parent"})

    contact_id = _create(
        org,
        "contacts",
        {"firstname": "Ada", "lastname": "Lovelace", "parentcustomerid_account@odata.bind": f"/accounts({account_id})"},
    )
    state.wait_for_webhooks()

    (request,) = receiver.received  # the account create matches no contact step
    assert request.query == {}
    assert request.headers["x-functions-key"] == "secret-1"
    assert request.headers["x-tenant"] == "fabrikam"
    assert request.headers["x-ms-dynamics-entity-name"] == "contact"
    attributes = _pairs(_pairs(request.json()["InputParameters"])["Target"]["Attributes"])
    assert attributes["contactid"] == contact_id
    assert attributes["fullname"] == "Ada Lovelace"
    assert attributes["parentcustomerid"]["LogicalName"] == "account"
    assert attributes["parentcustomerid"]["Id"] == account_id


def test_http_query_string_auth_sends_each_pair(
    new_org: Callable[..., DataverseOrg], state: SandboxState, receiver: Receiver
) -> None:
    org = new_org()
    state.register_webhook(
        org.url, f"{receiver.url}?fixed=1", auth_type="HttpQueryString", auth_value={"key": "k-1", "tenant": "t"}
    )

    _create(org, "accounts", {"name": "Query"})
    state.wait_for_webhooks()

    (request,) = receiver.received
    assert request.query == {"fixed": "1", "key": "k-1", "tenant": "t"}
    assert "code" not in request.query


def test_update_touching_no_filtering_attribute_sends_nothing(
    new_org: Callable[..., DataverseOrg], state: SandboxState, receiver: Receiver
) -> None:
    org = new_org()
    state.register_webhook(
        org.url, receiver.url, auth_value="k", messages=("Update",), filtering_attributes=("telephone1", "revenue")
    )
    record_id = _create(org, "accounts", {"name": "Filtered"})

    assert _patch(org, "accounts", record_id, {"name": "Renamed"}).status_code == 204
    state.wait_for_webhooks()
    assert receiver.received == []

    assert _patch(org, "accounts", record_id, {"name": "Again", "revenue": 5}).status_code == 204
    state.wait_for_webhooks()
    (request,) = receiver.received
    assert request.headers["x-ms-dynamics-request-name"] == "Update"


# -- responses, retries and timeouts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ([503, 200], [503, 200]),
        ([502, 502], [502, 502]),
        ([504, 200], [504, 200]),
        ([500], [500]),
        ([401], [401]),
        ([403], [403]),
        ([302], [302]),
    ],
)
def test_only_502_503_504_get_one_more_attempt(
    new_org: Callable[..., DataverseOrg],
    state: SandboxState,
    receiver: Receiver,
    script: list[int],
    expected: list[int],
) -> None:
    org = new_org()
    state.register_webhook(org.url, receiver.url, auth_value="k", messages=("Create",))
    receiver.statuses.extend([*script, 200, 200])  # a third attempt would be answered, and counted

    _create(org, "accounts", {"name": "Retry"})
    state.wait_for_webhooks()

    deliveries = state.webhook_deliveries(org.url)
    assert [d.status for d in deliveries] == expected
    assert [d.attempt for d in deliveries] == list(range(1, len(expected) + 1))
    assert len(receiver.received) == len(expected)
    assert len({r.headers["x-request-id"] for r in receiver.received}) == 1  # the retry reuses it
    assert receiver.received[0].body == receiver.received[-1].body
    assert state.count("webhook_delivery", org=org.url, status=expected[0]) == expected.count(expected[0])


def test_timeout_is_one_attempt_without_status(
    new_org: Callable[..., DataverseOrg], state: SandboxState, receiver: Receiver
) -> None:
    org = new_org()
    state.register_webhook(org.url, receiver.url, auth_value="k", messages=("Create",))
    state.set_webhook_timeout(0.3)
    receiver.delay_seconds = 1.0

    _create(org, "accounts", {"name": "Slow"})
    state.wait_for_webhooks()

    (delivery,) = state.webhook_deliveries(org.url)
    assert delivery.status is None
    assert delivery.error == "timeout"
    assert 0.3 <= delivery.duration_seconds < 1.0
    assert len(receiver.received) == 1
    assert state.count("webhook_delivery", org=org.url, status="timeout") == 1


def test_unreachable_receiver_is_one_attempt_without_status(
    new_org: Callable[..., DataverseOrg], state: SandboxState, receiver: Receiver
) -> None:
    org = new_org()
    dead_url = receiver.url
    receiver.stop()
    state.register_webhook(org.url, dead_url, auth_value="k", messages=("Create",))

    _create(org, "accounts", {"name": "Nobody home"})
    state.wait_for_webhooks()

    (delivery,) = state.webhook_deliveries(org.url)
    assert delivery.status is None
    assert delivery.error is not None
    assert delivery.error.startswith("connection_error")


# -- truncation, asynchrony, batches --------------------------------------------------------------


def test_over_256_kb_strips_the_large_members_and_says_so(
    new_org: Callable[..., DataverseOrg], state: SandboxState, receiver: Receiver
) -> None:
    org = new_org()
    state.register_webhook(org.url, receiver.url, auth_value="k", include_pre_image=True)
    (record_id,) = state.seed_rows(org.url, "accounts", 1)

    small = state.emit_webhook_event(org.url, "account", "Update", record_id, payload_padding_bytes=1000)
    large = state.emit_webhook_event(org.url, "account", "Update", record_id, payload_padding_bytes=300 * 1024)
    state.wait_for_webhooks()

    kept, cut = receiver.received
    assert [kept.headers["x-request-id"], cut.headers["x-request-id"]] == [*small, *large]
    assert "x-ms-dynamics-msg-size-exceeded" not in kept.headers
    assert {"ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages"} <= set(kept.json())
    assert cut.headers["x-ms-dynamics-msg-size-exceeded"] == "true"
    body = cut.json()
    assert not {"ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages"} & set(body)
    assert body["PrimaryEntityId"] == record_id
    assert body["PrimaryEntityName"] == "account"
    assert len(cut.body) < 256 * 1024
    first, second = state.webhook_deliveries(org.url)
    assert (first.truncated, second.truncated) == (False, True)
    assert second.body_bytes == len(cut.body)


def test_asynchronous_delivery_waits_for_the_response_and_keeps_order(
    new_org: Callable[..., DataverseOrg], state: SandboxState, receiver: Receiver
) -> None:
    org = new_org()
    state.register_webhook(org.url, receiver.url, auth_value="k", messages=("Create", "Update"))
    receiver.delay_seconds = 0.4

    started = time.monotonic()
    record_id = _create(org, "accounts", {"name": "v0"})
    for n in range(1, 4):
        assert _patch(org, "accounts", record_id, {"name": f"v{n}"}).status_code == 204
    elapsed = time.monotonic() - started
    state.wait_for_webhooks()

    assert elapsed < 0.8  # answering after each delivery would take at least 4 x 0.4 s
    names = [_pairs(_pairs(r.json()["InputParameters"])["Target"]["Attributes"])["name"] for r in receiver.received]
    assert names == ["v0", "v1", "v2", "v3"]


def test_change_set_delivers_after_commit_and_rolled_back_set_delivers_nothing(
    new_org: Callable[..., DataverseOrg], state: SandboxState, receiver: Receiver
) -> None:
    org = new_org()
    state.register_webhook(org.url, receiver.url, auth_value="k")
    committed_at_receipt: list[bool] = []

    def check_committed(request: Received) -> None:
        ids = {row["accountid"] for row in state.rows(org.url, "accounts")}
        committed_at_receipt.append(request.json()["PrimaryEntityId"] in ids)

    receiver.on_request = check_committed
    missing = str(uuid.uuid4())

    response = _batch(
        org,
        [
            [
                _part("POST", "/api/data/v9.2/accounts", {"name": "Batch 1"}, "1"),
                _part("POST", "/api/data/v9.2/accounts", {"name": "Batch 2"}, "2"),
            ],
            [
                _part("POST", "/api/data/v9.2/accounts", {"name": "Rolled back"}, "3"),
                _part("PATCH", f"/api/data/v9.2/accounts({missing})", {"name": "x"}, "4", **{"If-Match": "*"}),
            ],
        ],
    )
    state.wait_for_webhooks()

    assert response.status_code == 200, response.text
    assert sorted(row["name"] for row in state.rows(org.url, "accounts")) == ["Batch 1", "Batch 2"]
    names = [_pairs(_pairs(r.json()["InputParameters"])["Target"]["Attributes"])["name"] for r in receiver.received]
    assert names == ["Batch 1", "Batch 2"]
    assert committed_at_receipt == [True, True]
    assert len({r.json()["CorrelationId"] for r in receiver.received}) == 1  # one request, one correlation


# -- synchronous steps ---------------------------------------------------------------------------------


def test_synchronous_step_runs_before_the_answer(
    new_org: Callable[..., DataverseOrg], state: SandboxState, receiver: Receiver
) -> None:
    org = new_org()
    state.register_webhook(org.url, receiver.url, auth_value="k", mode=0, messages=("Create",))

    record_id = _create(org, "accounts", {"name": "Sync"})

    (request,) = receiver.received  # no waiting: it ran inside the request
    body = request.json()
    assert body["Mode"] == 0
    assert body["IsInTransaction"] is True
    assert body["ParentContext"]["Stage"] == 30
    assert body["PrimaryEntityId"] == record_id
    assert uuid.UUID(body["RequestId"])


def test_failing_synchronous_step_fails_and_rolls_back_the_write(
    new_org: Callable[..., DataverseOrg], state: SandboxState, receiver: Receiver
) -> None:
    org = new_org()
    state.register_webhook(org.url, receiver.url, auth_value="k", mode=0, messages=("Create", "Update"))
    record_id = _create(org, "accounts", {"name": "Before"})
    receiver.statuses.extend([500, 503, 503])

    create = requests.post(f"{org.api}/accounts", json={"name": "Refused"}, headers=org.headers(), timeout=10)
    update = _patch(org, "accounts", record_id, {"name": "After"})

    assert create.status_code == 400
    assert create.json()["error"]["code"] == "0x80040265"
    assert update.status_code == 400
    assert [row["name"] for row in state.rows(org.url, "accounts")] == ["Before"]
    assert [d.status for d in state.webhook_deliveries(org.url)] == [200, 500, 503, 503]


def test_failing_synchronous_step_rolls_back_its_change_set(
    new_org: Callable[..., DataverseOrg], state: SandboxState, receiver: Receiver
) -> None:
    org = new_org()
    state.register_webhook(org.url, receiver.url, auth_value="k", mode=0, messages=("Create",))
    receiver.statuses.extend([200, 500])

    response = _batch(
        org,
        [
            [
                _part("POST", "/api/data/v9.2/accounts", {"name": "First"}, "1"),
                _part("POST", "/api/data/v9.2/accounts", {"name": "Second"}, "2"),
            ]
        ],
    )

    assert "HTTP/1.1 400 Bad Request" in response.text
    assert state.rows(org.url, "accounts") == []
    assert len(receiver.received) == 2


# -- emitted events, proxies, shutdown -------------------------------------------------------------------


def test_emit_webhook_event_delivers_without_a_write(
    new_org: Callable[..., DataverseOrg], state: SandboxState, receiver: Receiver
) -> None:
    org = new_org()
    webhook_id = state.register_webhook(org.url, receiver.url, auth_value="k", entity="contact")
    state.register_webhook(org.url, receiver.url, auth_value="k", entity="account")  # does not match
    object_id = str(uuid.uuid4())
    user_id = state.add_org_user(org.url, object_id, "Grace Hopper")
    row_id = str(uuid.uuid4())  # no such row: the Target carries the id alone

    request_ids = state.emit_webhook_event(org.url, "contact", "Delete", row_id, initiating_user_object_id=object_id)
    state.wait_for_webhooks()

    (request,) = receiver.received
    assert request_ids == [request.headers["x-request-id"]]
    body = request.json()
    assert body["MessageName"] == "Delete"
    assert body["PrimaryEntityId"] == row_id
    assert body["InitiatingUserAzureActiveDirectoryObjectId"] == object_id
    assert body["UserId"] == user_id
    (delivery,) = state.webhook_deliveries(org.url)
    assert (delivery.webhook_id, delivery.status) == (webhook_id, 200)


def test_loopback_receivers_bypass_proxy_settings(
    new_org: Callable[..., DataverseOrg],
    state: SandboxState,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    org = new_org()
    state.register_webhook(org.url, receiver.url, auth_value="k")
    (record_id,) = state.seed_rows(org.url, "accounts", 1)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("no_proxy", "")

    state.emit_webhook_event(org.url, "account", "Create", record_id)
    state.wait_for_webhooks()

    assert [d.status for d in state.webhook_deliveries(org.url)] == [200]


def test_unregistered_webhook_gets_nothing(
    new_org: Callable[..., DataverseOrg], state: SandboxState, receiver: Receiver
) -> None:
    org = new_org()
    webhook_id = state.register_webhook(org.url, receiver.url, auth_value="k")
    state.unregister_webhook(org.url, webhook_id)
    state.unregister_webhook(org.url, webhook_id)  # already gone: still fine

    _create(org, "accounts", {"name": "Unheard"})
    state.wait_for_webhooks()

    assert receiver.received == []


def test_registration_refuses_what_dataverse_refuses(new_org: Callable[..., DataverseOrg], state: SandboxState) -> None:
    org = new_org()
    url = "http://127.0.0.1:1/api/webhooks/dataverse"

    with pytest.raises(ValueError, match="WebhookKey"):
        state.register_webhook(org.url, url, auth_value={"code": "k"})
    with pytest.raises(ValueError, match="stage 40"):
        state.register_webhook(org.url, url, auth_value="k", stage=20, mode=1)
    with pytest.raises(ValueError, match="filtering attributes"):
        state.register_webhook(org.url, url, auth_value="k", filtering_attributes=("nosuchcolumn",))
    with pytest.raises(ValueError, match="entity"):
        state.register_webhook(org.url, url, auth_value="k", entity="invoice")


def test_stopping_drains_queued_deliveries(receiver: Receiver) -> None:
    state = SandboxState()
    org = state.add_org(state.home_tenant_id, f"https://drain{uuid.uuid4().hex[:8]}.crm.dynamics.com")
    state.register_webhook(org.url, receiver.url, auth_value="k")
    row_ids = state.seed_rows(org.url, "accounts", 3)
    receiver.delay_seconds = 0.05

    for row_id in row_ids:
        state.emit_webhook_event(org.url, "account", "Create", row_id)
    state.webhooks.stop()

    assert [d.row_id for d in state.webhook_deliveries(org.url)] == row_ids
    state.emit_webhook_event(org.url, "account", "Update", row_ids[0])  # a stopped hub starts again on use
    state.wait_for_webhooks()
    assert len(receiver.received) == 4
    state.webhooks.stop()
