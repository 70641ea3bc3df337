"""`$batch` wire format (pad/webapi/execute-batch-operations-using-web-api.md): parse a multipart/mixed
request of application/http parts and change sets, and write the `batchresponse_`/`changesetresponse_` reply.

Tolerant of CRLF or LF line ends, quoted or bare boundaries, and absolute, root-relative or `$n` request URLs
(Microsoft's Python SDK sends absolute URLs and a quoted boundary; the doc's examples use the other forms).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from http import HTTPStatus

MAX_OPERATIONS = 1000  # protocol §4: at most 1,000 requests per batch
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;,\s]+))', re.IGNORECASE)
_CRLF = "\r\n"


class BatchFormatError(ValueError):
    """The body is not a batch the service can read; the message says where."""


@dataclass(frozen=True)
class BatchOperation:
    method: str
    url: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    content_id: str | None = None


@dataclass(frozen=True)
class ChangeSet:
    operations: tuple[BatchOperation, ...]


BatchItem = BatchOperation | ChangeSet


@dataclass(frozen=True)
class OperationResponse:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    content_id: str | None = None


ItemResponse = OperationResponse | list[OperationResponse]  # a list is a change set's responses


def boundary_of(content_type: str) -> str | None:
    match = _BOUNDARY.search(content_type or "")
    if match is None:
        return None
    return match.group(1) or match.group(2)


def _split(text: str, boundary: str) -> list[str]:
    """The body parts between `--boundary` delimiter lines; the line end before a delimiter belongs to it."""
    parts: list[str] = []
    current: list[str] | None = None
    closed = False
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\r\n").rstrip()
        if stripped in (f"--{boundary}", f"--{boundary}--"):
            if current is not None:
                body = "".join(current)
                parts.append(body[:-2] if body.endswith(_CRLF) else body.removesuffix("\n"))
            if stripped == f"--{boundary}--":
                closed = True
                break
            current = []
        elif current is not None:
            current.append(line)
    if not closed:
        raise BatchFormatError(f"The multipart body has no closing delimiter '--{boundary}--'.")
    return parts


def _head_and_body(text: str) -> tuple[list[str], str]:
    """The lines before the first blank line, and the text after it."""
    lines = text.splitlines(keepends=True)
    head: list[str] = []
    for index, line in enumerate(lines):
        if not line.strip():
            return head, "".join(lines[index + 1 :])
        head.append(line.rstrip("\r\n"))
    return head, ""


def _headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, separator, value = line.partition(":")
        if separator:
            headers[name.strip().lower()] = value.strip()
    return headers


def _operation(part: str, *, in_change_set: bool) -> BatchOperation:
    mime_lines, http_text = _head_and_body(part)
    mime = _headers(mime_lines)
    content_type = mime.get("content-type", "")
    if not content_type.lower().startswith("application/http"):
        kind = "change set" if in_change_set else "batch"
        raise BatchFormatError(f"A {kind} part must have Content-Type application/http, not '{content_type}'.")
    request_lines, body = _head_and_body(http_text.lstrip("\r\n"))
    request_line = request_lines[0].split() if request_lines else []
    if len(request_line) < 2:
        raise BatchFormatError("A batch part lacks its request line (METHOD URL HTTP/1.1).")
    return BatchOperation(
        method=request_line[0].upper(),
        url=request_line[1],
        headers=_headers(request_lines[1:]),
        body=body.strip().encode("utf-8"),
        content_id=mime.get("content-id"),
    )


def parse_batch(body: bytes, content_type: str) -> list[BatchItem]:
    """The operations and change sets of a `$batch` request. Raises BatchFormatError."""
    boundary = boundary_of(content_type)
    if not content_type.lower().startswith("multipart/mixed") or boundary is None:
        raise BatchFormatError("A $batch request must have Content-Type multipart/mixed with a boundary.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BatchFormatError("The $batch body is not UTF-8.") from exc
    items: list[BatchItem] = []
    for part in _split(text, boundary):
        head, inner = _head_and_body(part)
        part_type = _headers(head).get("content-type", "")
        if part_type.lower().startswith("multipart/mixed"):
            change_set_boundary = boundary_of(part_type)
            if change_set_boundary is None:
                raise BatchFormatError("A change set's Content-Type lacks a boundary.")
            operations = tuple(_operation(p, in_change_set=True) for p in _split(inner, change_set_boundary))
            items.append(ChangeSet(operations))
        else:
            items.append(_operation(part, in_change_set=False))
    return items


def operation_count(items: list[BatchItem]) -> int:
    return sum(len(item.operations) if isinstance(item, ChangeSet) else 1 for item in items)


def _write_part(response: OperationResponse, boundary: str) -> str:
    lines = [f"--{boundary}", "Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if response.content_id is not None:
        lines.append(f"Content-ID: {response.content_id}")
    lines += ["", f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}"]
    lines += [f"{name}: {value}" for name, value in response.headers.items()]
    lines += ["", response.body.decode("utf-8")]
    return _CRLF.join(lines) + _CRLF


def write_batch_response(responses: list[ItemResponse]) -> tuple[str, bytes]:
    """The response Content-Type and body: one part per operation, change sets nested."""
    boundary = f"batchresponse_{uuid.uuid4()}"
    chunks: list[str] = []
    for item in responses:
        if isinstance(item, list):
            inner = f"changesetresponse_{uuid.uuid4()}"
            chunks.append(f"--{boundary}{_CRLF}Content-Type: multipart/mixed; boundary={inner}{_CRLF}{_CRLF}")
            chunks.extend(_write_part(response, inner) for response in item)
            chunks.append(f"--{inner}--{_CRLF}")
        else:
            chunks.append(_write_part(item, boundary))
    chunks.append(f"--{boundary}--{_CRLF}")
    return f"multipart/mixed; boundary={boundary}", "".join(chunks).encode("utf-8")
