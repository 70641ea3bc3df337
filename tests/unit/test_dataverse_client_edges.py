"""The Dataverse client at the edges: an unknown table (404 0x8006088a) is not a missing row, and an org whose host
name does not exist fails at once instead of after a round of retries. Scripted fake HTTP, as in
test_dataverse_client; the transport failures are the exceptions requests and urllib3 really raise."""

import socket
import socketserver
import threading

import pytest
import requests
import urllib3

from shared.dataverse.errors import (
    DataverseUnreachableError,
    OrganizationNotFoundError,
    RowNotFoundError,
    UnknownTableError,
)
from shared.troubleshooting import explain

from .test_dataverse_client import API, ROW, ScriptedSession, client

UNKNOWN_TABLE = {"error": {"code": "0x8006088a", "message": "Resource not found for the segment 'Account'."}}
ROW_GONE = {"error": {"code": "0x80040217", "message": f"account With Id = {ROW} Does Not Exist"}}


def _tunnel_refusal(status_line: bytes) -> requests.RequestException:
    """What requests raises when the HTTPS proxy refuses the CONNECT with `status_line` (a real loopback proxy)."""

    class Refuse(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(4096)
            self.request.sendall(status_line + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    with socketserver.TCPServer(("127.0.0.1", 0), Refuse) as server:
        threading.Thread(target=server.handle_request, daemon=True).start()
        proxy = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            requests.get("https://nosuchorg.crm.dynamics.com/", proxies={"https": proxy}, timeout=5)
        except requests.RequestException as exc:
            return exc
    raise AssertionError("the proxy did not refuse")


def _dns_failure(errno: int) -> requests.RequestException:
    """requests' ConnectionError for a failed name lookup, chained as urllib3 2 chains it."""
    reason = socket.gaierror(errno, "Name or service not known")
    resolution = urllib3.exceptions.NameResolutionError("nosuchorg.crm.dynamics.com", None, reason)  # type: ignore[arg-type]
    resolution.__cause__ = reason
    pool_error = urllib3.exceptions.MaxRetryError(None, "/api/data/v9.2/WhoAmI", resolution)  # type: ignore[arg-type]
    return requests.ConnectionError(pool_error)


def test_delete_in_an_unknown_table_raises_while_a_missing_row_is_false() -> None:
    session = ScriptedSession((404, {}, UNKNOWN_TABLE), (404, {}, ROW_GONE))
    c = client(session)

    with pytest.raises(UnknownTableError) as info:
        c.delete("Account", ROW)
    gone = c.delete("accounts", ROW)

    assert gone is False
    assert not isinstance(info.value, RowNotFoundError)
    assert info.value.status_code == 404
    assert info.value.error_code == "0x8006088a"
    assert "case-sensitive" in info.value.message
    assert [sent["url"] for sent in session.sent] == [f"{API}/Account({ROW})", f"{API}/accounts({ROW})"]


def test_reading_an_unknown_table_raises_unknown_table_not_row_not_found() -> None:
    session = ScriptedSession((404, {}, UNKNOWN_TABLE), (404, {}, ROW_GONE))
    c = client(session)

    with pytest.raises(UnknownTableError):
        c.get_row("leadz", ROW)
    with pytest.raises(RowNotFoundError) as missing:
        c.get_row("accounts", ROW)

    assert not isinstance(missing.value, UnknownTableError)
    assert len(session.sent) == 2  # neither is retried


def test_an_org_host_that_does_not_resolve_fails_at_once() -> None:
    sleeps: list[float] = []
    session = ScriptedSession(_dns_failure(socket.EAI_NONAME))
    c = client(session, sleep=sleeps.append)

    with pytest.raises(OrganizationNotFoundError) as info:
        c.whoami()

    assert len(session.sent) == 1
    assert sleeps == []
    assert isinstance(info.value, DataverseUnreachableError)  # callers that handle "unreachable" still do
    assert "No Dataverse organisation at https://contoso.crm.dynamics.com" in info.value.message
    assert info.value.code == "organization_not_found"


def test_a_temporary_name_lookup_failure_is_retried() -> None:
    sleeps: list[float] = []
    session = ScriptedSession(
        _dns_failure(socket.EAI_AGAIN), (200, {}, {"UserId": "u", "BusinessUnitId": "b", "OrganizationId": "o"})
    )
    c = client(session, sleep=sleeps.append)

    who = c.whoami()

    assert who.user_id == "u"
    assert len(session.sent) == 2
    assert len(sleeps) == 1


def test_a_proxy_that_cannot_find_the_org_host_fails_at_once_and_a_refusing_proxy_is_retried() -> None:
    not_found = _tunnel_refusal(b"HTTP/1.1 404 Not Found")
    forbidden = _tunnel_refusal(b"HTTP/1.1 403 Forbidden")
    missing_session = ScriptedSession(not_found)
    refused_session = ScriptedSession(forbidden, forbidden, forbidden, forbidden)

    with pytest.raises(OrganizationNotFoundError):
        client(missing_session, sleep=lambda s: None).whoami()
    with pytest.raises(DataverseUnreachableError) as refused:
        client(refused_session, sleep=lambda s: None).whoami()

    assert len(missing_session.sent) == 1
    assert len(refused_session.sent) == 4  # the policy's max_attempts
    assert not isinstance(refused.value, OrganizationNotFoundError)


def test_both_new_errors_are_explained() -> None:
    unknown = explain("0x8006088a")
    org = explain("organization_not_found")

    assert unknown is not None and "case-sensitive" in unknown.meaning
    assert org is not None and "org URL" in org.fix
