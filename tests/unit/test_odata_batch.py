import pytest

from shared.dataverse.batch import BatchOperation, build_batch_body, parse_batch_response

ROOT = "https://contoso.crm.dynamics.com/api/data/v9.2"


def test_atomic_batch_groups_consecutive_writes_in_one_change_set_and_keeps_gets_outside():
    ops = [
        BatchOperation("POST", "accounts", {"name": "a"}),
        BatchOperation("PATCH", "accounts(00000000-0000-0000-0000-000000000001)", {"name": "b"}),
        BatchOperation("GET", "accounts?$select=name"),
        BatchOperation("DELETE", "accounts(00000000-0000-0000-0000-000000000002)"),
    ]
    content_type, body = build_batch_body(ROOT, ops, atomic=True)
    boundary = content_type.split("boundary=")[1]
    text = body.decode()
    assert text.count(f"--{boundary}\r\n") == 3  # change set, GET, change set
    assert text.endswith(f"--{boundary}--\r\n")
    assert text.count("Content-Type: multipart/mixed; boundary=changeset_") == 2
    assert f"POST {ROOT}/accounts HTTP/1.1" in text
    assert "Content-ID: 1" in text and "Content-ID: 2" in text and "Content-ID: 4" in text
    assert '{"name":"a"}' in text


def test_non_atomic_batch_has_no_change_sets():
    _, body = build_batch_body(ROOT, [BatchOperation("POST", "accounts", {"name": "a"})], atomic=False)
    assert b"changeset_" not in body


def test_batch_limits_and_header_injection_are_refused():
    with pytest.raises(ValueError, match="1000"):
        build_batch_body(ROOT, [BatchOperation("GET", "accounts")] * 1001, atomic=False)
    with pytest.raises(ValueError, match="line breaks"):
        build_batch_body(
            ROOT, [BatchOperation("GET", "accounts", headers={"X": "a\r\nAuthorization: x"})], atomic=False
        )
    with pytest.raises(ValueError, match="at least one"):
        build_batch_body(ROOT, [], atomic=True)


RESPONSE = (
    "--batchresponse_1\r\n"
    "Content-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n"
    "--changesetresponse_2\r\n"
    "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\n"
    "HTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\n"
    f"OData-EntityId: {ROOT}/accounts(11111111-1111-1111-1111-111111111111)\r\n\r\n\r\n"
    "--changesetresponse_2--\r\n"
    "--batchresponse_1\r\n"
    "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    "HTTP/1.1 200 OK\r\nContent-Type: application/json; odata.metadata=minimal\r\n\r\n"
    '{"value":[{"name":"a"}]}\r\n'
    "--batchresponse_1\r\n"
    "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\r\n"
    '{"error":{"code":"0x80040217","message":"account With Id = x Does Not Exist"}}\r\n'
    "--batchresponse_1--\r\n"
)


def test_batch_response_is_flattened_in_order():
    parts = parse_batch_response("multipart/mixed; boundary=batchresponse_1", RESPONSE.encode())
    assert [p.status for p in parts] == [204, 200, 404]
    assert parts[0].content_id == "1"
    assert parts[0].headers["odata-entityid"].endswith("(11111111-1111-1111-1111-111111111111)")
    assert parts[1].json() == {"value": [{"name": "a"}]}
    assert parts[2].json()["error"]["code"] == "0x80040217"


def test_non_multipart_response_is_an_error():
    with pytest.raises(ValueError, match="multipart"):
        parse_batch_response("application/json", b"{}")
