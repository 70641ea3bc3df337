"""Each organisation of a tenant and where it stands: its own status, last verification and re-check ticket, kept
in the tenant's registry row (``Orgs``, schema version 2), and the rule that sums the orgs up into the tenant's
status.

Why per org: one tenant may connect several environments; an environment that lacks our application user (or was
just added) must not cut off the tenant's working ones (threat model: a wrong status cuts a customer off).

The rule (``summarize``), in order:
1. A tenant-level fact wins: ``pending_consent``, ``consent_revoked`` and ``offboarded`` come from Entra (can the
   app get a token for the tenant at all) and hold whatever its orgs say.
2. Otherwise the tenant is ``active`` when at least one org is active (each org is then used by its own status);
3. else ``awaiting_application_user`` when at least one org awaits it;
4. else ``failed`` when every connected org failed (a ``disconnected`` org counts for nothing);
5. else it keeps its status (``consented``: no org verified yet).

Rows written before per-org status (schema 1: ``OrgUrls`` and one tenant-level status, verification and ticket)
are read through ``migrate_v1``, which loses nothing: every org takes the tenant's status, verification, re-check
ticket and webhook secret; the next write stores schema 2.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

SCHEMA_VERSION = 2
MAX_PREVIOUS_SECRETS = 4  # rotations of one org inside one overlap whose replaced secrets all keep working


class OrgStatus(enum.StrEnum):
    PENDING_VERIFICATION = "pending_verification"  # connected, not verified yet
    ACTIVE = "active"
    AWAITING_APPLICATION_USER = "awaiting_application_user"
    FAILED = "failed"
    # Offboarded with its tenant: never verified in the background again; only a System Administrator of this org
    # signing in (or an operator) connects it again.
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class OrgVerification:
    at: str
    outcome: str  # the org status it led to, or "error" (inconclusive: the status was kept)
    error_code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class OrgRecord:
    url: str
    status: OrgStatus
    added_at: str
    last_verification: OrgVerification | None = None
    ticket_hash: str = field(default="", repr=False)
    ticket_expires: int = 0
    webhook_secret_hash: str = field(default="", repr=False)  # SHA-256 of the org's own webhook secret
    # After a rotation the secrets it replaced are still accepted, each until its own deadline (epoch seconds): the
    # org's service endpoint is updated after the registry, deliveries already sent carry the old one, and a rotation
    # that could not reach the endpoint may be run again before anyone put a new secret there. Newest first.
    previous_secrets: tuple[tuple[str, int], ...] = field(default=(), repr=False)
    # How many times a disconnected org was connected again. An event accepted under one connection is not
    # processed under the next (shared.webhooks.processing).
    reconnections: int = 0
    # Which connection this is: new when the org is added (again: remove-org deletes the record, and its count with
    # it) and when a disconnected org is connected again, so no later connection has the same one. "" in rows written
    # before it was kept.
    connection_id: str = ""
    contact: str = ""  # what the administrator who connected this org typed (one printable line)
    connected_by: str = ""  # the UPN of the System Administrator who connected it

    def to_dict(self) -> dict[str, Any]:
        """For display and JSON answers: never the ticket's hash."""
        return {
            "url": self.url,
            "status": self.status.value,
            "added_at": self.added_at,
            "last_verification": None if self.last_verification is None else vars(self.last_verification),
            "recheck_ticket_expires": self.ticket_expires or None,
            "webhook_secret": bool(self.webhook_secret_hash),
            "previous_webhook_secrets_until": sorted(until for _, until in self.previous_secrets) or None,
            "contact": self.contact or None,
            "connected_by": self.connected_by or None,
        }

    @property
    def previous_secret_hash(self) -> str:
        """The secret the current one replaced (its hash), or ""."""
        return self.previous_secrets[0][0] if self.previous_secrets else ""

    @property
    def previous_secret_until(self) -> int:
        """When the first of the replaced secrets stops being accepted (0: none is): what an operator must beat."""
        return min((until for _, until in self.previous_secrets), default=0)

    def accepted_secret_hashes(self, now: float) -> tuple[str, ...]:
        """The hashes a delivery's secret may match: the current one, and those it replaced until their overlap
        ends."""
        hashes: tuple[str, ...] = (self.webhook_secret_hash,) if self.webhook_secret_hash else ()
        return hashes + tuple(digest for digest, until in self.previous_secrets if until > now)

    def rotated(self, new_hash: str, *, now: int, overlap_seconds: int) -> dict[str, Any]:
        """The fields after a rotation to `new_hash`: with an overlap, the current secret and those still in their
        own overlap stay accepted (at most MAX_PREVIOUS_SECRETS, newest first); without, none does."""
        if overlap_seconds <= 0:
            return {"webhook_secret_hash": new_hash, "previous_secrets": ()}
        kept = tuple((digest, until) for digest, until in self.previous_secrets if until > now)
        if self.webhook_secret_hash:
            kept = ((self.webhook_secret_hash, now + overlap_seconds), *kept)
        return {"webhook_secret_hash": new_hash, "previous_secrets": kept[:MAX_PREVIOUS_SECRETS]}


def dump_orgs(orgs: Iterable[OrgRecord]) -> str:
    return json.dumps(
        [
            {
                "url": org.url,
                "status": org.status.value,
                "added_at": org.added_at,
                "last_verification": None if org.last_verification is None else vars(org.last_verification),
                "ticket_hash": org.ticket_hash,
                "ticket_expires": org.ticket_expires,
                "webhook_secret_hash": org.webhook_secret_hash,
                "previous_secrets": [list(item) for item in org.previous_secrets],
                "reconnections": org.reconnections,
                "connection_id": org.connection_id,
                "contact": org.contact,
                "connected_by": org.connected_by,
            }
            for org in orgs
        ]
    )


def load_orgs(entity: Mapping[str, Any]) -> tuple[OrgRecord, ...]:
    """The orgs of a registry row, whatever its schema version."""
    if int(entity.get("SchemaVersion") or 1) < SCHEMA_VERSION:
        return migrate_v1(entity)
    records = []
    for item in json.loads(entity.get("Orgs") or "[]"):
        verification = item.get("last_verification")
        records.append(
            OrgRecord(
                url=item["url"],
                status=OrgStatus(item["status"]),
                added_at=item.get("added_at") or "",
                last_verification=OrgVerification(**verification) if verification else None,
                ticket_hash=item.get("ticket_hash") or "",
                ticket_expires=int(item.get("ticket_expires") or 0),
                webhook_secret_hash=item.get("webhook_secret_hash") or "",
                previous_secrets=tuple(
                    (str(digest), int(until)) for digest, until in item.get("previous_secrets") or ()
                ),
                reconnections=int(item.get("reconnections") or 0),
                connection_id=str(item.get("connection_id") or ""),
                contact=item.get("contact") or "",
                connected_by=item.get("connected_by") or "",
            )
        )
    return tuple(records)


_V1_ORG_STATUS = {
    "active": OrgStatus.ACTIVE,
    "awaiting_application_user": OrgStatus.AWAITING_APPLICATION_USER,
    "failed": OrgStatus.FAILED,
}


def migrate_v1(entity: Mapping[str, Any]) -> tuple[OrgRecord, ...]:
    """Schema 1 → 2 without losing anything (see the module docstring)."""
    status = _V1_ORG_STATUS.get(str(entity.get("Status")), OrgStatus.PENDING_VERIFICATION)
    raw = entity.get("LastVerification")
    verification = None
    if raw:
        data = json.loads(raw)
        verification = OrgVerification(data["at"], data["outcome"], data.get("error_code"), data.get("message"))
    return tuple(
        OrgRecord(
            url=url,
            status=status,
            added_at=str(entity.get("CreatedAt") or ""),
            last_verification=verification,
            # The tenant's ticket opens a re-check of each of its orgs until it expires (checked when used).
            ticket_hash=str(entity.get("RecheckTicketHash") or ""),
            ticket_expires=int(entity.get("RecheckTicketExpires") or 0),
            webhook_secret_hash=str(entity.get("WebhookSecretHash") or ""),
        )
        for url in json.loads(entity.get("OrgUrls") or "[]")
    )


def new_connection_id() -> str:
    """A connection's identity (OrgRecord.connection_id): random, so an org removed and added again, whose record and
    count start over, never has a connection it had before."""
    return uuid.uuid4().hex


def with_org(orgs: tuple[OrgRecord, ...], url: str, added_at: str) -> tuple[OrgRecord, ...]:
    """``orgs`` plus ``url`` (pending verification, a new connection) when it is not there yet."""
    if any(org.url == url for org in orgs):
        return orgs
    return (*orgs, OrgRecord(url, OrgStatus.PENDING_VERIFICATION, added_at, connection_id=new_connection_id()))


def updated(orgs: tuple[OrgRecord, ...], url: str, **changes: Any) -> tuple[OrgRecord, ...]:
    return tuple(replace(org, **changes) if org.url == url else org for org in orgs)


# Imported lazily by the registry to keep this module free of the registry's names; the values are the
# TenantStatus strings.
_TENANT_LEVEL = frozenset({"pending_consent", "consent_revoked", "offboarded"})


def summarize(current: str, orgs: Iterable[OrgRecord]) -> str:
    """The tenant status (a TenantStatus value) the orgs add up to; see the module docstring for the rule."""
    if current in _TENANT_LEVEL:
        return current
    statuses = [org.status for org in orgs]
    if OrgStatus.ACTIVE in statuses:
        return "active"
    if OrgStatus.AWAITING_APPLICATION_USER in statuses:
        return "awaiting_application_user"
    connected = [status for status in statuses if status is not OrgStatus.DISCONNECTED]
    if connected and all(status is OrgStatus.FAILED for status in connected):
        return "failed"
    return current
