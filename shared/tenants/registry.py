"""The tenant registry: which customer tenants onboarded, their orgs, where each stands, and how it got there.

Stored in Azure Table Storage: ``tenants`` (one row per tenant) and ``tenanthistory`` (one row per transition,
newest first). Every write is conditional on the ETag read (optimistic concurrency), retried a bounded number
of times, so concurrent writers never lose each other's updates.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from shared.errors import S2SError
from shared.tenants.history import TenantHistory, Transition
from shared.tenants.orgs import (
    SCHEMA_VERSION,
    OrgRecord,
    OrgStatus,
    OrgVerification,
    dump_orgs,
    load_orgs,
    migrate_v1,
    new_connection_id,
    summarize,
    updated,
    with_org,
)

logger = logging.getLogger(__name__)

TENANTS_TABLE = "tenants"
HISTORY_TABLE = "tenanthistory"
_PARTITION = "tenant"
_MAX_CONFLICT_RETRIES = 20
RECHECK_TICKET_TTL_SECONDS = 7 * 86400  # a customer's re-check ticket is valid for 7 days (README, Onboarding)


class TenantStatus(enum.StrEnum):
    PENDING_CONSENT = "pending_consent"
    CONSENTED = "consented"
    AWAITING_APPLICATION_USER = "awaiting_application_user"
    ACTIVE = "active"
    FAILED = "failed"
    CONSENT_REVOKED = "consent_revoked"
    OFFBOARDED = "offboarded"


_S = TenantStatus
# A status may always be re-entered (a re-verification records its result without a change); offboarding is
# reachable from anywhere, and an offboarded tenant comes back only through a new consent.
ALLOWED_TRANSITIONS: dict[TenantStatus, frozenset[TenantStatus]] = {
    _S.PENDING_CONSENT: frozenset({_S.CONSENTED, _S.FAILED}),
    _S.CONSENTED: frozenset({_S.AWAITING_APPLICATION_USER, _S.ACTIVE, _S.FAILED, _S.CONSENT_REVOKED}),
    _S.AWAITING_APPLICATION_USER: frozenset({_S.ACTIVE, _S.FAILED, _S.CONSENT_REVOKED}),
    _S.ACTIVE: frozenset({_S.AWAITING_APPLICATION_USER, _S.CONSENT_REVOKED, _S.FAILED}),
    _S.FAILED: frozenset(
        {_S.PENDING_CONSENT, _S.CONSENTED, _S.AWAITING_APPLICATION_USER, _S.ACTIVE, _S.CONSENT_REVOKED}
    ),
    _S.CONSENT_REVOKED: frozenset({_S.PENDING_CONSENT, _S.CONSENTED, _S.AWAITING_APPLICATION_USER, _S.ACTIVE}),
    _S.OFFBOARDED: frozenset({_S.PENDING_CONSENT}),
}


def transition_allowed(current: TenantStatus, target: TenantStatus) -> bool:
    return target == current or target is _S.OFFBOARDED or target in ALLOWED_TRANSITIONS[current]


class TenantNotFoundError(S2SError):
    code = "tenant_not_found"


class TransitionNotAllowedError(S2SError):
    code = "transition_not_allowed"


class OrgNotFoundError(S2SError):
    code = "org_not_found"


class OrgDisconnectedError(OrgNotFoundError):
    """The org was disconnected (offboarded): it gets no webhook secret until an administrator connects it again."""

    code = "org_disconnected"


class RegistryConflictError(S2SError):
    """Too many concurrent writers on one tenant; nothing was written by this call."""

    code = "registry_conflict"


@dataclass(frozen=True)
class Verification:
    at: str
    outcome: str  # the status it led to, or "error"
    error_code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    status: TenantStatus
    org_urls: tuple[str, ...]
    created_at: str
    updated_at: str
    onboarded_by: str | None = None
    last_verification: Verification | None = None
    contact: str | None = None
    etag: str | None = field(default=None, repr=False, compare=False)
    orgs: tuple[OrgRecord, ...] = ()

    def __post_init__(self) -> None:
        # Built with org URLs only (as schema-1 rows were): each org takes the tenant's status, the rule of
        # shared.tenants.orgs.migrate_v1.
        if self.org_urls and not self.orgs:
            legacy = {"Status": self.status.value, "OrgUrls": json.dumps(list(self.org_urls))}
            object.__setattr__(self, "orgs", migrate_v1(legacy))

    def org(self, url: str) -> OrgRecord | None:
        return next((org for org in self.orgs if org.url == url), None)

    @property
    def active_org_urls(self) -> tuple[str, ...]:
        """The orgs the app works with: active ones, and only while the tenant itself is active."""
        if self.status is not TenantStatus.ACTIVE:
            return ()
        return tuple(org.url for org in self.orgs if org.status is OrgStatus.ACTIVE)

    def _sharing(self, org: OrgRecord) -> dict[str, Any]:
        """Other orgs whose webhooks carry the same secret (rows migrated from schema 1 copy the tenant's one secret
        to every org): each of them can pass as the other until `tenants webhook-secret --org` gives it its own."""
        if not org.webhook_secret_hash:
            return {}
        same = [o.url for o in self.orgs if o.url != org.url and o.webhook_secret_hash == org.webhook_secret_hash]
        return {"webhook_secret_shared_with": same} if same else {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "status": self.status.value,
            "org_urls": list(self.org_urls),
            "orgs": [org.to_dict() | self._sharing(org) for org in self.orgs],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "onboarded_by": self.onboarded_by,
            "contact": self.contact,
            "last_verification": None if self.last_verification is None else vars(self.last_verification),
        }


@dataclass(frozen=True)
class OrgUpdate:
    """What a verification learned about one org: its new status (None: keep it) and the verification."""

    status: OrgStatus | None
    verification: OrgVerification


@dataclass(frozen=True)
class TenantPage:
    tenants: list[Tenant]
    continuation: str | None


def utc_now() -> str:
    """Timestamps the registry and its callers record: UTC, ISO 8601, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class TenantRegistry:
    def __init__(self, tenants_table: Any, history_table: Any, clock: Callable[[], float] = time.time) -> None:
        self._tenants = tenants_table
        self._history = history_table
        self._history_log = TenantHistory(history_table)
        self._clock = clock

    def create_tables(self) -> None:
        """Idempotent: creates the two tables if missing (local work and first deployment)."""
        from azure.core.exceptions import ResourceExistsError

        for table in (self._tenants, self._history):
            with contextlib.suppress(ResourceExistsError):
                table.create_table()

    # -- reads ---------------------------------------------------------------------------------------------

    def find_tenant(self, tenant_id: str) -> Tenant | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._tenants.get_entity(_PARTITION, tenant_id.lower())
        except ResourceNotFoundError:
            return None
        return _to_tenant(entity)

    def get_tenant(self, tenant_id: str) -> Tenant:
        """Raises TenantNotFoundError."""
        tenant = self.find_tenant(tenant_id)
        if tenant is None:
            raise TenantNotFoundError(f"Tenant {tenant_id[:64]} is not in the registry.")
        return tenant

    def list_tenants(
        self, *, status: TenantStatus | None = None, page_size: int = 500, continuation: str | None = None
    ) -> TenantPage:
        """One page of tenants (ordered by id) and the token for the next page; cheap at 10,000 tenants since
        each page is one partition range read of at most ``page_size`` rows."""
        query = "PartitionKey eq @pk" + (" and Status eq @status" if status else "")
        parameters = {"pk": _PARTITION, **({"status": status.value} if status else {})}
        pages = self._tenants.query_entities(query, parameters=parameters, results_per_page=page_size).by_page(
            continuation_token=json.loads(continuation) if continuation else None
        )
        page: list[Any] = list(next(pages, []))
        tenants = [_to_tenant(e) for e in page]
        token = pages.continuation_token
        return TenantPage(tenants, json.dumps(token) if token else None)

    def iter_tenants(self, *, status: TenantStatus | None = None, page_size: int = 500) -> Iterator[Tenant]:
        continuation: str | None = None
        while True:
            page = self.list_tenants(status=status, page_size=page_size, continuation=continuation)
            yield from page.tenants
            if page.continuation is None:
                return
            continuation = page.continuation

    def history(self, tenant_id: str, limit: int = 100) -> list[Transition]:
        """The tenant's changes, newest first (shared.tenants.history)."""
        return self._history_log.list(tenant_id, limit)

    # -- writes --------------------------------------------------------------------------------------------

    def record(
        self,
        tenant_id: str,
        status: TenantStatus,
        *,
        reason: str,
        actor: str,
        org_url: str | None = None,
        onboarded_by: str | None = None,
        contact: str | None = None,
        verification: Verification | None = None,
        require_from: frozenset[TenantStatus] | None = None,
    ) -> Tenant:
        """Move a tenant to ``status`` (creating it on first sight), adding ``org_url`` to its orgs (pending
        verification) and storing ``verification``. Safe under concurrent writers.

        Raises TransitionNotAllowedError (nothing written) and RegistryConflictError after repeated conflicts.
        """

        def decide(current: TenantStatus | None, orgs: tuple[OrgRecord, ...], now: str) -> _Decision:
            if require_from is not None and (current is None or current not in require_from):
                raise TransitionNotAllowedError(
                    f"Tenant {tenant_id.lower()} is {current or 'not registered'}; this step needs "
                    f"{', '.join(sorted(s.value for s in require_from))}."
                )
            new_orgs = with_org(orgs, org_url, now) if org_url else orgs
            return _Decision(status, new_orgs, onboarded_by=onboarded_by, contact=contact, verification=verification)

        return self._write(tenant_id, decide, reason=reason, actor=actor)

    def connect_org(
        self, tenant_id: str, org_url: str, *, actor: str, reason: str, connected_by: str, contact: str | None
    ) -> Tenant:
        """A System Administrator of ``org_url`` who signed in connects it (decided on the row as it is now, under
        its ETag): a new or offboarded tenant enters ``pending_consent`` and takes this contact and person as its
        own; a known tenant keeps its status and contact. The org is added, or a disconnected one reconnected,
        waiting for verification; its contact and who connected it are kept on the org."""

        def decide(current: TenantStatus | None, orgs: tuple[OrgRecord, ...], now: str) -> _Decision:
            fresh = current is None or current is TenantStatus.OFFBOARDED
            target = TenantStatus.PENDING_CONSENT if fresh else current
            assert target is not None
            new_orgs = with_org(orgs, org_url, now)
            record = next(org for org in new_orgs if org.url == org_url)
            reconnected = record.status is OrgStatus.DISCONNECTED
            status = OrgStatus.PENDING_VERIFICATION if reconnected else record.status
            new_orgs = updated(
                new_orgs,
                org_url,
                status=status,
                contact=contact or "",
                connected_by=connected_by,
                reconnections=record.reconnections + 1 if reconnected else record.reconnections,
                connection_id=new_connection_id() if reconnected else record.connection_id,
            )
            return _Decision(
                target,
                new_orgs,
                onboarded_by=connected_by if fresh else None,
                contact=contact if fresh else None,
            )

        return self._write(tenant_id, decide, reason=reason, actor=actor)

    def record_verification(
        self,
        tenant_id: str,
        updates: Mapping[str, OrgUpdate],
        *,
        reason: str,
        actor: str,
        verification: Verification | None = None,
        tenant_status: TenantStatus | None = None,
    ) -> Tenant:
        """Store what a verification learned per org and move the tenant to ``tenant_status``, or, when None, to
        what its orgs sum up to (shared.tenants.orgs.summarize). Orgs not in ``updates`` keep their status. A
        ``verification`` with an empty outcome records the tenant status it led to.
        Raises TenantNotFoundError, TransitionNotAllowedError, RegistryConflictError."""

        def decide(current: TenantStatus | None, orgs: tuple[OrgRecord, ...], now: str) -> _Decision:
            current = _existing(current, tenant_id)
            new_orgs = orgs
            # An offboarded tenant's orgs keep their status unless the caller decides the tenant's (offboarding
            # itself): a verification racing the offboarding records its attempt and nothing else.
            frozen = current is TenantStatus.OFFBOARDED and tenant_status is None
            for url, update in updates.items():
                record = next((org for org in new_orgs if org.url == url), None)
                if record is None:  # removed meanwhile
                    continue
                keep = frozen or (record.status is OrgStatus.DISCONNECTED and tenant_status is None)
                status = record.status if keep or update.status is None else update.status
                new_orgs = updated(new_orgs, url, status=status, last_verification=update.verification)
                if status is OrgStatus.DISCONNECTED:
                    # A disconnected org's webhook secrets die with it: coming back issues a new one, so a secret
                    # that leaked before offboarding does not work again after re-onboarding.
                    new_orgs = updated(new_orgs, url, webhook_secret_hash="", previous_secrets=())
            target = tenant_status or TenantStatus(summarize(current.value, new_orgs))
            # An empty outcome means "the status it led to", known only here, from the row as it is now.
            outcome = verification
            if verification is not None and not verification.outcome:
                outcome = replace(verification, outcome=target.value)
            return _Decision(target, new_orgs, verification=outcome)

        return self._write(tenant_id, decide, reason=reason, actor=actor)

    def set_org_status(self, tenant_id: str, org_url: str, status: OrgStatus, *, reason: str, actor: str) -> Tenant:
        """Set one org's status as an operator (or a seed) decides it, the tenant's summed up again. Raises
        TenantNotFoundError; an org the tenant does not have is ignored."""
        return self.record_verification(
            tenant_id,
            {org_url: OrgUpdate(status, OrgVerification(utc_now(), status.value, message=reason[:500]))},
            reason=reason,
            actor=actor,
        )

    def remove_org(self, tenant_id: str, org_url: str, *, actor: str, reason: str) -> Tenant:
        """Disconnect one org; the tenant's status is summed up again from the orgs left. Raises
        TenantNotFoundError, OrgNotFoundError."""

        def decide(current: TenantStatus | None, orgs: tuple[OrgRecord, ...], now: str) -> _Decision:
            status = _existing(current, tenant_id)
            _require_org(orgs, tenant_id, org_url)
            left = tuple(org for org in orgs if org.url != org_url)
            return _Decision(TenantStatus(summarize(status.value, left)), left)

        return self._write(tenant_id, decide, reason=reason, actor=actor)

    def _write(self, tenant_id: str, decide: _Decide, *, reason: str, actor: str) -> Tenant:
        """Read the row, let ``decide`` compute the new one from it, write it only if nobody wrote in between
        (ETag), and retry on a conflict; history rows for the tenant's and each org's status changes."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        key = tenant_id.lower()
        for _ in range(_MAX_CONFLICT_RETRIES):
            now = utc_now()
            try:
                entity = self._tenants.get_entity(_PARTITION, key)
            except ResourceNotFoundError:
                entity = None
            current = TenantStatus(entity["Status"]) if entity is not None else None
            orgs = load_orgs(entity) if entity is not None else ()
            decision = decide(current, orgs, now)
            status = decision.status
            if current is not None and not transition_allowed(current, status):
                raise TransitionNotAllowedError(f"Tenant {key} cannot go from {current} to {status}.")
            old = entity or {}
            new = {
                "PartitionKey": _PARTITION,
                "RowKey": key,
                "SchemaVersion": SCHEMA_VERSION,
                "Status": status.value,
                "OrgUrls": json.dumps([org.url for org in decision.orgs]),  # kept for readers of schema 1
                "Orgs": dump_orgs(decision.orgs),
                "CreatedAt": old.get("CreatedAt") or now,
                "UpdatedAt": now,
                "OnboardedBy": decision.onboarded_by or old.get("OnboardedBy") or "",
                "Contact": decision.contact or old.get("Contact") or "",
                "LastVerification": json.dumps(vars(decision.verification))
                if decision.verification is not None
                else old.get("LastVerification", ""),
                "WebhookSecretHash": old.get("WebhookSecretHash", ""),  # schema 1's tenant-wide secret, kept
            }
            # Stamped before the write: a writer that loses a race re-reads after the winner wrote, so stamps
            # (and the history's order) follow the order in which updates actually landed.
            stamp = self._clock()
            try:
                if entity is None:
                    written = self._tenants.create_entity(new)
                else:
                    written = self._tenants.update_entity(
                        new,
                        mode=UpdateMode.REPLACE,
                        etag=entity.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
            except (ResourceModifiedError, ResourceExistsError):
                # Someone else wrote first: read again and re-decide, after a short random pause so a crowd of
                # writers does not collide again in lock-step.
                time.sleep(random.uniform(0.005, 0.05))  # noqa: S311 - jitter, not security
                continue
            self._history_log.record_changes(
                key,
                current.value if current else None,
                status.value,
                [(org.url, org.status.value) for org in orgs],
                [(org.url, org.status.value) for org in decision.orgs],
                reason=reason,
                actor=actor,
                now=now,
                stamp=stamp,
            )
            # The row is exactly what was just written: no need to read it back.
            return replace(_to_tenant(new), etag=(written or {}).get("etag"))
        raise RegistryConflictError(f"Tenant {key} is being updated by many writers; try again.")

    def issue_recheck_ticket(self, tenant_id: str, org_url: str, ttl_seconds: int = RECHECK_TICKET_TTL_SECONDS) -> str:
        """A secret for the customer's re-check of one org (only its hash is stored), replacing that org's earlier
        ticket. Only a signed-in administrator's flow issues one; background verification never does. Raises
        TenantNotFoundError, OrgNotFoundError."""
        ticket = secrets.token_urlsafe(24)
        expires = int(self._clock()) + ttl_seconds
        self._update_org(
            tenant_id,
            org_url,
            reason="re-check ticket issued",
            actor="onboarding",
            ticket_hash=_hash(ticket),
            ticket_expires=expires,
        )
        return ticket

    def set_webhook_secret(
        self, tenant_id: str, org_url: str, *, overlap_seconds: int = 0, actor: str = "operator"
    ) -> str:
        """A new secret for one org's webhooks (its service endpoint sends it with the HttpHeader auth type); only
        its hash is kept. With ``overlap_seconds`` the secret it replaces is still accepted that long (a rotation
        whose endpoint update follows, deliveries already on their way), and so are earlier ones still inside
        their own overlap (a rotation run again before the endpoint got the previous one); without, every earlier
        secret stops working at once.
        Raises TenantNotFoundError, OrgNotFoundError, OrgDisconnectedError (decided on the row being written: a
        rotation that read the org before offboarding disconnected it gives it no secret that a later
        re-onboarding would inherit)."""
        secret = secrets.token_urlsafe(32)
        now = int(self._clock())

        def change(org: OrgRecord) -> dict[str, Any]:
            if org.status is OrgStatus.DISCONNECTED:
                raise OrgDisconnectedError(
                    f"{org_url[:300]} is disconnected (its tenant was offboarded): it gets a webhook secret again "
                    "only when a System Administrator of it onboards it again."
                )
            return org.rotated(_hash(secret), now=now, overlap_seconds=overlap_seconds)

        self._update_org(
            tenant_id, org_url, reason=f"webhook secret of {org_url} rotated", actor=actor, changes_from=change
        )
        return secret

    def _update_org(
        self,
        tenant_id: str,
        org_url: str,
        *,
        reason: str,
        actor: str,
        changes_from: Callable[[OrgRecord], dict[str, Any]] | None = None,
        **changes: Any,
    ) -> None:
        """Change fields of one existing org (statuses untouched): ``changes``, and what ``changes_from`` derives
        from the org as it is in the row being written. Raises TenantNotFoundError, OrgNotFoundError."""

        def decide(current: TenantStatus | None, orgs: tuple[OrgRecord, ...], now: str) -> _Decision:
            status = _existing(current, tenant_id)
            _require_org(orgs, tenant_id, org_url)
            org = next(org for org in orgs if org.url == org_url)
            derived = changes_from(org) if changes_from is not None else {}
            return _Decision(status, updated(orgs, org_url, **(changes | derived)))

        self._write(tenant_id, decide, reason=reason, actor=actor)

    def webhook_secret_hash(self, tenant_id: str, org_url: str) -> str | None:
        """The hash of the org's webhook secret; for a row written before per-org secrets, the tenant's."""
        tenant = self.find_tenant(tenant_id)
        org = tenant.org(org_url) if tenant is not None else None
        return (org.webhook_secret_hash or None) if org is not None else None

    def check_recheck_ticket(self, tenant_id: str, ticket: str, org_url: str | None = None) -> str | None:
        """The org a valid, unexpired ticket belongs to (``org_url`` when given must be it); None otherwise."""
        import hmac

        tenant = self.find_tenant(tenant_id)
        if tenant is None or not ticket:
            return None
        wanted = _hash(ticket)
        for org in tenant.orgs:
            if org_url is not None and org.url != org_url:
                continue
            if org.ticket_hash and org.ticket_expires > self._clock() and hmac.compare_digest(org.ticket_hash, wanted):
                return org.url
        return None


def _existing(current: TenantStatus | None, tenant_id: str) -> TenantStatus:
    if current is None:
        raise TenantNotFoundError(f"Tenant {tenant_id[:64]} is not in the registry.")
    return current


def _require_org(orgs: tuple[OrgRecord, ...], tenant_id: str, org_url: str) -> None:
    if not any(org.url == org_url for org in orgs):
        raise OrgNotFoundError(f"Tenant {tenant_id[:64]} has no organisation {org_url[:300]}.")


@dataclass(frozen=True)
class _Decision:
    """A writer's answer to "given the row as it is now, what should it be?"."""

    status: TenantStatus
    orgs: tuple[OrgRecord, ...]
    onboarded_by: str | None = None
    contact: str | None = None
    verification: Verification | None = None


_Decide = Callable[[TenantStatus | None, tuple[OrgRecord, ...], str], _Decision]


def _to_tenant(entity: Any) -> Tenant:
    verification = None
    if entity.get("LastVerification"):
        verification = Verification(**json.loads(entity["LastVerification"]))
    orgs = load_orgs(entity)
    return Tenant(
        tenant_id=entity["RowKey"],
        status=TenantStatus(entity["Status"]),
        org_urls=tuple(org.url for org in orgs),
        orgs=orgs,
        created_at=entity["CreatedAt"],
        updated_at=entity["UpdatedAt"],
        onboarded_by=entity.get("OnboardedBy") or None,
        last_verification=verification,
        contact=entity.get("Contact") or None,
        etag=getattr(entity, "metadata", {}).get("etag"),
    )
