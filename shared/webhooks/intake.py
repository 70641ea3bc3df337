"""Accepting a Dataverse webhook delivery: authenticate the org, store the event durably, and only then
acknowledge.

Dataverse waits 60 s for a 2xx and retries once, only on 502/503/504 (protocol.md §5). So the answer is fast
(checks are point reads, cached briefly), a 2xx is given only after the event is in the queue, and storage
trouble answers 503 so Dataverse tries again. Acknowledging costs **one** storage write, the queue message:
a duplicate delivery is queued again and skipped by the processor's claim (shared.webhooks.store), which records
each event's identity.

Which org sent it is proven only by that org's own secret (threat model, boundary 2): the function key every
customer's endpoint carries authenticates "some customer org". An unknown or inactive host, a missing or wrong
secret all answer the same 401 with the same body, before anything about the org is revealed; only a delivery
with the org's secret can learn that its OrganizationId is wrong (403) or be accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.dataverse.org_url import is_host_name
from shared.telemetry import dims
from shared.tenants.org_index import OrgEntry, OrgIndex
from shared.tenants.orgs import OrgRecord
from shared.tenants.registry import TenantRegistry
from shared.webhooks.remote_context import ExecutionContext, InvalidContextError, parse_context
from shared.webhooks.store import StorageUnavailableError, WebhookStore

logger = logging.getLogger(__name__)

TRUNCATED_HEADER = "x-ms-dynamics-msg-size-exceeded"
ORG_HEADER = "x-ms-dynamics-organization"
_CACHE_SECONDS = 30.0
# A delivery refused on a cached lookup re-reads it, at most once per host in this many seconds (bounds the storage
# reads wrong secrets can cause).
_RELOOKUP_SECONDS = 2.0


@dataclass(frozen=True)
class IntakeResult:
    status: int
    code: str
    message: str
    duplicate: bool = False
    key: str | None = None


UNAUTHENTICATED = "unauthenticated"
_UNAUTHENTICATED_MESSAGE = "The delivery could not be authenticated."
_NO_SECRET = hashlib.sha256(b"").hexdigest()  # compared against when there is nothing to compare with
# Read for a host the org index does not know: no tenant id is this (tenant ids are GUIDs), so the read misses.
_NO_TENANT = "00000000-0000-0000-0000-unknown-host"


def event_key(org_id: str, context: ExecutionContext) -> str:
    """The identity of one delivery: org + operation/request/correlation + message + stage + row. A retry of the
    same delivery has the same key; a different step or change does not. The parts are encoded as a JSON array,
    so no part can run into the next (joined with a separator, ("a|b", "c") and ("a", "b|c") would collide)."""
    parts = [
        org_id,
        context.operation_id or "",
        context.request_id or "",
        context.correlation_id or "",
        context.message_name,
        str(context.stage),
        context.primary_entity_name,
        context.primary_entity_id,
    ]
    encoded = json.dumps([part.lower() for part in parts], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


class WebhookIntake:
    def __init__(
        self,
        *,
        store: WebhookStore,
        org_index: OrgIndex,
        registry: TenantRegistry,
        max_body_bytes: int,
        header_secret_name: str | None = None,
        secret_required: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._org_index = org_index
        self._registry = registry
        self._max_body = max_body_bytes
        self._secret_header = header_secret_name.lower() if header_secret_name else None
        self._secret_required = secret_required
        self._clock = clock
        self._wall_clock = wall_clock
        self._cache: dict[str, tuple[float, OrgEntry | None, OrgRecord | None]] = {}
        self._relooked: dict[str, float] = {}  # host -> when a refusal last re-read its lookup
        self._lock = threading.Lock()

    def accept(self, body: bytes, headers: Mapping[str, str]) -> IntakeResult:
        """Never raises for bad input: every outcome is an IntakeResult with a status and a code. What reaches the
        store is logged (``webhook.acknowledged``, or ``webhook.not_stored`` for a 503) with how long it took."""
        started = time.monotonic()
        if len(body) > self._max_body:
            return IntakeResult(413, "payload_too_large", f"The body exceeds {self._max_body} bytes.")
        try:
            # UTF-8 only (RFC 8259 §8.1; a BOM is tolerated): json.loads(bytes) would also take UTF-16/32, which the
            # store keeps as UTF-8 text. RecursionError: a body nested deeper than the decoder's recursion limit.
            decoded = json.loads(body.decode("utf-8-sig"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            return IntakeResult(400, "invalid_json", "The body is not JSON.")
        try:
            context = parse_context(decoded)
        except InvalidContextError as exc:
            return IntakeResult(400, exc.code, exc.message)
        host = (headers.get(ORG_HEADER) or "").strip().lower()
        try:
            entry, org, secret_hashes = self._authenticate(host, headers)
        except Exception:
            logger.exception("Webhook: organisation lookup failed for %s", host)
            return IntakeResult(503, "storage_unavailable", "Storage is unavailable; retry later.")
        if entry is None or org is None:
            # One answer for an unknown host, an inactive org and a missing or wrong secret: a key holder learns
            # nothing about which hosts are customers.
            return IntakeResult(401, UNAUTHENTICATED, _UNAUTHENTICATED_MESSAGE)
        if entry.organization_id != context.organization_id:
            return IntakeResult(
                403, "organization_mismatch", f"The body's OrganizationId does not match the {ORG_HEADER} header."
            )
        key = event_key(entry.organization_id, context)
        log_fields = (entry.tenant_id, entry.org_url, context.correlation_id, context.operation_id)

        def outcome(event: str, status: int, code: str) -> dict[str, str | int | float | bool]:
            return dims(
                event,
                tenant_id=entry.tenant_id,
                org=entry.org_url,
                correlation_id=context.correlation_id,
                operation_id=context.operation_id,
                message_name=context.message_name,
                entity=context.primary_entity_name,
                status=status,
                outcome=code,
                ack_ms=round((time.monotonic() - started) * 1000, 1),
            )

        try:
            envelope = {
                "v": 1,
                "key": key,
                "tenant_id": entry.tenant_id,
                "org_url": entry.org_url,
                "organization_id": entry.organization_id,
                "message": context.message_name,
                "entity": context.primary_entity_name,
                "row_id": context.primary_entity_id,
                "correlation_id": context.correlation_id,
                "operation_id": context.operation_id,
                "truncated": (headers.get(TRUNCATED_HEADER) or "").lower() in {"true", "1", "yes"},
                "received_us": int(time.time() * 1_000_000),  # fixed here, so a rerun writes the same records
                # Identities inside the body (the initiating user) are believed only for an org proven by its own
                # secret; a delivery let in without one (WEBHOOK_SECRET_REQUIRED=false) is not impersonated.
                "authenticated": bool(secret_hashes),
                # Which connection of the org let it in: one offboarding or remove-org ended is not processed under
                # the next (the count starts over when a removed org is added again; the id does not repeat).
                "connection": org.reconnections,
                "connection_id": org.connection_id,
            }
            self._store.enqueue(key, envelope, body)
        except StorageUnavailableError:
            logger.exception(
                "Webhook not stored (answering 503): tenant %s org %s correlation %s operation %s",
                *log_fields,
                extra=outcome("webhook.not_stored", 503, "storage_unavailable"),
            )
            return IntakeResult(503, "storage_unavailable", "The event could not be stored; retry later.")
        logger.info(
            "Webhook queued: tenant %s org %s correlation %s operation %s",
            *log_fields,
            extra=outcome("webhook.acknowledged", 202, "accepted"),
        )
        return IntakeResult(202, "accepted", "Queued.", key=key)

    def _authenticate(
        self, host: str, headers: Mapping[str, str]
    ) -> tuple[OrgEntry | None, OrgRecord | None, tuple[str, ...]]:
        """The org entry and record of an active org whose own secret the delivery carries (else None, None), and
        the hashes that secret was checked against (empty: let in without one, WEBHOOK_SECRET_REQUIRED=false). A
        header that is no host name is not looked up. A refusal on a cached lookup looks once more before refusing
        (a secret just rotated, an org just activated: Dataverse does not retry a 401) — for a known host or not
        alike, so that costs no tell. Raises what storage raises."""
        if not (host and is_host_name(host)):  # what Dataverse sends; anything else is not looked up
            self._secret_ok((), headers)
            return None, None, ()
        entry, org, fresh = self._lookup(host)
        hashes = self._accepted(org)
        authenticated = self._secret_ok(hashes, headers)  # compared whatever the org, so the time says nothing
        # A refusal whose own lookup read storage just now counts as the host's re-read too: otherwise a host whose
        # lookup a customer's own delivery had cached answered a second quick refusal without a read, and a host
        # nobody delivers for with one, and the time of two quick 401s told a key holder which hosts are customers.
        if not (org is not None and authenticated) and self._refusal_may_read(host) and not fresh:
            self._forget(host)
            entry, org, _ = self._lookup(host)
            hashes = self._accepted(org)
            authenticated = self._secret_ok(hashes, headers)
        if org is None or not authenticated:
            return None, None, hashes
        return entry, org, hashes

    def _lookup(self, host: str) -> tuple[OrgEntry | None, OrgRecord | None, bool]:
        """Org entry and, when the org is active, its registry record (its secret hashes, each replaced one with
        its deadline; None for an unknown host or an inactive org); cached briefly so an acknowledgement costs no
        storage read in the common case (offboarding reaches the receiver within _CACHE_SECONDS). The last value
        says whether this call read storage (False: from the cache).

        Always two point reads, the org index and a registry row, whether the host is a customer or not (an
        unknown host reads a tenant row that cannot exist), so the time a refusal takes does not tell a key
        holder which hosts are customers.
        """
        now = self._clock()
        with self._lock:
            cached = self._cache.get(host)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2], False
        entry = self._org_index.find(host)
        tenant = self._registry.find_tenant(entry.tenant_id if entry is not None else _NO_TENANT)
        org: OrgRecord | None = None
        if entry is not None and tenant is not None and entry.org_url in tenant.active_org_urls:
            org = tenant.org(entry.org_url)
        with self._lock:
            _bounded(self._cache)
            self._cache.pop(host, None)  # re-inserted: the newest entry again
            self._cache[host] = (now + _CACHE_SECONDS, entry, org)
        return entry, org, True

    def _refusal_may_read(self, host: str) -> bool:
        """Whether a refusal for ``host`` may read storage now: at most once per host per _RELOOKUP_SECONDS (what
        bounds the reads wrong secrets can cause), counting a refusal whose own lookup read it. True (and the time
        kept) when it may."""
        now = self._clock()
        with self._lock:
            if now - self._relooked.get(host, float("-inf")) < _RELOOKUP_SECONDS:
                return False
            _bounded(self._relooked)
            self._relooked[host] = now
            return True

    def _forget(self, host: str) -> None:
        """Drop the host's cached lookup so the next one reads storage."""
        with self._lock:
            self._cache.pop(host, None)

    def _accepted(self, org: OrgRecord | None) -> tuple[str, ...]:
        """The hashes the org's secret may match now: the cached org record keeps each replaced secret's deadline,
        so an expired one is refused at once, not when the cached lookup runs out."""
        return org.accepted_secret_hashes(self._wall_clock()) if org is not None else ()

    def _secret_ok(self, expected: tuple[str, ...], headers: Mapping[str, str]) -> bool:
        """The org's own secret, compared in constant time against every accepted hash, and against a stand-in
        when there is none, so the time taken says nothing. Without a secret on record the delivery passes only
        when secrets are not required (orgs registered by hand before per-org secrets: README, migration)."""
        given = (headers.get(self._secret_header) or "") if self._secret_header else ""
        digest = hashlib.sha256(given.encode()).hexdigest()
        matches = [hmac.compare_digest(digest, wanted) for wanted in (expected or (_NO_SECRET,))]
        if not expected:
            return not self._secret_required
        return any(matches)


def _bounded(entries: dict[str, Any], limit: int = 10_000) -> None:
    """Make room in a lookup table by dropping its oldest tenth (insertion order), not all of it: a stream of made-up
    hosts then costs the real customers' cached lookups nothing until it has pushed each out one by one."""
    if len(entries) >= limit:
        for host in list(itertools.islice(entries, limit // 10)):
            del entries[host]


def envelope_from_message(text: str) -> dict[str, Any]:
    """Decode a work-queue message. Raises ValueError for anything that is not our envelope."""
    message = json.loads(text)
    if not isinstance(message, dict) or message.get("v") != 1 or "key" not in message:
        raise ValueError("not a webhook event envelope")
    return message
