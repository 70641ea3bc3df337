"""A queue trigger's listener, the way the Functions host's queue extension runs one against Azure Storage (here
Azurite): fetch a batch, run the function for each message in parallel, delete a message once its function
returns, make a failed one visible again after `visibilityTimeout`, and move it to `<queue>-poison` once it has
failed `maxDequeueCount` times (learn.microsoft.com/azure/azure-functions/
functions-bindings-storage-queue-trigger#poison-messages, #concurrency, #polling-algorithm).

Messages are base64 text, the extension's default `messageEncoding`. While a function runs its message stays
invisible for `functionTimeout`, so nothing else takes it; the host renews that lease, the devhost does not need
to (a function past its timeout is a bug the real host would also report).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.functions.queue import QueueMessage

from devhost.invocation import EventLoopThread
from devhost.triggers.functions import QueueFunction, invoke
from devhost.triggers.host_options import QueueOptions

logger = logging.getLogger(__name__)

POISON_SUFFIX = "-poison"
_FIRST_IDLE_WAIT = 0.1  # seconds; doubles (with jitter) while the queue stays empty, up to maxPollingInterval
_AFTER_MESSAGES_WAIT = 0.05  # the host waits 2 s; a development loop wants a change to show at once

Outcome = Callable[[str, str, str], None]  # (function, message id, "done" | "retry" | "poison")


class QueueListener:
    """Polls one queue for one function until `stop()`. `queue_client_factory(queue_name)` returns an
    azure.storage.queue.QueueClient without a message encode/decode policy (this class decodes base64 itself, so
    one malformed message cannot break a whole batch).
    """

    def __init__(
        self,
        function: QueueFunction,
        queue_client_factory: Callable[[str], Any],
        options: QueueOptions,
        loop: EventLoopThread,
        on_outcome: Outcome | None = None,
    ) -> None:
        self.function = function
        self._factory = queue_client_factory
        self._options = options
        self._loop = loop
        self._on_outcome = on_outcome
        self._queue: Any = None
        self._poison: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self._in_flight_changed = threading.Condition()
        self._pool = ThreadPoolExecutor(
            max_workers=options.batch_size + options.new_batch_threshold,
            thread_name_prefix=f"queue-{function.name}",
        )

    @property
    def poison_queue_name(self) -> str:
        return self.function.queue_name + POISON_SUFFIX

    def start(self) -> None:
        self._queue = self._factory(self.function.queue_name)
        self._poison = self._factory(self.poison_queue_name)
        _create_if_missing(self._queue)
        self._thread = threading.Thread(target=self._poll, name=f"listener-{self.function.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop fetching; invocations under way finish (up to `timeout` seconds)."""
        self._stop.set()
        with self._in_flight_changed:
            self._in_flight_changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
        self._pool.shutdown(wait=True, cancel_futures=False)

    # -- polling --------------------------------------------------------------------------------------

    def _poll(self) -> None:
        idle_wait = _FIRST_IDLE_WAIT
        options = self._options
        while not self._stop.is_set():
            # The host fetches a new batch only once the messages in flight drop to newBatchThreshold.
            with self._in_flight_changed:
                while self._in_flight > options.new_batch_threshold and not self._stop.is_set():
                    self._in_flight_changed.wait(0.5)
            if self._stop.is_set():
                return
            try:
                batch = list(
                    self._queue.receive_messages(
                        messages_per_page=options.batch_size,
                        max_messages=options.batch_size,
                        visibility_timeout=max(1, int(options.function_timeout_seconds)),
                    )
                )
            except Exception as exc:  # storage down: keep polling, as the host does, at the longest interval
                logger.warning("queue %s: receive failed (%s); retrying", self.function.queue_name, type(exc).__name__)
                self._stop.wait(options.max_polling_interval_seconds)
                continue
            if not batch:
                self._stop.wait(idle_wait)
                # Random exponential back-off while idle (queue trigger docs, "Polling algorithm").
                idle_wait = min(options.max_polling_interval_seconds, idle_wait * 2 * random.uniform(0.8, 1.2))  # noqa: S311
                continue
            idle_wait = _FIRST_IDLE_WAIT
            with self._in_flight_changed:
                self._in_flight += len(batch)
            for message in batch:
                self._pool.submit(self._handle, message)
            self._stop.wait(_AFTER_MESSAGES_WAIT)

    # -- one message ------------------------------------------------------------------------------------

    def _handle(self, message: Any) -> None:
        try:
            self._process(message)
        except Exception:  # a storage call failed: the message reappears after its invisibility ends
            logger.exception("queue %s: message %s could not be settled", self.function.queue_name, message.id)
        finally:
            with self._in_flight_changed:
                self._in_flight -= 1
                self._in_flight_changed.notify_all()

    def _process(self, message: Any) -> None:
        name, queue = self.function.name, self.function.queue_name
        dequeue_count = int(message.dequeue_count or 1)
        # A message already past maxDequeueCount (its worker died mid-run) goes to poison without another try,
        # as the WebJobs QueueProcessor does before it runs a function.
        if dequeue_count > self._options.max_dequeue_count:
            self._to_poison(message, "dequeue count already above maxDequeueCount")
            return
        try:
            body = base64.b64decode(str(message.content or ""), validate=True)
        except (binascii.Error, ValueError):
            self._to_poison(message, "not base64 (the queue extension's messageEncoding)")
            return
        trigger = QueueMessage(
            id=message.id,
            body=body,
            dequeue_count=dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        try:
            invoke(self.function, trigger, self._loop)
        except Exception:
            logger.exception("function %s failed on message %s (dequeue count %d)", name, message.id, dequeue_count)
            if dequeue_count >= self._options.max_dequeue_count:
                self._to_poison(message, f"failed {dequeue_count} time(s)")
            else:
                self._queue.update_message(
                    message.id,
                    message.pop_receipt,
                    visibility_timeout=int(self._options.visibility_timeout_seconds),
                )
                self._report(message.id, "retry")
            return
        self._queue.delete_message(message.id, message.pop_receipt)
        logger.info("function %s processed message %s from %s", name, message.id, queue)
        self._report(message.id, "done")

    def _to_poison(self, message: Any, why: str) -> None:
        _create_if_missing(self._poison)
        self._poison.send_message(message.content)
        self._queue.delete_message(message.id, message.pop_receipt)
        logger.error("message %s moved to %s: %s", message.id, self.poison_queue_name, why)
        self._report(message.id, "poison")

    def _report(self, message_id: str, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(self.function.name, message_id, outcome)


def _create_if_missing(queue: Any) -> None:
    with contextlib.suppress(ResourceExistsError):
        queue.create_queue()
