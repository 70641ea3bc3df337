"""Per-org admission control: honour Retry-After for every caller of an org, and cap concurrent requests.

Dataverse limits are per user per web server (protocol.md §4): a 429 answered to one thread applies to all of
this worker's calls to that org, so the Retry-After window lives here, shared by every client of the org, and no
request is sent to the org inside it. Concurrency follows the server's ``x-ms-dop-hint``, kept under the
documented limit of 52 concurrent requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# The documented concurrency limit is "52 or higher"; stay below it whatever the hint says.
MAX_CONCURRENCY = 50
DEFAULT_CONCURRENCY = 8


class AdmissionTimeout(Exception):
    """The caller's deadline passed while waiting for a slot or for a Retry-After window to close."""


class OrgGovernor:
    def __init__(
        self,
        *,
        initial_limit: int = DEFAULT_CONCURRENCY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._limit = max(1, min(initial_limit, MAX_CONCURRENCY))
        self._in_flight = 0
        self._blocked_until = 0.0
        self.throttle_waits = 0
        self.peak_in_flight = 0

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def blocked_for(self) -> float:
        """Seconds left in the current Retry-After window (0 when open)."""
        return max(0.0, self._blocked_until - self._clock())

    def acquire(self, deadline: float) -> None:
        """Wait until the org is not in a Retry-After window and a concurrency slot is free.

        ``deadline`` is on this governor's clock. Raises AdmissionTimeout if it passes first.
        """
        with self._cond:
            waited_for_throttle = False
            while True:
                now = self._clock()
                blocked = self._blocked_until - now
                if blocked <= 0 and self._in_flight < self._limit:
                    self._in_flight += 1
                    self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                    if waited_for_throttle:
                        self.throttle_waits += 1
                    return
                if now >= deadline:
                    raise AdmissionTimeout()
                if blocked > 0:
                    waited_for_throttle = True
                    timeout = min(blocked, deadline - now)
                else:
                    timeout = deadline - now
                self._cond.wait(timeout)

    def release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify()

    def block_for(self, seconds: float) -> None:
        """Record a Retry-After: nobody calls the org until it passes (an earlier, longer window is kept)."""
        with self._cond:
            self._blocked_until = max(self._blocked_until, self._clock() + max(0.0, seconds))

    def apply_dop_hint(self, hint: str | None) -> None:
        """Follow the server's recommended degree of parallelism (``x-ms-dop-hint``), capped under 52."""
        if not hint:
            return
        try:
            value = int(hint)
        except ValueError:
            return
        new_limit = max(1, min(value, MAX_CONCURRENCY))
        if new_limit != self._limit:
            with self._cond:
                grew = new_limit > self._limit
                self._limit = new_limit
                if grew:
                    self._cond.notify_all()


class GovernorRegistry:
    """One governor per org URL for the whole worker process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._governors: dict[str, OrgGovernor] = {}

    def all(self) -> list[OrgGovernor]:
        with self._lock:
            return list(self._governors.values())

    def for_org(self, org_url: str) -> OrgGovernor:
        with self._lock:
            governor = self._governors.get(org_url)
            if governor is None:
                governor = OrgGovernor(clock=self._clock)
                self._governors[org_url] = governor
            return governor
