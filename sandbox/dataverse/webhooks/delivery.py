"""Delivering one webhook event over HTTP as Dataverse does (protocol §5): the POST, its headers, the 256 KB
truncation, the 60 s timeout and the single extra attempt for 502/503/504. Every attempt becomes a
WebhookDelivery record.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from sandbox.dataverse.webhooks.context import MAX_BODY_BYTES, encode_context, truncated
from sandbox.dataverse.webhooks.registration import WebhookRegistration

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 60.0  # protocol §5: "Timeout is 60 s"
RETRIED_STATUSES = frozenset({502, 503, 504})  # protocol §5: one more attempt, only for these
SIZE_EXCEEDED_HEADER = "x-ms-dynamics-msg-size-exceeded"
# Requests to loopback receivers (the dev host) go direct whatever HTTP(S)_PROXY / ALL_PROXY / NO_PROXY say:
# the sandbox's own HTTPS_PROXY only tunnels Dataverse org hosts. A None value makes requests drop the key.
_NO_PROXIES: dict[str, str | None] = {"http": None, "https": None, "all": None}


@dataclass(frozen=True)
class DeliveryJob:
    """One event for one webhook: what every attempt sends. `request_id` (x-request-id) is reused on the retry."""

    webhook: WebhookRegistration
    org_url: str
    org_host: str
    message: str
    entity: str
    row_id: str
    correlation_id: str
    request_id: str
    context: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class WebhookDelivery:
    """One HTTP attempt. `status` is None when no response came (timeout or connection error)."""

    webhook_id: str
    url: str  # as registered, without the authentication query
    message: str
    entity: str
    row_id: str
    attempt: int  # 1, or 2 for the retry
    status: int | None
    duration_seconds: float
    request_id: str
    correlation_id: str
    body_bytes: int
    truncated: bool
    org_url: str = ""
    mode: int = 1
    error: str | None = None  # "timeout" or "connection_error: <exception>" when status is None

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def encode_body(job: DeliveryJob) -> tuple[bytes, bool]:
    """The body and whether it had to be truncated (over 256 KB without the large members)."""
    body = encode_context(job.context)
    if len(body) <= MAX_BODY_BYTES:
        return body, False
    return encode_context(truncated(job.context)), True


def request_headers(job: DeliveryJob, *, size_exceeded: bool) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "x-ms-dynamics-organization": job.org_host,
        "x-ms-dynamics-entity-name": job.entity,
        "x-ms-dynamics-request-name": job.message,
        "x-ms-correlation-request-id": job.correlation_id,
        # protocol §5 (open item 2): only the ja-jp doc lists it; sent so receivers can dedupe retries.
        "x-request-id": job.request_id,
    }
    if size_exceeded:
        # The doc says only that the header is present over 256 KB; its value is not documented.
        headers[SIZE_EXCEEDED_HEADER] = "true"
    return {**headers, **job.webhook.request_headers()}


class WebhookSender:
    """POSTs jobs with one requests.Session per thread (sessions are not shared across threads)."""

    def __init__(self, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.timeout_seconds = timeout_seconds
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
        return session

    def send(self, job: DeliveryJob) -> list[WebhookDelivery]:
        """Every attempt made for the job: one, or two when the first answered 502, 503 or 504."""
        body, was_truncated = encode_body(job)
        headers = request_headers(job, size_exceeded=was_truncated)
        attempts = [self._attempt(job, 1, body, headers, was_truncated)]
        if attempts[0].status in RETRIED_STATUSES:
            attempts.append(self._attempt(job, 2, body, headers, was_truncated))
        return attempts

    def _attempt(
        self, job: DeliveryJob, attempt: int, body: bytes, headers: dict[str, str], was_truncated: bool
    ) -> WebhookDelivery:
        url = job.webhook.request_url()
        timeout = self.timeout_seconds
        proxies = _NO_PROXIES if is_loopback(url) else None
        status: int | None = None
        error: str | None = None
        started = time.monotonic()
        try:
            response = self._session().post(
                url,
                data=body,
                headers=headers,
                timeout=timeout,
                proxies=dict(proxies) if proxies else None,  # type: ignore[arg-type]
                allow_redirects=False,
            )
            status = response.status_code
        except requests.Timeout:
            error = "timeout"
        except requests.RequestException as exc:
            error = f"connection_error: {type(exc).__name__}"
        duration = time.monotonic() - started
        logger.debug(
            "webhook %s %s %s attempt %d -> %s in %.3fs",
            job.webhook.webhook_id,
            job.message,
            job.row_id,
            attempt,
            status if status is not None else error,
            duration,
        )
        return WebhookDelivery(
            webhook_id=job.webhook.webhook_id,
            url=job.webhook.url,
            message=job.message,
            entity=job.entity,
            row_id=job.row_id,
            attempt=attempt,
            status=status,
            duration_seconds=duration,
            request_id=job.request_id,
            correlation_id=job.correlation_id,
            body_bytes=len(body),
            truncated=was_truncated,
            org_url=job.org_url,
            mode=job.webhook.mode,
            error=error,
        )
