"""The Dataverse webhook receiver and the queue-triggered processor behind it.

The receiver only translates: body and headers in, the intake's outcome out (202 once stored, 200 for a
duplicate, 4xx with a code, 503 when storage is down so Dataverse retries).
"""

from __future__ import annotations

import json
import logging

import azure.functions as func

from functions.http_errors import json_error, request_id
from functions.services import get_services

logger = logging.getLogger(__name__)
bp = func.Blueprint()


# Auth level FUNCTION: Dataverse's WebhookKey auth type sends the function key as ?code= (protocol.md §5).
@bp.route(route="webhooks/dataverse", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def dataverse_webhook(req: func.HttpRequest) -> func.HttpResponse:
    result = get_services().webhook_intake.accept(req.get_body() or b"", req.headers)
    if result.status >= 400:
        return json_error(result.status, result.code, result.message, req)
    body = {"status": result.code, "request_id": request_id(req)}
    return func.HttpResponse(json.dumps(body), status_code=result.status, mimetype="application/json")


@bp.queue_trigger(arg_name="msg", queue_name="webhook-events", connection="AzureWebJobsStorage")
def process_webhook_event(msg: func.QueueMessage) -> None:
    """Raises on a transient failure so the host retries with backoff; poison goes out with its reason.

    ``dequeue_count`` is the host's attempt count (functions-bindings-storage-queue-trigger, message metadata): the
    processor compares it with WEBHOOK_MAX_DEQUEUE_COUNT (= host.json ``maxDequeueCount``) so that on the last
    attempt it poisons with the reason itself and returns, instead of raising and leaving the host to poison the
    message without one."""
    text = msg.get_body().decode("utf-8", errors="replace")
    outcome = get_services().webhook_processor.process(text, msg.dequeue_count or 1, msg.id)
    logger.info("Webhook queue message %s: %s", msg.id, outcome)
