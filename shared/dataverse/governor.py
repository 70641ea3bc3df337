"""Per-org admission control: honour Retry-After for every caller of an org, and cap concurrent requests.

Dataverse limits are per user per web server (protocol.md §4): a 429 answered to one thread applies to all of
this worker's calls to that org, so the Retry-After window lives here, shared by every client of the org, and no
request is sent to the org inside it. Concurrency follows the server's ``x-ms-dop-hint``, kept under the
documented limit of 52 concurrent requests.

Pacing: a request-rate 429 (0x80072322) names its limit in the documented message ("Number of requests exceeded
the limit of 6000 over time window of 300 seconds."). Once the governor has read it, it remembers when the
answers to this worker's recent requests to the org came back, and holds a request until the last ``limit``
answers are older than the window. A request reaches the server before its answer comes back and the next one
after it is sent, so the server's window has always slid by then, whatever the delays on the way: the next
window's requests go out when the server will take them instead of costing a 429 and a whole-second Retry-After.
Other workers share the server's count, so a 429 can still come; it is honoured as always and widens the margin.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# The documented concurrency limit is "52 or higher"; stay below it whatever the hint says.
MAX_CONCURRENCY = 50
DEFAULT_CONCURRENCY = 8
# Requests remembered before any limit is known, and the largest limit paced: above it a window is long enough
# (the documented one is 6,000 in 300 s) that an occasional 429 costs little, and the log would cost memory.
PACING_MEMORY = 64
MAX_PACED_REQUESTS = 1000
# Answers are an upper bound on arrivals, so no margin is needed in principle; a small one covers a server whose
# window edge is inclusive, and it doubles after every 429 pacing did not prevent (another worker, say).
PACING_MARGIN_SECONDS = 0.005
MAX_PACING_MARGIN_SECONDS = 1.0


@dataclass(eq=False)
class Ticket:
    """One admitted request: when it was admitted, and when its answer came back (None while in flight)."""

    admitted_at: float
    answered_at: float | None = None
    waited: bool = False  # held back by a Retry-After window or by pacing before it was admitted


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
        self._recent: deque[Ticket] = deque(maxlen=PACING_MEMORY)
        self._rate: tuple[int, float] | None = None  # (requests, window seconds) learned from a 429
        self._margin = PACING_MARGIN_SECONDS
        self._learned_at = 0.0
        self.throttle_waits = 0
        self.pacing_waits = 0
        self.peak_in_flight = 0
        self.withdrawn = 0  # tickets given back unsent (a later shared window turned up while waiting)

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def blocked_for(self) -> float:
        """Seconds left in the current Retry-After window (0 when open)."""
        return max(0.0, self._blocked_until - self._clock())

    @property
    def paced_rate(self) -> tuple[int, float] | None:
        """The request limit and window (seconds) this governor paces to, once a 429 has named them."""
        return self._rate

    def acquire(self, deadline: float) -> Ticket:
        """Wait until the org is not in a Retry-After window, the learned request rate allows another request,
        and a concurrency slot is free.

        ``deadline`` is on this governor's clock. Raises AdmissionTimeout if it passes first. The ticket goes
        back with `release` (and with `refused` after a 429).
        """
        with self._cond:
            waited_for_throttle = waited_for_pace = False
            while True:
                now = self._clock()
                blocked = self._blocked_until - now
                paced = self._pace_free_at() - now
                if blocked <= 0 and paced <= 0 and self._in_flight < self._limit:
                    self._in_flight += 1
                    ticket = Ticket(now, waited=waited_for_throttle or waited_for_pace)
                    self._recent.append(ticket)
                    self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                    if waited_for_throttle:
                        self.throttle_waits += 1
                    elif waited_for_pace:
                        self.pacing_waits += 1
                    return ticket
                if now >= deadline:
                    raise AdmissionTimeout()
                if blocked > 0 or paced > 0:
                    waited_for_throttle = waited_for_throttle or blocked > 0
                    waited_for_pace = waited_for_pace or paced > 0
                    # An answer still in flight (paced is infinite) wakes this wait through release().
                    timeout = min(max(blocked, paced), deadline - now)
                else:
                    timeout = deadline - now
                self._cond.wait(timeout)

    def _pace_free_at(self) -> float:
        if self._rate is None:
            return 0.0
        requests, window = self._rate
        if len(self._recent) < requests:
            return 0.0
        oldest = self._recent[-requests]
        if oldest.answered_at is None:
            return float("inf")  # it may reach the server any moment: wait for its answer
        return oldest.answered_at + window + self._margin

    def answered(self, ticket: Ticket) -> None:
        """The answer to the request of ``ticket`` has begun (status and headers are in): its time counts for
        pacing from now, while the body is still being read and the slot still held."""
        with self._cond:
            if ticket.answered_at is None:
                ticket.answered_at = self._clock()
                self._cond.notify_all()  # a paced waiter waiting on this answer

    def release(self, ticket: Ticket) -> None:
        """The request of ``ticket`` is over (answered, or failed): its slot frees, and its answer time counts
        from now unless `answered` has already set it."""
        with self._cond:
            self._in_flight -= 1
            if ticket.answered_at is None:
                ticket.answered_at = self._clock()
            self._cond.notify_all()  # a slot waiter, or a paced waiter waiting on this answer

    def withdraw(self, ticket: Ticket) -> None:
        """The request of ``ticket`` will not be sent after all: its slot frees and pacing forgets it."""
        with self._cond:
            self._in_flight -= 1
            self.withdrawn += 1
            for i in range(len(self._recent) - 1, -1, -1):
                if self._recent[i] is ticket:
                    del self._recent[i]
                    break
            self._cond.notify_all()

    def block_for(self, seconds: float) -> None:
        """Record a Retry-After: nobody calls the org until it passes (an earlier, longer window is kept)."""
        with self._cond:
            self._blocked_until = max(self._blocked_until, self._clock() + max(0.0, seconds))

    def refused(self, ticket: Ticket, rate: tuple[int, float] | None = None) -> None:
        """The request of ``ticket`` was answered 429: the server did not count it, so neither does the pacing
        log. ``rate`` is the (requests, window seconds) limit the 429 named, if it named one.

        A 429 for a request sent while pacing to that same limit means pacing was not enough (other workers
        count against the same limit, or the server counts its window differently): the margin doubles, up to a
        cap.
        """
        with self._cond:
            for i in range(len(self._recent) - 1, -1, -1):
                if self._recent[i] is ticket:
                    del self._recent[i]
                    break
            if rate is None:
                return
            requests, window = rate
            if not (0 < requests <= MAX_PACED_REQUESTS) or window <= 0:
                return
            if self._rate == rate:
                if ticket.admitted_at >= self._learned_at:
                    self._margin = min(self._margin * 2, MAX_PACING_MARGIN_SECONDS)
                    self._learned_at = self._clock()
                return
            self._rate = rate
            self._learned_at = self._clock()
            self._margin = PACING_MARGIN_SECONDS
            if requests > (self._recent.maxlen or 0):
                self._recent = deque(self._recent, maxlen=requests)

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
