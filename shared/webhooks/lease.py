"""Keeping a claimed webhook event's lease alive while its handlers run: a background renewal pushes ``LeaseUntil``
out every third of the lease with a write fenced by the claim's latest ETag, so a second worker finds the event busy
instead of running its handlers again, and the processor's final ``complete``/``release`` fence on that ETag.

``Claim`` stays immutable. ``LeaseRenewal`` is the one mutable holder: each renewal's write returns a new Claim (the
store's ``renew``), which replaces the held one under the renewal's lock; ``stop()`` waits for a renewal in flight and
hands back the latest. A renewal refused because the row changed (the lease ran out and another worker took the
event, or an operator replayed it) stops renewing and leaves the held claim as it was, so the final write is refused
too (ClaimLostError → ``superseded``). A storage failure is logged with the event key and tried again at the next
tick, never raised into the handler; as its write may have been made, the next tick (or ``stop()``) first reads the row
to learn the ETag (``WebhookStore.confirm_renewal``). Renewal ends on every exit of the ``with`` block and after
MAX_HOLD_SECONDS.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from shared.webhooks.store import PROCESSING_LEASE_SECONDS, Claim, ClaimLostError, WebhookStore

logger = logging.getLogger(__name__)

# A third of the lease: a renewal that fails (storage unreachable for a moment) is tried twice more before the lease
# it was extending runs out.
RENEW_EVERY_SECONDS = PROCESSING_LEASE_SECONDS / 3
# No renewal extends the lease past this long after the claim. A handler that needs longer is hung, not slow: the
# longest honest run is a few Dataverse calls each retried for up to DATAVERSE_RETRY_BUDGET_SECONDS (300 s by
# default), and host.json's functionTimeout (10 min) ends the invocation first. What becomes of a timed-out
# invocation's Python thread is the host's business (not verified here), and functionTimeout may be raised: either
# way this bound keeps a stuck handler from holding the event for ever. Once the lease it reached runs out, the
# message's redelivery (or a duplicate) takes the event over.
MAX_HOLD_SECONDS = 4 * PROCESSING_LEASE_SECONDS
THREAD_NAME = "webhook-lease-renewal"


class Scheduled(Protocol):
    """A pending tick (threading.Timer's shape): ``cancel`` before it fires; ``join`` waits for its thread."""

    def cancel(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


# (delay in seconds, action) -> the pending tick. Tests pass one driven by a fake clock.
Schedule = Callable[[float, Callable[[], None]], Scheduled]


def timer_schedule(delay: float, action: Callable[[], None]) -> Scheduled:
    """Run ``action`` once on a daemon thread after ``delay`` seconds (a daemon never keeps the worker alive)."""
    timer = threading.Timer(delay, action)
    timer.daemon = True
    timer.name = THREAD_NAME
    timer.start()
    return timer


class LeaseRenewal:
    """Renews ``claim``'s lease while the ``with`` block runs; ``claim`` is the latest hold, to fence the final write.

    The renewal runs on a chain of timers, one tick at a time: a tick holds the lock while it writes, and schedules
    the next only when it ends. The table client is shared with the handler's thread (Azure SDK clients are
    thread-safe: learn.microsoft.com/dotnet/azure/sdk/thread-safety states it for the SDK's client objects).
    """

    def __init__(
        self,
        store: WebhookStore,
        claim: Claim,
        *,
        every: float = RENEW_EVERY_SECONDS,
        max_hold: float = MAX_HOLD_SECONDS,
        schedule: Schedule = timer_schedule,
    ) -> None:
        if not claim.granted:
            raise ValueError(f"Only a granted claim can be renewed (this one was {claim.reason!r}).")
        self._store = store
        self._every = every
        self._max_hold = max_hold
        self._schedule = schedule
        # The claim was written with a full lease: it started PROCESSING_LEASE_SECONDS before its end.
        self._not_after = claim.lease_until - PROCESSING_LEASE_SECONDS + max_hold
        self._lock = threading.Lock()
        self._claim = claim
        self._stopped = False
        self._unconfirmed: float | None = None  # the lease a failed renewal may or may not have written
        self._timers: list[Scheduled] = []
        self.renewals = 0  # writes that extended the lease
        self.lost = False  # a renewal found the row changed: the event is no longer this worker's

    @property
    def claim(self) -> Claim:
        with self._lock:
            return self._claim

    def __enter__(self) -> LeaseRenewal:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        with self._lock:
            if not self._stopped and not self._timers:
                self._timers.append(self._schedule(self._every, self._tick))

    def stop(self) -> Claim:
        """End the renewal: no renewal writes after this returns. Returns the latest claim.

        A renewal whose answer was lost is settled first (one read), so the final write fences on the right ETag; if
        that read fails too, the claim is left as it was."""
        with self._lock:
            self._stopped = True
            timers, self._timers = self._timers, []
            if self._unconfirmed is not None:
                try:
                    self._confirm()
                except Exception as exc:  # the final write meets the same storage and reports it
                    self._warn_failed(exc, "the final check")
        current = threading.current_thread()
        for timer in timers:
            timer.cancel()
        for timer in timers:
            if not (isinstance(timer, threading.Thread) and timer is current):
                timer.join()  # a tick that fired meanwhile finds the renewal stopped and returns
        return self.claim

    def _confirm(self) -> None:
        """Called with the lock held, after a renewal that failed without a clear answer."""
        assert self._unconfirmed is not None
        self._claim = self._store.confirm_renewal(self._claim, self._unconfirmed)
        self._unconfirmed = None

    def _tick(self) -> None:
        with self._lock:
            if self._stopped:
                return
            key = self._claim.key
            try:
                if self._unconfirmed is not None:
                    self._confirm()
                until = min(self._store.now() + PROCESSING_LEASE_SECONDS, self._not_after)
                if until <= self._claim.lease_until:
                    self._stop_at_the_bound(key)
                    return
                try:
                    self._claim = self._store.renew(self._claim, until)
                except ClaimLostError:
                    raise
                except Exception:
                    self._unconfirmed = until  # the write may have been made: the next tick reads the row first
                    raise
            except ClaimLostError:
                self._stopped = True
                self.lost = True
                # The key only, never the payload.
                logger.warning(
                    "Lease of webhook event %s lost (the event row changed since this worker's last write): "
                    "renewal stopped, this worker's final write will be refused",
                    key,
                    extra={"event_key": key},
                )
                return
            except Exception as exc:
                # Not the handler's business: the lease still runs for up to two more ticks.
                self._warn_failed(exc, "a renewal")
            else:
                self.renewals += 1
                if self._claim.lease_until >= self._not_after:
                    self._stop_at_the_bound(key)
                    return
            self._timers.append(self._schedule(self._every, self._tick))

    def _stop_at_the_bound(self, key: str) -> None:
        """Called with the lock held: the lease reached MAX_HOLD_SECONDS after the claim."""
        self._stopped = True
        logger.warning(
            "Webhook event %s held for the longest renewal allows (%.0f s): its lease is not renewed again and runs "
            "out in %.0f s",
            key,
            self._max_hold,
            max(self._claim.lease_until - self._store.now(), 0.0),
            extra={"event_key": key},
        )

    def _warn_failed(self, exc: Exception, step: str) -> None:
        # The exception's type, not its text: nothing from the request or the payload reaches the log.
        then = "the final write settles it" if self._stopped else "tried again at the next tick"
        logger.warning(
            "Lease renewal of webhook event %s failed (%s at %s): %s",
            self._claim.key,
            type(exc).__name__,
            step,
            then,
            extra={"event_key": self._claim.key},
        )
