"""A Dataverse Web API (v9.2) client for one org, called as the app's application user (S2S).

It owns the wire details: OData headers, a fresh ``x-ms-client-request-id`` per call, paging by
``@odata.nextLink``, change tracking, ``$batch``, ``CallerObjectId`` impersonation, and service protection —
a 429's ``Retry-After`` is honoured by every caller of the org (``OrgGovernor``), 5xx and connection failures
back off exponentially with jitter, and nothing that may have reached the server is replayed unless it is
idempotent (protocol.md §4).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from shared.auth.token_provider import AccessToken
from shared.dataverse.batch import (
    MAX_BATCH_OPERATIONS,
    BatchOperation,
    BatchPartResponse,
    build_batch_body,
    parse_batch_response,
)
from shared.dataverse.errors import (
    DataverseError,
    DataverseUnreachableError,
    OrganizationNotFoundError,
    RowNotFoundError,
    ThrottledError,
    error_from_response,
    rate_limit_named,
)
from shared.dataverse.governor import AdmissionTimeout, OrgGovernor, Ticket
from shared.dataverse.odata import (
    ATTRIBUTE,
    ENTITY_SET,
    MAX_PAGE_SIZE,
    checked_page_size,
    host_does_not_exist,
    is_deleted_entity,
    is_multipart,
    never_left_the_client,
    query_string,
    retry_after_seconds,
)
from shared.settings import is_guid
from shared.telemetry import dims

logger = logging.getLogger(__name__)

API_PATH = "/api/data/v9.2"
_ENTITY_ID_IN_URL = re.compile(r"\(([0-9a-fA-F-]{36})\)\s*\Z")


class TokenSource(Protocol):
    def get_token(self, tenant_id: str, resource: str) -> AccessToken: ...


class SharedWindows(Protocol):
    """Retry-After windows shared with the app's other instances (shared.dataverse.throttle_board.ThrottleBoard)."""

    def remaining(self, org_url: str) -> float: ...

    def publish(self, org_url: str, seconds: float) -> None: ...


class HttpSession(Protocol):
    """The slice of ``requests.Session`` the client uses."""

    def request(self, method: str, url: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class _Answer:
    """A response whose body has been read: what ``_send`` gives its callers."""

    status_code: int
    headers: Any  # the response's case-insensitive mapping
    content: bytes


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    budget_seconds: float = 300.0  # the longest one call may spend waiting and retrying
    base_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0


@dataclass(frozen=True)
class WhoAmI:
    user_id: str
    business_unit_id: str
    organization_id: str


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next_link: str | None


@dataclass(frozen=True)
class ChangePage:
    """One page of a change-tracking read. ``delta_link`` is set on the last page: keep it for next time."""

    upserts: list[dict[str, Any]]
    deletions: list[str]
    next_link: str | None
    delta_link: str | None


class DataverseClient:
    """Web API calls for one org of one tenant. Every method raises DataverseError subclasses; token problems
    surface as TokenAcquisitionError / CredentialError from the token source."""

    def __init__(
        self,
        org_url: str,
        tenant_id: str,
        tokens: TokenSource,
        session: HttpSession,
        governor: OrgGovernor,
        *,
        timeout_seconds: float = 60.0,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        shared_windows: SharedWindows | None = None,
    ) -> None:
        self.org_url = org_url
        self.tenant_id = tenant_id
        self.api_root = f"{org_url}{API_PATH}"
        self._tokens = tokens
        self._session = session
        self.governor = governor
        self._timeout = timeout_seconds
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._shared = shared_windows

    # -- operations ----------------------------------------------------------------------------------------

    def whoami(self, *, caller_object_id: str | None = None) -> WhoAmI:
        payload = self._json("GET", f"{self.api_root}/WhoAmI", caller_object_id=caller_object_id)
        return WhoAmI(payload["UserId"], payload["BusinessUnitId"], payload["OrganizationId"])

    def get_row(
        self, table: str, row_id: str, *, select: Sequence[str] | None = None, caller_object_id: str | None = None
    ) -> dict[str, Any]:
        """Raises RowNotFoundError when the row does not exist."""
        url = f"{self._row_url(table, row_id)}{query_string(select=select)}"
        result: dict[str, Any] = self._json("GET", url, caller_object_id=caller_object_id)
        return result

    def query(
        self,
        table: str,
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        top: int | None = None,
        page_size: int = MAX_PAGE_SIZE,
        caller_object_id: str | None = None,
    ) -> Iterator[Page]:
        """Yield the result page by page (``Prefer: odata.maxpagesize``), following ``@odata.nextLink`` unchanged,
        so memory holds one page whatever the row count."""
        url: str | None = (
            f"{self._table_url(table)}{query_string(select=select, filter=filter, orderby=orderby, top=top)}"
        )
        prefer = f"odata.maxpagesize={checked_page_size(page_size)}"
        while url is not None:
            payload = self._json("GET", url, headers={"Prefer": prefer}, caller_object_id=caller_object_id)
            next_link = self._same_org_link(payload.get("@odata.nextLink"))
            yield Page(list(payload.get("value", [])), next_link)
            url = next_link

    def list_related(
        self, table: str, row_id: str, navigation: str, *, select: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """The rows a collection-valued navigation property of one row leads to, every page, e.g. a user's
        security roles: ``list_related("systemusers", user_id, "systemuserroles_association")``."""
        if not ATTRIBUTE.fullmatch(navigation):
            raise ValueError(f"{navigation!r} is not a navigation property name")
        url: str | None = f"{self._row_url(table, row_id)}/{navigation}{query_string(select=select)}"
        rows: list[dict[str, Any]] = []
        while url is not None:
            payload = self._json("GET", url)
            rows.extend(payload.get("value", []))
            url = self._same_org_link(payload.get("@odata.nextLink"))
        return rows

    def iter_rows(self, table: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for page in self.query(table, **kwargs):
            yield from page.rows

    def create(self, table: str, data: Mapping[str, Any], *, caller_object_id: str | None = None) -> str:
        """Create a row and return its id (from ``OData-EntityId``). Never replayed once it may have been sent:
        to create idempotently with your own id, use ``upsert``."""
        response = self._send(
            "POST", self._table_url(table), body=data, idempotent=False, caller_object_id=caller_object_id
        )
        entity_id = response.headers.get("OData-EntityId") or response.headers.get("odata-entityid") or ""
        match = _ENTITY_ID_IN_URL.search(entity_id)
        if not match:
            raise DataverseError(
                "Dataverse created the row but sent no OData-EntityId header.",
                org_url=self.org_url,
                status_code=response.status_code,
            )
        return match.group(1).lower()

    def update(
        self,
        table: str,
        row_id: str,
        data: Mapping[str, Any],
        *,
        if_match: str | None = None,
        caller_object_id: str | None = None,
    ) -> None:
        """Update an existing row (never creates one). ``if_match`` is an ETag for optimistic concurrency:
        PreconditionFailedError when the row changed since."""
        headers = {"If-Match": if_match or "*"}
        self._send(
            "PATCH",
            self._row_url(table, row_id),
            body=data,
            headers=headers,
            idempotent=if_match in (None, "*"),
            caller_object_id=caller_object_id,
        )

    def upsert(
        self,
        table: str,
        key: str | Mapping[str, str | int],
        data: Mapping[str, Any],
        *,
        caller_object_id: str | None = None,
    ) -> None:
        """Create or update the row with this id or alternate key. Idempotent, so safely retried."""
        self._send("PATCH", self._row_url(table, key), body=data, idempotent=True, caller_object_id=caller_object_id)

    def delete(self, table: str, row_id: str, *, caller_object_id: str | None = None) -> bool:
        """Delete a row. Returns False when it was already gone (that is success too); raises UnknownTableError
        when the org has no such table (0x8006088a)."""
        try:
            self._send("DELETE", self._row_url(table, row_id), idempotent=True, caller_object_id=caller_object_id)
        except RowNotFoundError:
            return False
        return True

    def execute_batch(
        self, operations: Sequence[BatchOperation], *, atomic: bool = True, caller_object_id: str | None = None
    ) -> list[BatchPartResponse]:
        """Send operations in ``$batch`` requests of at most 1,000. With ``atomic``, consecutive writes of each
        batch form one change set (all or nothing within that batch of 1,000). Returns every part's response in
        order; a failed change set contributes one part, its error."""
        parts: list[BatchPartResponse] = []
        for start in range(0, len(operations), MAX_BATCH_OPERATIONS):
            chunk = operations[start : start + MAX_BATCH_OPERATIONS]
            content_type, body = build_batch_body(self.api_root, chunk, atomic=atomic)
            headers = {"Content-Type": content_type}
            if not atomic:
                headers["Prefer"] = "odata.continue-on-error"
            response = self._send(
                "POST",
                f"{self.api_root}/$batch",
                raw_body=body,
                headers=headers,
                idempotent=all(op.idempotent for op in chunk),
                caller_object_id=caller_object_id,
                multipart_errors=True,
            )
            try:
                parts.extend(parse_batch_response(response.headers.get("Content-Type", ""), response.content))
            except ValueError as exc:
                raise DataverseError(
                    f"The $batch response could not be read: {exc}", org_url=self.org_url, status_code=200
                ) from exc
        return parts

    def batch_errors(self, parts: Sequence[BatchPartResponse]) -> list[DataverseError]:
        return [
            error_from_response(
                org_url=self.org_url, status_code=p.status, body=p.body, headers=p.headers, client_request_id=""
            )
            for p in parts
            if p.status >= 400
        ]

    def track_changes(
        self,
        table: str,
        *,
        select: Sequence[str],
        delta_link: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[ChangePage]:
        """Read a table's changes page by page: everything (no ``delta_link``) or what changed since the given
        delta link. The last page carries the new delta link. Raises DeltaTokenExpiredError when the token
        expired or is invalid — resynchronise from scratch then."""
        url: str | None
        if delta_link is not None:
            url = self._same_org_link(delta_link)
            if url is None:
                raise ValueError("delta_link is empty")
        else:
            url = f"{self._table_url(table)}{query_string(select=select)}"
        prefer = f"odata.track-changes,odata.maxpagesize={checked_page_size(page_size)}"
        while url is not None:
            payload = self._json("GET", url, headers={"Prefer": prefer})
            rows: list[dict[str, Any]] = payload.get("value", [])
            upserts = rows
            deletions: list[str] = []
            # Only a row with an "id" can be a $deletedEntity; most pages have none, and then the page's list is
            # the upserts as it is, without a Python step per row.
            candidates = [row for row in rows if "id" in row]
            if candidates and any(is_deleted_entity(row) for row in candidates):
                upserts = []
                for row in rows:
                    if is_deleted_entity(row):
                        deletions.append(str(row["id"]).lower())
                    else:
                        upserts.append(row)
            next_link = self._same_org_link(payload.get("@odata.nextLink"))
            new_delta = self._same_org_link(payload.get("@odata.deltaLink"))
            yield ChangePage(upserts, deletions, next_link, new_delta)
            url = next_link

    # -- plumbing ------------------------------------------------------------------------------------------

    def _table_url(self, table: str) -> str:
        if not ENTITY_SET.fullmatch(table):
            raise ValueError(f"{table!r} is not an entity set name")
        return f"{self.api_root}/{table}"

    def _row_url(self, table: str, key: str | Mapping[str, str | int]) -> str:
        if isinstance(key, str):
            if not is_guid(key):
                raise ValueError(f"row id {key[:40]!r} is not a GUID")
            return f"{self._table_url(table)}({key.lower()})"
        if not key:
            raise ValueError("an alternate key needs at least one attribute")
        pairs = []
        for name, value in key.items():
            if not ATTRIBUTE.fullmatch(name):
                raise ValueError(f"{name!r} is not an attribute name")
            literal = str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"
            pairs.append(f"{name}={quote(literal, safe=chr(39))}")
        return f"{self._table_url(table)}({','.join(pairs)})"

    def _same_org_link(self, link: object) -> str | None:
        """Follow server links unchanged — but only within this org's Web API, so the token never leaves it."""
        if link is None or link == "":
            return None
        if not isinstance(link, str) or not link.startswith(self.api_root + "/"):
            raise DataverseError("Dataverse returned a link outside this organisation.", org_url=self.org_url)
        return link

    def _json(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        caller_object_id: str | None = None,
    ) -> Any:
        response = self._send(method, url, headers=headers, idempotent=True, caller_object_id=caller_object_id)
        try:
            # orjson parses a 5,000-row page several times faster than json: pages are the sync's hot path.
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise DataverseError(
                "Dataverse answered with a body that is not JSON.",
                org_url=self.org_url,
                status_code=response.status_code,
            ) from exc

    def _admit(self, deadline: float) -> Ticket:
        """A governor ticket for one request. A window another instance was given for this org (shared windows)
        becomes this worker's window too, and after any wait the shared windows are looked at again (read again
        if the snapshot has grown older than the refresh interval meanwhile): another instance may have been given
        a later one. Raises AdmissionTimeout."""
        elsewhere = self._shared.remaining(self.org_url) if self._shared is not None else 0.0
        while True:
            if elsewhere > 0:
                self.governor.block_for(elsewhere)
            ticket = self.governor.acquire(deadline)
            if self._shared is None or not ticket.waited:
                return ticket
            elsewhere = self._shared.remaining(self.org_url)
            if elsewhere <= 0:
                return ticket
            self.governor.withdraw(ticket)

    @staticmethod
    def _answer(response: Any) -> _Answer:
        """The status, headers and whole body of a response sent with ``stream=True``. One ``read()`` of the
        body costs a third of the CPU of ``Response.content``'s 10 KB chunks, and a 5,000-row page is close to
        1 MB; the connection goes back to the pool once the body is read to its end."""
        return _Answer(response.status_code, response.headers, response.raw.read(decode_content=True))

    def _send(
        self,
        method: str,
        url: str,
        *,
        body: Mapping[str, Any] | None = None,
        raw_body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        caller_object_id: str | None = None,
        multipart_errors: bool = False,
    ) -> _Answer:
        import requests
        import urllib3

        if caller_object_id is not None and not is_guid(caller_object_id):
            raise ValueError("caller_object_id must be the user's Entra object id (a GUID)")
        data = raw_body if raw_body is not None else (json.dumps(body).encode("utf-8") if body is not None else None)
        deadline = self._clock() + self._retry.budget_seconds
        attempt = 0
        while True:
            attempt += 1
            client_request_id = str(uuid.uuid4())
            request_headers = {
                "Accept": "application/json",
                "OData-Version": "4.0",
                "OData-MaxVersion": "4.0",
                "x-ms-client-request-id": client_request_id,
            }
            if body is not None:
                request_headers["Content-Type"] = "application/json; charset=utf-8"
            if caller_object_id is not None:
                request_headers["CallerObjectId"] = caller_object_id
            request_headers.update(headers or {})
            # The token is fetched before taking a slot, so a slow token request never holds org capacity.
            request_headers["Authorization"] = f"Bearer {self._tokens.get_token(self.tenant_id, self.org_url).token}"
            try:
                ticket = self._admit(deadline)
            except AdmissionTimeout:
                raise ThrottledError(
                    "Dataverse asked this worker to wait (Retry-After) longer than the call's retry budget.",
                    org_url=self.org_url,
                    status_code=429,
                    client_request_id=client_request_id,
                    retry_after=self.governor.blocked_for,
                    is_transient=True,
                ) from None
            try:
                started = self._session.request(
                    method,
                    url,
                    headers=request_headers,
                    data=data,
                    timeout=self._timeout,
                    allow_redirects=False,
                    stream=True,
                )
                # The answer has begun, so the server has counted the request: pacing counts from now, not from
                # when the body has been read.
                self.governor.answered(ticket)
                response = self._answer(started)
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                if host_does_not_exist(exc):
                    raise OrganizationNotFoundError.at(self.org_url, client_request_id) from exc
                never_sent = never_left_the_client(exc)
                if (idempotent or never_sent) and self._can_retry(attempt, deadline):
                    delay = self._backoff(attempt)
                    logger.warning(
                        "Dataverse %s unreachable for tenant %s (%s); retry %d in %.1f s",
                        self.org_url,
                        self.tenant_id,
                        type(exc).__name__,
                        attempt,
                        delay,
                        extra=self._dims(
                            "dataverse.retry", client_request_id, reason=type(exc).__name__, delay_s=delay
                        ),
                    )
                    self._sleep(delay)
                    continue
                applied = "" if idempotent or never_sent else "; the request may have been applied, so not sent again"
                raise DataverseUnreachableError(
                    f"Dataverse could not be reached ({type(exc).__name__}){applied}",
                    org_url=self.org_url,
                    client_request_id=client_request_id,
                    is_transient=True,
                ) from exc
            finally:
                self.governor.release(ticket)
            self.governor.apply_dop_hint(response.headers.get("x-ms-dop-hint"))
            status = response.status_code
            if status < 400:
                return response
            if multipart_errors and status == 400 and is_multipart(response.headers):
                # A batch stopped by a failing operation answers 400 with the per-operation responses inside.
                return response
            if status == 429:
                retry_after = retry_after_seconds(response.headers) or self._backoff(attempt)
                self.governor.block_for(retry_after)
                self.governor.refused(ticket, rate_limit_named(response.content))
                if self._shared is not None:
                    self._shared.publish(self.org_url, retry_after)
                logger.warning(
                    "Dataverse %s throttled tenant %s for %.1f s (client request %s, service request %s)",
                    self.org_url,
                    self.tenant_id,
                    retry_after,
                    client_request_id,
                    response.headers.get("x-ms-service-request-id"),
                    extra=self._dims(
                        "dataverse.throttled", client_request_id, response, retry_after_s=retry_after, method=method
                    ),
                )
                # A 429 means the request was not processed, so it is always safe to send again.
                if attempt < self._retry.max_attempts and self._clock() + retry_after < deadline:
                    continue
                raise error_from_response(
                    org_url=self.org_url,
                    status_code=status,
                    body=response.content,
                    headers=response.headers,
                    client_request_id=client_request_id,
                    retry_after=retry_after,
                )
            if status in (502, 503, 504) and idempotent and self._can_retry(attempt, deadline):
                delay = retry_after_seconds(response.headers) or self._backoff(attempt)
                logger.warning(
                    "Dataverse %s answered %d for tenant %s; retry %d in %.1f s",
                    self.org_url,
                    status,
                    self.tenant_id,
                    attempt,
                    delay,
                    extra=self._dims(
                        "dataverse.retry", client_request_id, response, reason=f"HTTP {status}", delay_s=delay
                    ),
                )
                self._sleep(delay)
                continue
            error = error_from_response(
                org_url=self.org_url,
                status_code=status,
                body=response.content,
                headers=response.headers,
                client_request_id=client_request_id,
            )
            logger.info(
                "Dataverse %s %s for tenant %s failed: %d %s (client request %s, service request %s)",
                method,
                self.org_url,
                self.tenant_id,
                status,
                error.error_code,
                client_request_id,
                error.service_request_id,
                extra=self._dims(
                    "dataverse.failed", client_request_id, response, status=status, error_code=error.error_code
                ),
            )
            raise error

    def _dims(
        self, event: str, client_request_id: str, answer: _Answer | None = None, **measures: str | float | None
    ) -> dict[str, str | int | float | bool]:
        """A log record's dimensions: this client's tenant and org, our request id and the service's."""
        service_request_id = answer.headers.get("x-ms-service-request-id") if answer is not None else None
        rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in measures.items()}
        return dims(
            event,
            tenant_id=self.tenant_id,
            org=self.org_url,
            client_request_id=client_request_id,
            service_request_id=service_request_id,
            measures=rounded,
        )

    def _can_retry(self, attempt: int, deadline: float) -> bool:
        return attempt < self._retry.max_attempts and self._clock() < deadline

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: uniform(c/2, c) where c = min(cap, base * 2^(n-1))."""
        ceiling = min(self._retry.max_backoff_seconds, self._retry.base_backoff_seconds * 2 ** (attempt - 1))
        return self._rng.uniform(ceiling / 2, ceiling)
