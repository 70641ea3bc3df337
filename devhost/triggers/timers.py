"""Timer triggers on their NCRONTAB schedules, plus firing one now.

As on the host, one timer never overlaps itself: a firing due while the previous run of the same function still
runs is skipped (learn.microsoft.com/azure/azure-functions/functions-bindings-timer#usage). `runOnStartup`
fires once at start. The host's schedule monitor (`useMonitor`, which catches up a run missed while the app was
stopped) needs the host's storage-backed status records: the devhost does not keep them, so `past_due` is true
only when a firing starts more than a second late.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from azure.functions.timer import TimerRequest

from devhost.invocation import EventLoopThread
from devhost.triggers.functions import TimerFunction, invoke

logger = logging.getLogger(__name__)

_LATE_SECONDS = 1.0


class TimerScheduler:
    """Runs every timer function on its schedule on its own threads until `stop()`."""

    def __init__(
        self,
        timers: list[TimerFunction],
        loop: EventLoopThread,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        on_outcome: Callable[[str, str], None] | None = None,
    ) -> None:
        self._timers = {timer.name: timer for timer in timers}
        self._loop = loop
        self._now = now
        self._on_outcome = on_outcome
        self._busy = {name: threading.Lock() for name in self._timers}
        self._last: dict[str, dt.datetime] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._runs: set[threading.Thread] = set()
        self._runs_lock = threading.Lock()

    def next_firing(self, name: str) -> dt.datetime:
        return self._timers[name].schedule.next_after(self._now())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="devhost-timers", daemon=True)
        self._thread.start()
        for timer in self._timers.values():
            if timer.run_on_startup:
                self.fire(timer.name)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
        with self._runs_lock:
            runs = list(self._runs)
        for run in runs:
            run.join(timeout=timeout)

    def fire(self, name: str, *, due: dt.datetime | None = None) -> bool:
        """Start a run of timer `name` in the background; False when it is already running. Raises KeyError for
        a function that is not a timer here."""
        timer = self._timers[name]
        lock = self._busy[name]
        if not lock.acquire(blocking=False):
            logger.warning("timer %s is still running; this firing is skipped", name)
            return False
        thread = threading.Thread(target=self._run_one, args=(timer, lock, due), name=f"timer-{name}", daemon=True)
        with self._runs_lock:
            self._runs.add(thread)
        thread.start()
        return True

    def _run(self) -> None:
        upcoming = {name: timer.schedule.next_after(self._now()) for name, timer in self._timers.items()}
        while not self._stop.is_set() and upcoming:
            name, due = min(upcoming.items(), key=lambda item: item[1])
            wait = (due - self._now()).total_seconds()
            if wait > 0:
                self._stop.wait(min(wait, 1.0))  # re-check often: the clock may jump, stop() must be quick
                continue
            self.fire(name, due=due)
            upcoming[name] = self._timers[name].schedule.next_after(max(due, self._now()))

    def _run_one(self, timer: TimerFunction, lock: threading.Lock, due: dt.datetime | None) -> None:
        started = self._now()
        late = due is not None and (started - due).total_seconds() > _LATE_SECONDS
        status = {
            "Last": self._last.get(timer.name, started).isoformat(),
            "Next": timer.schedule.next_after(started).isoformat(),
            "LastUpdated": started.isoformat(),
        }
        request = TimerRequest(past_due=late, schedule_status=status, schedule={"AdjustForDST": True})
        outcome = "done"
        try:
            invoke(timer, request, self._loop)
            logger.info("timer %s ran", timer.name)
        except Exception:
            outcome = "failed"
            logger.exception("timer function %s failed", timer.name)
        finally:
            self._last[timer.name] = started
            lock.release()
            with self._runs_lock:
                self._runs.discard(threading.current_thread())
            if self._on_outcome is not None:
                self._on_outcome(timer.name, outcome)
