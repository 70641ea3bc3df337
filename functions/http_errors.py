"""How every JSON API function answers an error: status, a stable code, a message naming the problem and a
request id to quote — never a stack trace or a secret."""

from __future__ import annotations

import functools
import json
import logging
import re
import uuid
from collections.abc import Callable
from typing import Literal

import azure.functions as func

logger = logging.getLogger(__name__)
Handler = Callable[[func.HttpRequest], func.HttpResponse]
STORAGE_RETRY_AFTER_SECONDS = 10

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


def storage_unavailable_is_503(kind: Literal["json", "html"]) -> Callable[[Handler], Handler]:
    """Storage (the registry, consent states, queues) failing under a request answers 503 with
    ``storage_unavailable`` and a Retry-After — as JSON for APIs, as a page for browsers — instead of the host's
    bare 500. What was recorded before the failure stays recorded, and each of these requests is safe to repeat
    (a re-check or verification continues from the registry's state).

    Put it under ``@bp.route``: ``functools.wraps`` keeps the name and signature the host indexes.
    """

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def guarded(req: func.HttpRequest) -> func.HttpResponse:
            from azure.core.exceptions import AzureError

            try:
                return handler(req)
            except AzureError as exc:
                logger.error("%s: storage unavailable (%s)", handler.__name__, type(exc).__name__)
                message = "Storage is unavailable just now; nothing was changed. Try again in a few seconds."
                if kind == "html":
                    from functions import onboarding_pages as pages

                    response = pages.unavailable_page(message)
                else:
                    response = json_error(503, "storage_unavailable", message, req)
                response.headers["Retry-After"] = str(STORAGE_RETRY_AFTER_SECONDS)
                return response

        return guarded

    return decorate
