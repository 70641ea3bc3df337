"""Housekeeping: deletes what the app no longer needs, a bounded amount per run — expired onboarding sign-in
states, webhook event records past WEBHOOK_EVENT_RETENTION_DAYS, and tenant history beyond its retention.

Each kind is a task (``limit`` → rows deleted) that is idempotent (a row already gone counts as done) and isolated
(one kind failing never stops the others). A kind that reaches the limit says so in the summary; the next run
carries on. Azure Storage's lifecycle management policies cover block and append blobs only, so table rows need this.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.errors import S2SError
from shared.telemetry import dims

logger = logging.getLogger(__name__)

# Rows each kind may delete in one run: one query and this many single-row deletes at most.
DEFAULT_LIMIT = 5000

PurgeTask = Callable[[int], int]  # limit -> rows deleted


@dataclass
class HousekeepingSummary:
    deleted: dict[str, int] = field(default_factory=dict)
    more_remaining: list[str] = field(default_factory=list)  # kinds that reached the limit: the next run continues
    failures: dict[str, str] = field(default_factory=dict)  # kind -> error code
    duration_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TenantHistoryRetention:
    """Keeps each tenant's newest ``keep_newest`` transitions whatever their age, and every transition younger than
    ``max_age_days``; deletes the rest. The registry writes ``tenanthistory`` (shared.tenants.registry): partition =
    tenant id, rows newest first, ``At`` = UTC ISO 8601 to the second (so string order is time order)."""

    def __init__(
        self,
        history_table: Any,
        *,
        keep_newest: int,
        max_age_days: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keep_newest < 1:
            raise ValueError("keep_newest must be at least 1: a tenant's latest transition is always kept")
        self._table = history_table
        self._keep = keep_newest
        self._max_age_seconds = max_age_days * 86400
        self._clock = clock

    def purge(self, limit: int = DEFAULT_LIMIT) -> int:
        """Delete up to ``limit`` history rows outside the retention; returns how many."""
        from azure.core.exceptions import ResourceNotFoundError

        cutoff = datetime.fromtimestamp(self._clock() - self._max_age_seconds, UTC).isoformat(timespec="seconds")
        old_rows = self._table.query_entities(
            "At lt @cutoff", parameters={"cutoff": cutoff}, select=["PartitionKey", "RowKey", "At"]
        )
        newest: dict[str, set[str]] = {}
        deleted = 0
        for row in old_rows:
            if deleted >= limit:
                break
            if str(row.get("At", "")) >= cutoff:
                continue
            tenant = row["PartitionKey"]
            if tenant not in newest:
                newest[tenant] = self._newest_row_keys(tenant)
            if row["RowKey"] in newest[tenant]:
                continue
            with contextlib.suppress(ResourceNotFoundError):
                self._table.delete_entity(tenant, row["RowKey"])
            deleted += 1
        return deleted

    def _newest_row_keys(self, tenant: str) -> set[str]:
        """The tenant's newest ``keep_newest`` row keys: the first page of its partition (rows come newest first)."""
        rows = self._table.query_entities(
            "PartitionKey eq @pk", parameters={"pk": tenant}, select=["RowKey"], results_per_page=self._keep
        )
        keys: set[str] = set()
        for row in rows:
            keys.add(row["RowKey"])
            if len(keys) >= self._keep:
                break
        return keys


class Housekeeping:
    """Runs each purge task once with the same per-kind limit and reports one summary."""

    def __init__(
        self,
        tasks: Mapping[str, PurgeTask],
        *,
        limit: int = DEFAULT_LIMIT,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tasks = dict(tasks)
        self._limit = limit
        self._monotonic = monotonic

    def run(self) -> HousekeepingSummary:
        """Never raises for one kind's failure: it is logged and named in ``failures``."""
        from azure.core.exceptions import AzureError

        started = self._monotonic()
        summary = HousekeepingSummary()
        for name, task in self._tasks.items():
            try:
                deleted = task(self._limit)
            except (AzureError, S2SError) as exc:
                code = exc.code if isinstance(exc, S2SError) else type(exc).__name__
                summary.failures[name] = code
                logger.warning(
                    "Housekeeping of %s failed: %s", name, code, extra=dims("housekeeping.failed", kind=name)
                )
                continue
            summary.deleted[name] = deleted
            if deleted >= self._limit:
                summary.more_remaining.append(name)
        summary.duration_seconds = round(self._monotonic() - started, 3)
        logger.info(
            "housekeeping summary %s",
            summary.deleted,
            extra=dims(
                "housekeeping.summary",
                failures=len(summary.failures),
                more_remaining=",".join(summary.more_remaining) or None,
                duration_seconds=summary.duration_seconds,
                measures={f"deleted_{name}": count for name, count in summary.deleted.items()},
            ),
        )
        return summary
