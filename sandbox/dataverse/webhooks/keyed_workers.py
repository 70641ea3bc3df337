"""A small pool of daemon worker threads that runs jobs in submission order per key (one Dataverse org) while
different keys run in parallel. Callers can reserve a place before the job exists, so `wait_idle` also waits
for work that is announced but not submitted yet (asynchronous webhooks queued after the Web API response).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

logger = logging.getLogger(__name__)

Job = Callable[[], None]


class KeyedWorkers:
    """Thread-safe. Workers start on the first submit and again after `stop()`."""

    def __init__(self, workers: int = 4, name: str = "workers") -> None:
        self._size = workers
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._queues: dict[str, deque[Job]] = {}
        self._ready: deque[str] = deque()  # keys with queued jobs and no job running
        self._running: set[str] = set()
        self._outstanding = 0  # queued + running + reserved
        self._threads: list[threading.Thread] = []
        self._generation = 0  # stop() bumps it; a worker of an older generation exits when it is next free

    def reserve(self, count: int = 1) -> None:
        """Announce `count` jobs that `submit(..., reserved=True)` will bring (or `release` will cancel)."""
        with self._cond:
            self._outstanding += count

    def release(self, count: int = 1) -> None:
        with self._cond:
            self._outstanding -= count
            self._cond.notify_all()

    def submit(self, key: str, job: Job, *, reserved: bool = False) -> None:
        with self._cond:
            if not reserved:
                self._outstanding += 1
            queue = self._queues.setdefault(key, deque())
            queue.append(job)
            if key not in self._running and key not in self._ready:
                self._ready.append(key)
            self._ensure_started()
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is queued, running or reserved; False when `timeout` seconds pass first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._outstanding == 0, timeout=timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Let queued work finish for up to `timeout` seconds, drop what is left, and end the threads. A job
        still running then (a slow receiver) is abandoned to its daemon thread.
        """
        if not self.wait_idle(timeout):
            logger.warning("%s: stopping with work outstanding; queued jobs are dropped", self._name)
        with self._cond:
            self._generation += 1
            dropped = sum(len(queue) for queue in self._queues.values())
            self._queues.clear()
            self._ready.clear()
            self._outstanding -= dropped
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=0.5)

    def _ensure_started(self) -> None:
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        while len(self._threads) < self._size:
            thread = threading.Thread(
                target=self._work, args=(self._generation,), name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _work(self, generation: int) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._ready or self._generation != generation)
                if self._generation != generation:
                    return
                key = self._ready.popleft()
                job = self._queues[key].popleft()
                self._running.add(key)
            try:
                job()
            except Exception:
                logger.exception("%s: job for %s failed", self._name, key)
            finally:
                with self._cond:
                    self._running.discard(key)
                    queue = self._queues.get(key)
                    if queue:
                        self._ready.append(key)
                    elif queue is not None:
                        del self._queues[key]
                    self._outstanding -= 1
                    self._cond.notify_all()
