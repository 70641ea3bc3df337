"""The queue's half of a fanned-out sweep: what one ``sweep-units`` message does.

A slice from the timer is expanded into one message per unit. A unit message: skipped if its run already counted
the unit (a redelivery); put back for later if another worker holds the unit's lease; otherwise worked under the
lease until done or until the time budget, when its checkpoint is saved and a continuation message is sent instead
of holding the instance. A failure is raised so the host retries it (after host.json ``visibilityTimeout``), except
on the last attempt (``dequeue_count`` reaching the host's ``maxDequeueCount``): then the unit goes to the poison
queue with its reason, is recorded on the tenant's registry entry and counted as failed — it never blocks the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shared.errors import S2SError
from shared.jobs.fanout import UnitHistory
from shared.jobs.leases import LeaseHeldError, LeaseLostError, UnitLease
from shared.jobs.runs import RunLedger
from shared.jobs.sweeps import explain_failure
from shared.jobs.units import InvalidUnitMessageError, SweepUnit, UnitResult, decode_units, encode_units
from shared.telemetry import dims

logger = logging.getLogger(__name__)

MAX_DEFERRALS = 50  # a unit put back this often (its lease never came free) is counted as failed
# A leased unit is looked at again after this long (or when the lease would expire, if sooner): its holder usually
# releases it well before the lease runs out. 50 deferrals x 30 s covers a holder's continuation chain of 25 min.
DEFER_SECONDS = 30


# (unit, past_deadline, lease) -> result; raises on failure.
UnitWork = Callable[[SweepUnit, Callable[[], bool], UnitLease], UnitResult]


class SweepWorker:
    def __init__(
        self,
        *,
        queue: Any,
        poison_queue: Any,
        ledger: RunLedger,
        history: UnitHistory,
        lease_table: Any,
        work: dict[str, UnitWork],
        record_failure: Callable[[SweepUnit, str], None],
        max_dequeue_count: int,
        lease_seconds: float,
        time_budget_seconds: float,
        defer_seconds: float = DEFER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = queue
        self._poison = poison_queue
        self._ledger = ledger
        self._history = history
        self._lease_table = lease_table
        self._work = work
        self._record_failure = record_failure
        self._max_dequeue = max_dequeue_count
        self._lease_seconds = lease_seconds
        self._budget = time_budget_seconds
        self._defer_seconds = defer_seconds
        self._clock = clock

    def handle(self, text: str, dequeue_count: int, message_id: str | None = None) -> str:
        """Process one message. Returns "expanded", "duplicate", "deferred", "continued", "done", "failed" or
        "poisoned"; raises to have the host try the message again."""
        try:
            units, is_slice = decode_units(text)
        except InvalidUnitMessageError as exc:
            self._to_poison({"message": text[:2000]}, exc.message, dequeue_count)
            logger.error("Sweep message %s poisoned: %s", message_id, exc.message)
            return "poisoned"
        if is_slice:
            return self._expand(units)
        unit = units[0]
        if self._ledger.unit_finished(unit.run_id, unit.key):
            return "duplicate"
        lease = UnitLease(
            self._lease_table,
            unit.tenant_id,
            f"{unit.job}|{unit.key.split('|', 1)[1]}",
            owner=uuid.uuid4().hex,
            seconds=self._lease_seconds,
        )
        try:
            lease.acquire(unit.run_id)
        except LeaseHeldError as held:
            return self._defer(unit, held)
        deadline = self._clock() + self._budget
        try:
            result = self._work[unit.job](unit, lambda: self._clock() >= deadline, lease)
        except LeaseLostError as exc:
            # Another worker runs the unit now; its attempt will count it. This one stops without a trace.
            logger.warning("Sweep unit %s of %s: %s", unit.key, unit.run_id, exc.message)
            return "duplicate"
        except Exception as exc:
            lease.release()
            return self._failed(unit, exc, dequeue_count)
        lease.release()
        if not result.finished:
            self._queue.send_message(encode_units([unit.continued(result.rows, result.throttle_waits)]))
            logger.info(
                "Sweep unit %s of %s paused by the time budget after segment %d; continuation queued",
                unit.key,
                unit.run_id,
                unit.segment,
                extra=dims("sweep.unit_continued", tenant_id=unit.tenant_id, run_id=unit.run_id, job=unit.job),
            )
            return "continued"
        rows, waits = unit.rows + result.rows, unit.throttle_waits + result.throttle_waits
        if not result.ok:
            logger.warning(
                "%s failed for tenant %s: %s",
                unit.job,
                unit.tenant_id,
                result.detail[:500],
                extra=dims("sweep.tenant_failed", tenant_id=unit.tenant_id, job=unit.job, detail=result.detail[:500]),
            )
        self._count(unit, ok=result.ok, rows=rows, throttle_waits=waits, detail=result.detail)
        return "done" if result.ok else "failed"

    def _expand(self, units: list[SweepUnit]) -> str:
        self._history.mark_pending(units)
        for unit in units:
            self._queue.send_message(encode_units([unit]))
        return "expanded"

    def _defer(self, unit: SweepUnit, held: LeaseHeldError) -> str:
        if unit.deferrals >= MAX_DEFERRALS:
            reason = f"unit_leased: another worker held the unit through {MAX_DEFERRALS} deferrals"
            self._count(unit, ok=False, rows=unit.rows, throttle_waits=unit.throttle_waits, detail=reason)
            return "failed"
        delay = max(1, math.ceil(min(held.remaining + 1, self._defer_seconds)))
        self._queue.send_message(encode_units([unit.deferred()]), visibility_timeout=delay)
        logger.info(
            "Sweep unit %s of %s is leased by another worker; put back for %d s",
            unit.key,
            unit.run_id,
            delay,
            extra=dims("sweep.unit_deferred", tenant_id=unit.tenant_id, run_id=unit.run_id, job=unit.job),
        )
        return "deferred"

    def _failed(self, unit: SweepUnit, exc: Exception, dequeue_count: int) -> str:
        code, message = explain_failure(exc)
        reason = f"{code}: {message}"[:500]
        log_extra = dims(
            "sweep.tenant_failed",
            tenant_id=unit.tenant_id,
            org=unit.org_url or None,
            correlation_id=getattr(exc, "correlation_id", None),
            client_request_id=getattr(exc, "client_request_id", None),
            service_request_id=getattr(exc, "service_request_id", None),
            job=unit.job,
            run_id=unit.run_id,
            attempt=dequeue_count,
            error_code=code,
            detail=reason,
        )
        if dequeue_count < self._max_dequeue:
            logger.warning(
                "%s attempt %d failed for tenant %s (the host tries again): %s",
                unit.job,
                dequeue_count,
                unit.tenant_id,
                reason,
                exc_info=not isinstance(exc, S2SError),
                extra=log_extra,
            )
            raise exc
        logger.error(
            "%s failed for tenant %s after %d attempts; unit poisoned: %s",
            unit.job,
            unit.tenant_id,
            dequeue_count,
            reason,
            exc_info=not isinstance(exc, S2SError),
            extra=log_extra,
        )
        self._to_poison({"message": json.loads(encode_units([unit]))}, reason, dequeue_count)
        try:
            self._record_failure(unit, reason)
        except Exception:
            logger.exception("Could not record the %s failure of tenant %s", unit.job, unit.tenant_id)
        self._count(unit, ok=False, rows=unit.rows, throttle_waits=unit.throttle_waits, detail=reason)
        return "poisoned"

    def _count(self, unit: SweepUnit, *, ok: bool, rows: int, throttle_waits: int, detail: str) -> None:
        """The unit is finished: counted once in its run, and its last attempt (and success) kept for fairness."""
        self._ledger.finish_unit(unit.run_id, unit.key, ok=ok, rows=rows, throttle_waits=throttle_waits, detail=detail)
        self._history.mark_finished(unit, ok=ok)

    def _to_poison(self, body: dict[str, Any], reason: str, dequeue_count: int) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._poison.create_queue()
        poisoned = {
            **body,
            "poison_reason": reason[:2000],
            "poisoned_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "dequeue_count": dequeue_count,
        }
        self._poison.send_message(json.dumps(poisoned, separators=(",", ":")))
