"""A small in-process stand-in for the Functions host's queue listener, for ``jobs run``/``jobs work`` and tests.

It behaves as the host does for the settings in host.json (azure-docs
``articles/azure-functions/functions-bindings-storage-queue.md#host-json``): it takes up to ``batch_size`` messages
at a time and fetches more once the number in flight drops to ``new_batch_threshold``; a message stays invisible
while its function runs (the host renews it: "The queue trigger automatically prevents a function from processing a
queue message multiple times simultaneously", ``functions-bindings-storage-queue-trigger.md``); a message whose
function raised becomes visible again after ``retry_visibility`` seconds (``visibilityTimeout``) and after
``max_dequeue_count`` attempts moves to ``<queue>-poison``. Production never runs this: the host does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

Handler = Callable[[str, int, str], Any]  # (message text, dequeue count, message id) -> outcome


@dataclass
class RunnerStats:
    processed: int = 0
    failed_attempts: int = 0
    moved_to_poison: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


class LocalQueueRunner:
    def __init__(
        self,
        queue: Any,
        handler: Handler,
        *,
        poison_queue: Any = None,
        batch_size: int = 16,
        new_batch_threshold: int = 8,
        lock_seconds: float = 60.0,
        retry_visibility: float = 30.0,
        max_dequeue_count: int = 5,
        renew: bool = True,
    ) -> None:
        self._queue = queue
        self._handler = handler
        self._poison = poison_queue
        self._batch = batch_size
        self._threshold = new_batch_threshold
        self._lock_seconds = lock_seconds
        self._retry_visibility = retry_visibility
        self._max_dequeue = max_dequeue_count
        self._renew = renew  # False only in tests that need a message to reappear while its first attempt runs
        self.stats = RunnerStats()
        self._stats_lock = threading.Lock()

    def _count(self, outcome: str) -> None:
        with self._stats_lock:
            self.stats.processed += 1
            self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1

    def _one(self, message: Any) -> None:
        receipt = [message.pop_receipt]
        done = threading.Event()

        def keep_invisible() -> None:
            while not done.wait(self._lock_seconds / 2):
                try:
                    updated = self._queue.update_message(
                        message.id, receipt[0], visibility_timeout=int(self._lock_seconds)
                    )
                    receipt[0] = updated.pop_receipt
                except Exception:  # deleted or taken by a redelivery: nothing left to renew
                    return

        renewer = threading.Thread(target=keep_invisible, daemon=True) if self._renew else None
        if renewer is not None:
            renewer.start()
        try:
            outcome = self._handler(message.content, int(message.dequeue_count or 1), message.id)
        except Exception as exc:  # the host logs a failed invocation and lets the message reappear
            done.set()
            with self._stats_lock:
                self.stats.failed_attempts += 1
            logger.info(
                "Queue message %s failed (attempt %s): %s", message.id, message.dequeue_count, type(exc).__name__
            )
            self._after_failure(message, receipt[0])
            return
        done.set()
        self._count(str(outcome))
        try:
            self._queue.delete_message(message.id, receipt[0])
        except Exception:  # its visibility ran out and another attempt took it (host: a warning)
            logger.info("Queue message %s was taken by another attempt before it could be deleted", message.id)

    def _after_failure(self, message: Any, receipt: str) -> None:
        try:
            if int(message.dequeue_count or 1) >= self._max_dequeue and self._poison is not None:
                self._poison.send_message(message.content)
                self._queue.delete_message(message.id, receipt)
                with self._stats_lock:
                    self.stats.moved_to_poison += 1
            else:
                self._queue.update_message(message.id, receipt, visibility_timeout=int(self._retry_visibility))
        except Exception:  # it reappears when its visibility runs out anyway
            logger.info("Queue message %s: could not reschedule it; it reappears on its own", message.id)

    def run(
        self,
        *,
        until: Callable[[], bool] | None = None,
        idle_seconds: float = 3.0,
        max_seconds: float = 3600.0,
        poll_seconds: float = 0.2,
    ) -> RunnerStats:
        """Process messages until ``until()`` is true, or (without ``until``) until the queue has held no message
        — visible or not — for ``idle_seconds``; never longer than ``max_seconds``."""
        deadline = time.monotonic() + max_seconds
        in_flight: set[Future[None]] = set()
        idle_since: float | None = None
        with ThreadPoolExecutor(max_workers=self._batch + self._threshold, thread_name_prefix="queue") as pool:
            while time.monotonic() < deadline:
                in_flight = {f for f in in_flight if not f.done()}
                if until is not None and until():
                    break
                received: list[Any] = []
                if len(in_flight) <= self._threshold:
                    received = list(
                        self._queue.receive_messages(
                            max_messages=self._batch, visibility_timeout=int(self._lock_seconds)
                        )
                    )
                for message in received:
                    in_flight.add(pool.submit(self._one, message))
                if received or in_flight:
                    idle_since = None
                elif until is None:
                    if self._queue.get_queue_properties().approximate_message_count:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since >= idle_seconds:
                        break
                if not received:
                    time.sleep(poll_seconds)
            for future in in_flight:
                future.result()
        return self.stats
