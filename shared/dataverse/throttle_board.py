"""Retry-After windows shared by every instance of the app, through the ``orgthrottle`` table.

A worker process honours a 429 for all of its own calls to that org (shared.dataverse.governor). The app's other
instances are the same application user to Dataverse, so without telling them they would go on calling the org
inside the window and draw 429s of their own. So the window a 429 opens is also published here, one row per
org host that keeps the latest end, and before calling an org a client adopts any window it finds for it.

Reads come from a snapshot of every open window (one query for all orgs), taken again when it is older than
``refresh_seconds`` by one caller while the others go on with the snapshot they have. With 0, every request
starts from a snapshot taken after the request began. Otherwise another instance may call the org for up to
that long (plus one query) after a 429 it has not seen yet. The instance that got the 429 always keeps its own
window exactly, and a client reads the windows again after any wait, since another instance may have been given
a later one meanwhile.

The board can only add waiting, never hold calls up on its own account. When the table cannot be read or
written, clients carry on with their own windows, a warning is logged at most once a minute, and the board
rests for a while before it tries the table again. Its calls have short timeouts and no retries.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

THROTTLE_TABLE = "orgthrottle"
_PARTITION = "retry-after"
# A published window is capped: one row outlives the process that wrote it, and a call never waits longer
# than its retry budget (DATAVERSE_RETRY_BUDGET_SECONDS, 300 s by default) anyway.
MAX_SHARED_WINDOW_SECONDS = 3600.0
REST_AFTER_FAILURE_SECONDS = 30.0
_WARN_EVERY_SECONDS = 60.0
_WRITE_ATTEMPTS = 4
# Per operation, passed through azure-core: bound a hanging account and leave retrying to the next refresh.
_CALL_OPTIONS: dict[str, Any] = {"connection_timeout": 2, "read_timeout": 2, "retry_total": 0}


def _host(org_url: str) -> str:
    return (urlsplit(org_url).hostname or "").lower()


class ThrottleBoard:
    """Publish and read Retry-After windows per org host, in one Table Storage table shared by all instances."""

    def __init__(
        self,
        table_factory: Callable[[], Any],
        *,
        refresh_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if refresh_seconds < 0:
            raise ValueError("refresh_seconds must not be negative")
        self._table_factory = table_factory
        self._table: Any = None
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._refresh_lock = threading.Lock()  # one query at a time
        self._windows_lock = threading.Lock()  # never held across a call to the table
        self._table_lock = threading.Lock()
        self._windows: dict[str, float] = {}  # org host -> end of its window (epoch seconds)
        self._snapshot_began = -math.inf  # when the query behind `_windows` was sent (monotonic)
        self._snapshot_serial = -1  # which query that was: queries are numbered as they begin
        self._next_serial = 0
        self._resting_until = -math.inf  # after a failure, the table is left alone until then (monotonic)
        self._warned_at = -math.inf
        self.reads = 0
        self.writes = 0
        self.failures = 0

    def remaining(self, org_url: str) -> float:
        """Seconds left in the window published for the org (by any instance); 0 when there is none."""
        asked, next_query = self._monotonic(), self._next_serial
        strict = self._refresh_seconds == 0
        # With a refresh interval, a caller that finds a query under way goes on with the snapshot it has rather
        # than wait for the table; with 0, it waits for a query that began after it asked.
        if self._stale(asked, next_query) and self._refresh_lock.acquire(blocking=strict):
            try:
                if self._stale(asked, next_query):  # no query began after this call asked, or it failed
                    self._refresh()
            finally:
                self._refresh_lock.release()
        end = self._windows.get(_host(org_url))
        return 0.0 if end is None else max(0.0, end - self._clock())

    def publish(self, org_url: str, seconds: float) -> None:
        """Tell every instance that the org asked for ``seconds`` of quiet from now (a 429's Retry-After)."""
        seconds = min(max(0.0, seconds), MAX_SHARED_WINDOW_SECONDS)
        host = _host(org_url)
        end = self._clock() + seconds
        with self._windows_lock:
            self._windows = {**self._windows, host: max(self._windows.get(host, 0.0), end)}
        if self._monotonic() < self._resting_until:
            return
        try:
            self._write_later_end(host, end, seconds)
        except Exception as exc:  # any storage failure: the board is best effort
            self._failed("written", exc)
        else:
            self.writes += 1

    # -- table ---------------------------------------------------------------------------------------------

    def _stale(self, asked: float, next_query: int) -> bool:
        if asked < self._resting_until or self._snapshot_serial >= next_query:
            return False
        return asked - self._snapshot_began >= self._refresh_seconds

    def _get_table(self) -> Any:
        from azure.core.exceptions import HttpResponseError

        with self._table_lock:
            if self._table is None:
                table = self._table_factory()
                # main.bicep creates the table; creating it here serves local work. An identity that may use
                # the table but not create one is answered 403 here, and that must not turn the board off.
                with contextlib.suppress(HttpResponseError):
                    table.create_table(**_CALL_OPTIONS)
                self._table = table
            return self._table

    def _refresh(self) -> None:
        began, serial = self._monotonic(), self._next_serial
        self._next_serial += 1
        now = datetime.fromtimestamp(self._clock(), UTC)
        windows: dict[str, float] = {}
        try:
            entities = self._get_table().query_entities(
                "PartitionKey eq @pk and BlockedUntil gt @now",
                parameters={"pk": _PARTITION, "now": now},
                select=["RowKey", "BlockedUntil"],
                **_CALL_OPTIONS,
            )
            for entity in entities:
                end = entity.get("BlockedUntil")
                if isinstance(end, datetime):
                    windows[str(entity["RowKey"])] = end.timestamp()
        except Exception as exc:  # any storage failure: keep the last snapshot and rest
            self._failed("read", exc)
            return
        with self._windows_lock:
            # Windows this instance published since the query began are kept even if the query missed them.
            for host, end in self._windows.items():
                if end > windows.get(host, 0.0) and end > now.timestamp():
                    windows[host] = end
            self._windows = windows
        self._snapshot_began, self._snapshot_serial = began, serial
        self.reads += 1

    def _write_later_end(self, host: str, end: float, seconds: float) -> None:
        """Store ``end`` for the host unless a later one is there; concurrent writers are settled by ETag."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        table = self._get_table()
        entity = {
            "PartitionKey": _PARTITION,
            "RowKey": host,
            "BlockedUntil": datetime.fromtimestamp(end, UTC),
            "RetryAfterSeconds": float(seconds),
        }
        for _ in range(_WRITE_ATTEMPTS):
            try:
                current = table.get_entity(_PARTITION, host, **_CALL_OPTIONS)
            except ResourceNotFoundError:
                try:
                    table.create_entity(entity, **_CALL_OPTIONS)
                    return
                except ResourceExistsError:
                    continue  # another instance created it first: compare with theirs
            known = current.get("BlockedUntil")
            if isinstance(known, datetime) and known.timestamp() >= end:
                return
            try:
                table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=current.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                    **_CALL_OPTIONS,
                )
                return
            except ResourceModifiedError:
                continue  # changed since read: read again

    def _failed(self, action: str, exc: Exception) -> None:
        self.failures += 1
        now = self._monotonic()
        self._resting_until = now + REST_AFTER_FAILURE_SECONDS
        if now - self._warned_at >= _WARN_EVERY_SECONDS:
            self._warned_at = now
            logger.warning(
                "The shared Retry-After table %s could not be %s (%s); each instance honours only its own "
                "429s for the next %.0f s",
                THROTTLE_TABLE,
                action,
                type(exc).__name__,
                REST_AFTER_FAILURE_SECONDS,
            )
