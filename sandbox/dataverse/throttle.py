"""Dataverse service protection for one org (protocol §4, api-limits): concurrent requests, requests per sliding
window and combined execution time per sliding window, per user, answered with 429 + Retry-After; also what a
benchmark needs to judge a client.

The real limits are per user per web server; the sandbox models one web server.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from sandbox.dataverse.errors import CONCURRENCY_LIMIT, EXECUTION_TIME_LIMIT, RATE_LIMIT

DEFAULT_DOP_HINT = 8
# A request that reaches the server just after a 429 went out was usually on the wire already, sent by another
# worker before the client could know. Arrivals this soon after the 429 that opened a Retry-After window are
# not counted as ignoring it; later arrivals inside the window are.
IN_FLIGHT_GRACE_SECONDS = 0.25


@dataclass(frozen=True)
class DataverseLimits:
    max_concurrent: int = 52
    max_requests: int = 6000
    window_seconds: float = 300
    # api-limits: "20 minutes (1,200 seconds)" of combined execution time per user in the 5-minute window.
    max_execution_seconds: float = 1200
    retry_after_seconds: int | None = None  # None: seconds until the window frees (1 for concurrency)
    latency_seconds: float = 0.0  # slept per request, outside every lock, so concurrency is real
    dop_hint: int | None = None  # x-ms-dop-hint; None: DEFAULT_DOP_HINT

    def __post_init__(self) -> None:
        if (
            self.max_concurrent < 1
            or self.max_requests < 1
            or self.window_seconds <= 0
            or self.max_execution_seconds <= 0
        ):
            raise ValueError("limits must be positive")
        if self.latency_seconds < 0 or (self.retry_after_seconds is not None and self.retry_after_seconds < 0):
            raise ValueError("latency and retry-after must not be negative")


@dataclass(frozen=True)
class Refusal:
    """Why a request was throttled: the service error code, its message and the Retry-After seconds."""

    code: str
    message: str
    retry_after: int


@dataclass(frozen=True)
class Admission:
    # True when the user was told to wait (Retry-After), that time has not passed yet, and the request came
    # later than IN_FLIGHT_GRACE_SECONDS after the 429 that opened the wait.
    in_retry_after_window: bool
    refusal: Refusal | None = None


@dataclass
class _UserUsage:
    in_flight: int = 0
    window: deque[float] = field(default_factory=deque)  # arrival times of admitted requests
    executions: deque[tuple[float, float]] = field(default_factory=deque)  # (finished at, seconds it took)
    retry_until: float = 0.0  # monotonic time until which the last Retry-After told the user to wait
    told_at: float = 0.0  # when the 429 that opened the current wait was decided

    def announce(self, now: float, retry_after: int) -> None:
        if now >= self.retry_until:
            self.told_at = now
        self.retry_until = max(self.retry_until, now + retry_after)


class ServiceProtection:
    """Admission control for one org. Thread-safe; call `release` once for every admitted request."""

    def __init__(self, limits: DataverseLimits | None = None) -> None:
        self._lock = threading.Lock()
        self._limits = limits or DataverseLimits()
        self._users: dict[str, _UserUsage] = {}
        self._org_in_flight = 0
        self._peak = 0

    @property
    def limits(self) -> DataverseLimits:
        with self._lock:
            return self._limits

    def configure(self, limits: DataverseLimits) -> None:
        with self._lock:
            self._limits = limits

    @property
    def peak_concurrency(self) -> int:
        """The most requests this org has had in flight at once."""
        with self._lock:
            return self._peak

    def admit(self, user: str, weight: int = 1) -> Admission:
        """Admit one request of `user` (a $batch counts `weight` requests towards the window), or refuse it."""
        now = time.monotonic()
        with self._lock:
            limits = self._limits
            usage = self._users.setdefault(user, _UserUsage())
            late = usage.told_at + IN_FLIGHT_GRACE_SECONDS <= now < usage.retry_until
            if usage.in_flight >= limits.max_concurrent:
                # api-limits: exceeding concurrency fails immediately. The doc gives no Retry-After value
                # for this case; one second is the sandbox's choice unless configured.
                retry_after = limits.retry_after_seconds if limits.retry_after_seconds is not None else 1
                refusal = Refusal(
                    CONCURRENCY_LIMIT,
                    f"Number of concurrent requests exceeded the limit of {limits.max_concurrent}.",
                    retry_after,
                )
                usage.announce(now, retry_after)
                return Admission(late, refusal)
            horizon = now - limits.window_seconds
            while usage.window and usage.window[0] <= horizon:
                usage.window.popleft()
            while usage.executions and usage.executions[0][0] <= horizon:
                usage.executions.popleft()
            spent = sum(seconds for _, seconds in usage.executions)
            if spent >= limits.max_execution_seconds:
                if limits.retry_after_seconds is not None:
                    retry_after = limits.retry_after_seconds
                else:  # until the oldest execution leaves the window
                    retry_after = max(1, math.ceil(usage.executions[0][0] + limits.window_seconds - now))
                # api-limits, "Execution time": -2147015903 (0x80072321). The message is the doc's.
                refusal = Refusal(
                    EXECUTION_TIME_LIMIT,
                    "Combined execution time of incoming requests exceeded limit of "
                    f"{round(limits.max_execution_seconds * 1000):,} milliseconds over time window of "
                    f"{limits.window_seconds:g} seconds. Decrease number of concurrent requests or reduce the "
                    "duration of requests and try again later.",
                    retry_after,
                )
                usage.announce(now, retry_after)
                return Admission(late, refusal)
            if len(usage.window) >= limits.max_requests:
                if limits.retry_after_seconds is not None:
                    retry_after = limits.retry_after_seconds
                else:
                    retry_after = max(1, math.ceil(usage.window[0] + limits.window_seconds - now))
                refusal = Refusal(
                    RATE_LIMIT,
                    f"Number of requests exceeded the limit of {limits.max_requests} over time window of "
                    f"{limits.window_seconds:g} seconds.",
                    retry_after,
                )
                usage.announce(now, retry_after)
                return Admission(late, refusal)
            usage.window.extend([now] * max(1, weight))
            usage.in_flight += 1
            self._org_in_flight += 1
            self._peak = max(self._peak, self._org_in_flight)
            return Admission(late)

    def release(self, user: str, elapsed_seconds: float = 0.0) -> None:
        """End an admitted request that took `elapsed_seconds` (counted towards the execution-time limit)."""
        with self._lock:
            usage = self._users.get(user)
            if usage is None or usage.in_flight == 0:
                raise RuntimeError(f"release without admission for user {user}")
            usage.in_flight -= 1
            self._org_in_flight -= 1
            if elapsed_seconds > 0:
                usage.executions.append((time.monotonic(), elapsed_seconds))

    def remaining_requests(self, user: str) -> int:
        """Requests left in the user's current window (the x-ms-ratelimit-burst-remaining-xrm-requests value)."""
        now = time.monotonic()
        with self._lock:
            usage = self._users.get(user)
            if usage is None:
                return self._limits.max_requests
            horizon = now - self._limits.window_seconds
            while usage.window and usage.window[0] <= horizon:
                usage.window.popleft()
            return max(0, self._limits.max_requests - len(usage.window))
