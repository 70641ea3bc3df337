"""OData ``$batch`` bodies for the Dataverse Web API: building multipart requests and reading the responses.

Per the Web API batch doc (protocol.md §4): a batch holds at most 1,000 requests; writes grouped in a change set
succeed or fail together, and a failed change set answers with one response, the failing request's error.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

MAX_BATCH_OPERATIONS = 1000
_WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})


@dataclass(frozen=True)
class BatchOperation:
    """One request in a batch. ``path`` is relative to the Web API root, e.g. ``accounts(<id>)``."""

    method: str
    path: str
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_write(self) -> bool:
        return self.method.upper() in _WRITE_METHODS

    @property
    def idempotent(self) -> bool:
        """Safe to send again if the first attempt may have reached the server."""
        return self.method.upper() != "POST"


@dataclass(frozen=True)
class BatchPartResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    content_id: str | None = None

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def build_batch_body(api_root: str, operations: Sequence[BatchOperation], *, atomic: bool) -> tuple[str, bytes]:
    """Return (content type, body). With ``atomic``, each run of consecutive writes is one change set;
    GETs (which may not sit in a change set) stand alone between them."""
    if not operations:
        raise ValueError("a batch needs at least one operation")
    if len(operations) > MAX_BATCH_OPERATIONS:
        raise ValueError(f"a batch holds at most {MAX_BATCH_OPERATIONS} operations")
    batch_boundary = f"batch_{uuid.uuid4()}"
    out: list[bytes] = []
    index = 0
    while index < len(operations):
        operation = operations[index]
        if atomic and operation.is_write:
            run_end = index
            while run_end < len(operations) and operations[run_end].is_write:
                run_end += 1
            changeset = f"changeset_{uuid.uuid4()}"
            out.append(f"--{batch_boundary}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n".encode())
            for position in range(index, run_end):
                out.append(f"--{changeset}\r\n".encode())
                out.append(_request_part(api_root, operations[position], content_id=str(position + 1)))
            out.append(f"--{changeset}--\r\n".encode())
            index = run_end
        else:
            out.append(f"--{batch_boundary}\r\n".encode())
            out.append(_request_part(api_root, operation, content_id=None))
            index += 1
    out.append(f"--{batch_boundary}--\r\n".encode())
    return f"multipart/mixed; boundary={batch_boundary}", b"".join(out)


def _request_part(api_root: str, operation: BatchOperation, *, content_id: str | None) -> bytes:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id is not None:
        lines.append(f"Content-ID: {content_id}")
    target = operation.path if operation.path.startswith(("$", "https://")) else f"{api_root}/{operation.path}"
    lines += ["", f"{operation.method.upper()} {target} HTTP/1.1"]
    body = b""
    if operation.body is not None:
        lines.append("Content-Type: application/json; type=entry")
        body = json.dumps(operation.body, separators=(",", ":")).encode("utf-8")
    else:
        lines.append("Accept: application/json")
    for name, value in operation.headers.items():
        if "\r" in name + value or "\n" in name + value:
            raise ValueError("batch header names and values must not contain line breaks")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body + b"\r\n"


def parse_batch_response(content_type: str, body: bytes) -> list[BatchPartResponse]:
    """Flatten a ``multipart/mixed`` batch response (with nested change-set responses) into parts, in order.

    Raises ValueError when the body is not a multipart batch response.
    """
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ValueError("the batch response is not multipart")
    parts: list[BatchPartResponse] = []
    for part in message.iter_parts():
        if part.is_multipart():
            for inner in part.iter_parts():
                parts.append(_response_part(inner))
        else:
            parts.append(_response_part(part))
    return parts


def _response_part(part: Any) -> BatchPartResponse:
    payload = part.get_payload(decode=True) or b""
    head, _, content = payload.partition(b"\r\n\r\n")
    if not _:
        head, _, content = payload.partition(b"\n\n")
    lines = head.decode("latin-1").splitlines()
    if not lines or not lines[0].startswith("HTTP/"):
        raise ValueError("a batch response part has no HTTP status line")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return BatchPartResponse(status, headers, content.rstrip(b"\r\n"), part.get("Content-ID"))
