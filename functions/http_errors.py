"""How every JSON API function answers an error: status, a stable code, a message naming the problem and a
request id to quote — never a stack trace or a secret."""

from __future__ import annotations

import json
import re
import uuid

import azure.functions as func

_SAFE_ID = re.compile(r"[A-Za-z0-9-]{8,64}")


def request_id(req: func.HttpRequest) -> str:
    """The caller's ``x-ms-client-request-id`` when it looks like an id, else a new one."""
    given = req.headers.get("x-ms-client-request-id") or req.headers.get("x-request-id") or ""
    # fullmatch: ``$`` in re.match would also accept the id followed by a newline.
    return given if _SAFE_ID.fullmatch(given) else str(uuid.uuid4())


def json_error(status: int, code: str, message: str, req: func.HttpRequest) -> func.HttpResponse:
    body = {"error": {"code": code, "message": message, "request_id": request_id(req)}}
    return func.HttpResponse(
        json.dumps(body), status_code=status, mimetype="application/json", headers={"Cache-Control": "no-store"}
    )
