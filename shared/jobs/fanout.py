"""The timer's half of a fanned-out sweep: list the units, order them, record the run, enqueue them in slices.

Fairness: units are ordered by their last success, oldest first (never succeeded first of all), so a unit that did
not finish in one interval — its last success is the oldest — goes out first in the next. A unit still pending
from an earlier run (its message or continuation still queued or running) is not enqueued again: it is counted as
carried over, so a sweep that does not fit its interval does not pile a second copy of every unit onto the queue.
``sweepunits`` (partition = job, row = unit key) holds each unit's last success and the run it is pending in.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.jobs.runs import RunLedger
from shared.jobs.units import SLICE_SIZE, SweepUnit, encode_units
from shared.telemetry import dims
from shared.tenants.registry import TenantStatus

logger = logging.getLogger(__name__)

UNITS_TABLE = "sweepunits"
# A unit pending longer than this is scheduled again: its message was lost (it expired after the Queue service's
# 7-day default time-to-live, or a worker died between poisoning and recording it). Far above any continuation chain.
PENDING_STALE_SECONDS = 6 * 3600
HEALTH_STATUSES = (
    TenantStatus.ACTIVE,
    TenantStatus.AWAITING_APPLICATION_USER,
    TenantStatus.CONSENTED,
    TenantStatus.CONSENT_REVOKED,
    TenantStatus.FAILED,
)


@dataclass(frozen=True)
class UnitRecord:
    last_success: float = 0.0
    pending_run: str = ""
    pending_since: float = 0.0


class UnitHistory:
    def __init__(self, table: Any, clock: Callable[[], float] = time.time) -> None:
        self._table = table
        self._clock = clock

    def create_table(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._table.create_table()

    def all(self, job: str) -> dict[str, UnitRecord]:
        """Every unit of the job seen so far (one partition query, 1,000 rows a page)."""
        select = ["RowKey", "LastSuccess", "PendingRun", "PendingSince"]
        return {
            row["RowKey"]: UnitRecord(
                float(row.get("LastSuccess") or 0),
                str(row.get("PendingRun") or ""),
                float(row.get("PendingSince") or 0),
            )
            for row in self._table.query_entities(f"PartitionKey eq '{job}'", select=select, results_per_page=1000)
        }

    def mark_pending(self, units: list[SweepUnit]) -> None:
        """Record that these units have a message out (one transaction: a slice is one job, ≤ 100 units)."""
        from azure.data.tables import UpdateMode

        now = self._clock()
        operations = [
            (
                "upsert",
                {"PartitionKey": u.job, "RowKey": u.key, "PendingRun": u.run_id, "PendingSince": now},
                {"mode": UpdateMode.MERGE},
            )
            for u in units
        ]
        for start in range(0, len(operations), 100):
            self._table.submit_transaction(operations[start : start + 100])

    def mark_finished(self, unit: SweepUnit, *, ok: bool) -> None:
        from azure.data.tables import UpdateMode

        now = self._clock()
        row: dict[str, Any] = {"PartitionKey": unit.job, "RowKey": unit.key, "PendingRun": "", "LastAttempt": now}
        if ok:
            row["LastSuccess"] = now
        self._table.upsert_entity(row, mode=UpdateMode.MERGE)


@dataclass(frozen=True)
class ScheduledRun:
    run_id: str
    job: str
    planned: int
    carried_over: int
    messages: int
    seconds: float


def new_run_id(job: str, now: float) -> str:
    """``<job>-<UTC time>-<6 hex>``: sortable by time, unique per start."""
    return f"{job}-{datetime.fromtimestamp(now, UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def order_units(units: Iterable[SweepUnit], history: dict[str, UnitRecord]) -> list[SweepUnit]:
    """Oldest last success first (never succeeded: first of all); the unit key breaks ties, so the order is stable."""
    return sorted(units, key=lambda u: (history.get(u.key, UnitRecord()).last_success, u.key))


class SweepScheduler:
    def __init__(
        self,
        *,
        registry: Any,
        history: UnitHistory,
        ledger: RunLedger,
        queue: Any,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._history = history
        self._ledger = ledger
        self._queue = queue
        self._clock = clock

    def _units(self, job: str, run_id: str, tenant_id: str | None) -> list[SweepUnit]:
        registry = self._registry
        if job == "sync":
            tenants = (
                [registry.get_tenant(tenant_id)]
                if tenant_id
                else registry.iter_tenants(status=TenantStatus.ACTIVE, page_size=1000)
            )
            return [SweepUnit("sync", run_id, t.tenant_id, org) for t in tenants for org in t.active_org_urls]
        if tenant_id:
            return [SweepUnit("health", run_id, registry.get_tenant(tenant_id).tenant_id)]
        wanted = set(HEALTH_STATUSES)
        return [
            SweepUnit("health", run_id, t.tenant_id)
            for t in registry.iter_tenants(page_size=1000)
            if t.status in wanted
        ]

    def start(self, job: str, tenant_id: str | None = None) -> ScheduledRun:
        """Plan and enqueue one run of ``job`` ("sync" or "health"); with ``tenant_id``, only that tenant (pending
        or not: an operator asked for it). Returns what was scheduled."""
        started = time.perf_counter()
        now = self._clock()
        run_id = new_run_id(job, now)
        history = self._history.all(job)
        units, carried = [], 0
        for unit in self._units(job, run_id, tenant_id):
            record = history.get(unit.key)
            pending = record is not None and record.pending_run and now - record.pending_since < PENDING_STALE_SECONDS
            if pending and tenant_id is None:
                carried += 1
                continue
            units.append(unit)
        ordered = order_units(units, history)
        self._ledger.start(job, run_id, len(ordered), carried)
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._queue.create_queue()
        slices = [ordered[i : i + SLICE_SIZE] for i in range(0, len(ordered), SLICE_SIZE)]
        for piece in slices:  # in order: the queue is not strictly FIFO, but close to it
            self._queue.send_message(encode_units(piece, is_slice=True))
        scheduled = ScheduledRun(
            run_id, job, len(ordered), carried, len(slices), round(time.perf_counter() - started, 3)
        )
        logger.info(
            "Sweep %s scheduled: %d units in %d messages, %d carried over from earlier runs (%.2f s)",
            run_id,
            scheduled.planned,
            scheduled.messages,
            carried,
            scheduled.seconds,
            extra=dims("sweep.scheduled", job=job, run_id=run_id, units=scheduled.planned, carried_over=carried),
        )
        return scheduled
