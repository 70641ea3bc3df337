"""A tenant's history: one ``tenanthistory`` row per change of the tenant's status or of one of its orgs' (added,
verified, removed), newest first, with who made it and why. Written by the registry after each write that landed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.telemetry import dims

logger = logging.getLogger("shared.tenants.registry")  # the lines operators already search for

# A tenant moving to one of these is logged as a warning: it stopped working.
_WARNING_STATUSES = frozenset({"consent_revoked", "failed"})


@dataclass(frozen=True)
class Transition:
    """A change of the tenant's status, or, with ``org`` set, of one org's (added: from None; removed: to
    "removed")."""

    tenant_id: str
    from_status: str | None
    to_status: str
    reason: str
    actor: str
    at: str
    org: str | None = None


class TenantHistory:
    def __init__(self, table: Any) -> None:
        self._table = table

    def list(self, tenant_id: str, limit: int = 100) -> list[Transition]:
        entities = self._table.query_entities(
            "PartitionKey eq @pk", parameters={"pk": tenant_id.lower()}, results_per_page=limit
        )
        out: list[Transition] = []
        for entity in entities:
            out.append(
                Transition(
                    tenant_id=entity["PartitionKey"],
                    from_status=entity.get("FromStatus") or None,
                    to_status=entity["ToStatus"],
                    reason=entity.get("Reason", ""),
                    actor=entity.get("Actor", ""),
                    at=entity["At"],
                    org=entity.get("Org") or None,
                )
            )
            if len(out) >= limit:
                break
        return out

    def record_changes(
        self,
        key: str,
        current: str | None,
        status: str,
        before: Iterable[tuple[str, str]],
        after: Iterable[tuple[str, str]],
        *,
        reason: str,
        actor: str,
        now: str,
        stamp: float,
    ) -> None:
        """Rows for each org whose status changed (``before``/``after``: (url, status) pairs), then for the tenant
        when its status changed; one write's rows keep their order."""
        old, new = dict(before), dict(after)
        tick = 0
        changed = []
        for url in [*new, *(url for url in old if url not in new)]:
            was, will = old.get(url), new.get(url)
            if was != will:
                changed.append(url)
                tick += 1
                self._add(
                    key, was, will or "removed", reason=reason, actor=actor, now=now, stamp=stamp, org=url, order=tick
                )
        if current != status:
            self._add(key, current, status, reason=reason, actor=actor, now=now, stamp=stamp, order=tick + 1)
            log = logger.warning if status in _WARNING_STATUSES else logger.info
            log(
                "Tenant %s: %s -> %s (%s)",
                key,
                current or "new",
                status,
                reason,
                extra=dims(
                    "tenant.status",
                    tenant_id=key,
                    org=changed[0] if len(changed) == 1 else None,
                    from_status=current or "new",
                    to_status=status,
                    reason=reason[:500] if reason else None,
                    actor=actor,
                    org_count=len(new),
                ),
            )

    def _add(
        self,
        key: str,
        current: str | None,
        status: str,
        *,
        reason: str,
        actor: str,
        now: str,
        stamp: float,
        org: str | None = None,
        order: int = 0,
    ) -> None:
        # Newest first: Table Storage returns rows in RowKey order within a partition. Microseconds keep quick
        # successive transitions in order; ``order`` orders the rows one write adds (org changes, then tenant).
        inverted = 10**17 - int(stamp * 1_000_000) - order
        self._table.create_entity(
            {
                "PartitionKey": key,
                "RowKey": f"{inverted:017d}-{uuid.uuid4().hex[:8]}",
                "FromStatus": current or "",
                "ToStatus": status,
                "Reason": reason[:1000],
                "Actor": actor[:200],
                "At": now,
                "Org": org or "",
            }
        )
