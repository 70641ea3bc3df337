"""A fanned-out sweep's summary, aggregated per run id in the ``sweepruns`` table.

Partition = run id. ``run``: job, units planned, started/finished, the final summary. ``count|00``…``count|15``:
counter shards (units done and failed, rows, throttle waits), so finishing units do not all contend for one row.
``unit|<key>``: one row per finished unit. A unit is counted in one entity-group transaction that *creates* its row
and updates one shard under its ETag: a unit finished twice (a redelivered message) fails the create and is
counted once; two units racing for a shard retry. The unit that brings done + failed to the planned count creates
``final`` (only one can) and writes the run's one ``sweep summary`` line. ``index`` partition: runs newest first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.errors import S2SError
from shared.jobs.units import RUN_ID
from shared.telemetry import dims

logger = logging.getLogger(__name__)

RUNS_TABLE = "sweepruns"
SHARDS = 16
_INDEX = "index"
_MAX_CONFLICTS = 200


class RunNotFoundError(S2SError):
    code = "run_not_found"


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


@dataclass
class RunStatus:
    run_id: str
    job: str
    planned: int
    done: int = 0
    failed: int = 0
    rows: int = 0
    throttle_waits: int = 0
    carried_over: int = 0  # units left to an earlier run still working on them
    started_at: str = ""
    finished_at: str | None = None
    duration_seconds: float | None = None
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def remaining(self) -> int:
        return max(0, self.planned - self.done - self.failed)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "remaining": self.remaining}


class RunLedger:
    def __init__(self, table: Any, clock: Callable[[], float] = time.time) -> None:
        self._table = table
        self._clock = clock

    def create_table(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._table.create_table()

    def start(self, job: str, run_id: str, planned: int, carried_over: int = 0) -> RunStatus:
        """Record a run before its first message is sent (a unit may finish before the timer returns)."""
        now = self._clock()
        run = {
            "PartitionKey": run_id,
            "RowKey": "run",
            "Job": job,
            "Planned": planned,
            "CarriedOver": carried_over,
            "StartedAt": now,
            "FinishedAt": 0.0,
            "Summary": "",
        }
        shards = [
            (
                "create",
                {"PartitionKey": run_id, "RowKey": f"count|{i:02d}", "Done": 0, "Failed": 0, "Rows": 0, "Waits": 0},
            )
            for i in range(SHARDS)
        ]
        self._table.submit_transaction([("create", run), *shards])
        inverted = 10**13 - int(now * 1000)
        self._table.upsert_entity({"PartitionKey": _INDEX, "RowKey": f"{inverted:013d}|{run_id}", "Job": job})
        status = RunStatus(run_id, job, planned, carried_over=carried_over, started_at=_iso(now))
        if planned == 0:
            self._finish(status, now)
        return status

    def unit_finished(self, run_id: str, unit_key: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._table.get_entity(run_id, f"unit|{unit_key}")
        except ResourceNotFoundError:
            return False
        return True

    def finish_unit(
        self, run_id: str, unit_key: str, *, ok: bool, rows: int, throttle_waits: int, detail: str = ""
    ) -> RunStatus | None:
        """Count a finished unit once. Returns the run's status, or None when the unit was already counted."""
        from azure.core import MatchConditions
        from azure.data.tables import TableTransactionError, UpdateMode

        shard_key = f"count|{zlib.crc32(unit_key.encode()) % SHARDS:02d}"
        unit_row = {
            "PartitionKey": run_id,
            "RowKey": f"unit|{unit_key}",
            "Outcome": "ok" if ok else "failed",
            "Rows": rows,
            "Waits": throttle_waits,
            "Detail": detail[:1000],
            "FinishedAt": self._clock(),
        }
        for _ in range(_MAX_CONFLICTS):
            shard = self._table.get_entity(run_id, shard_key)
            updated = {
                "PartitionKey": run_id,
                "RowKey": shard_key,
                "Done": int(shard["Done"]) + (1 if ok else 0),
                "Failed": int(shard["Failed"]) + (0 if ok else 1),
                "Rows": int(shard["Rows"]) + rows,
                "Waits": int(shard["Waits"]) + throttle_waits,
            }
            condition = {
                "mode": UpdateMode.REPLACE,
                "etag": shard.metadata["etag"],
                "match_condition": MatchConditions.IfNotModified,
            }
            try:
                self._table.submit_transaction([("create", unit_row), ("update", updated, condition)])
                break
            except TableTransactionError as exc:
                if getattr(exc, "error_code", None) == "EntityAlreadyExists":
                    return None
                if getattr(exc, "error_code", None) != "UpdateConditionNotSatisfied":
                    raise
                time.sleep(random.uniform(0, 0.02))  # noqa: S311 - jitter, not security
        else:
            raise S2SError(f"Could not count unit {unit_key} of run {run_id}: the counter stayed contended.")
        status = self.get_status(run_id, with_failures=False)
        if status.remaining == 0 and not status.finished:
            self._finish(status, self._clock())
        return status

    def _finish(self, status: RunStatus, now: float) -> None:
        """Close the run once: whoever creates ``final`` writes the summary row and the summary log line."""
        from azure.core.exceptions import ResourceExistsError

        try:
            self._table.create_entity({"PartitionKey": status.run_id, "RowKey": "final", "At": now})
        except ResourceExistsError:
            return
        run = self._table.get_entity(status.run_id, "run")
        status.finished_at = _iso(now)
        status.duration_seconds = round(now - float(run["StartedAt"]), 3)
        if status.failed:
            status.failures = self.failures(status.run_id)
        summary = {
            "job": status.job,
            "run_id": status.run_id,
            "units_planned": status.planned,
            "units_done": status.done,
            "units_failed": status.failed,
            "units_carried_over": status.carried_over,
            "rows": status.rows,
            "throttle_waits": status.throttle_waits,
            "started_at": status.started_at,
            "finished_at": status.finished_at,
            "duration_seconds": status.duration_seconds,
            "failures": status.failures,
        }
        self._table.update_entity(
            {"PartitionKey": status.run_id, "RowKey": "run", "FinishedAt": now, "Summary": json.dumps(summary)[:30000]}
        )
        # The one structured line per run, for dashboards and alerts (as the single-invocation sweep wrote).
        logger.info(
            "sweep summary %s",
            json.dumps(summary, sort_keys=True),
            extra=dims(
                "sweep.summary",
                job=status.job,
                run_id=status.run_id,
                units_done=status.done,
                units_failed=status.failed,
                rows=status.rows,
                throttle_waits=status.throttle_waits,
                duration_s=status.duration_seconds,
            ),
        )

    def failures(self, run_id: str, limit: int = 50) -> dict[str, str]:
        """{unit key: reason} of the run's failed units (at most ``limit``)."""
        query = f"PartitionKey eq '{run_id}' and Outcome eq 'failed'"
        found: dict[str, str] = {}
        for row in self._table.query_entities(query, results_per_page=limit):
            found[row["RowKey"].removeprefix("unit|")] = str(row.get("Detail") or "")
            if len(found) >= limit:
                break
        return found

    def get_status(self, run_id: str, *, with_failures: bool = True) -> RunStatus:
        """The run's aggregated status from its run row and counter shards. Raises RunNotFoundError."""
        if not RUN_ID.fullmatch(run_id):  # it goes into an OData filter: only the shape new_run_id makes
            raise RunNotFoundError(
                f"No sweep run with id {run_id[:80]!r} (ids look like sync-20261207T101500Z-a1b2c3)."
            )
        rows = list(self._table.query_entities(f"PartitionKey eq '{run_id}' and RowKey lt 'unit|'"))
        run = next((r for r in rows if r["RowKey"] == "run"), None)
        if run is None:
            raise RunNotFoundError(f"No sweep run with id {run_id[:80]!r}.")
        status = RunStatus(
            run_id,
            str(run["Job"]),
            int(run["Planned"]),
            carried_over=int(run.get("CarriedOver") or 0),
            started_at=_iso(float(run["StartedAt"])),
        )
        for row in rows:
            if row["RowKey"].startswith("count|"):
                status.done += int(row["Done"])
                status.failed += int(row["Failed"])
                status.rows += int(row["Rows"])
                status.throttle_waits += int(row["Waits"])
        finished_at = float(run.get("FinishedAt") or 0)
        if finished_at:
            status.finished_at = _iso(finished_at)
            status.duration_seconds = round(finished_at - float(run["StartedAt"]), 3)
        if with_failures and status.failed:
            status.failures = self.failures(run_id)
        return status

    def list_runs(self, limit: int = 10) -> list[str]:
        """Run ids, newest first."""
        runs: list[str] = []
        for row in self._table.query_entities(f"PartitionKey eq '{_INDEX}'", results_per_page=limit):
            runs.append(str(row["RowKey"]).split("|", 1)[1])
            if len(runs) >= limit:
                break
        return runs
