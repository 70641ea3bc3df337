"""Every queue listener and the timer scheduler of one development host, and `fire(name, input)`: the host's
`POST /admin/functions/<name>` with `{"input": ...}` (learn.microsoft.com/azure/azure-functions/
functions-manually-run-non-http), which runs a timer now or a queue function on a message holding `input`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient

from devhost.indexing import SkippedFunction
from devhost.invocation import EventLoopThread
from devhost.triggers.functions import QueueFunction, TimerFunction, index_triggers, invoke
from devhost.triggers.host_options import read_queue_options
from devhost.triggers.queue_listener import QueueListener
from devhost.triggers.timers import TimerScheduler

logger = logging.getLogger(__name__)


class MissingConnectionError(ValueError):
    """A queue trigger's connection setting is not set."""


def connection_string_factory(connection_string: str) -> Callable[[str], Any]:
    """QueueClient per queue name, without encode/decode policies (the listener decodes base64 itself)."""

    def build(queue_name: str) -> Any:
        return QueueClient.from_connection_string(connection_string, queue_name, connection_timeout=5, read_timeout=20)

    return build


class TriggerRuntime:
    """Indexes the non-HTTP functions at construction (raises what devhost.triggers.functions.index_triggers
    raises, host_options.HostJsonError, MissingConnectionError), runs them between `start()` and `stop()`.
    """

    def __init__(
        self,
        skipped: list[SkippedFunction],
        environ: Mapping[str, str],
        host_json: Path,
        loop: EventLoopThread,
    ) -> None:
        queues, timers, others = index_triggers(skipped, environ)
        self.queue_functions: list[QueueFunction] = queues
        self.timer_functions: list[TimerFunction] = timers
        self.unsupported: list[SkippedFunction] = others
        self.options = read_queue_options(host_json)
        self._loop = loop
        self.outcomes: list[tuple[str, str, str]] = []  # (function, message id or "", outcome), for the record
        self._outcomes_lock = threading.Lock()
        self._listeners: list[QueueListener] = []
        for function in queues:
            connection = environ.get(function.connection, "").strip()
            if not connection:
                raise MissingConnectionError(
                    f"function {function.name}: app setting {function.connection} (its queue connection) is not set"
                )
            factory = connection_string_factory(connection)
            self._listeners.append(QueueListener(function, factory, self.options, loop, self._record))
        self.scheduler = TimerScheduler(timers, loop, on_outcome=lambda name, outcome: self._record(name, "", outcome))
        self._adhoc: set[threading.Thread] = set()

    def _record(self, function: str, message_id: str, outcome: str) -> None:
        with self._outcomes_lock:
            self.outcomes.append((function, message_id, outcome))
            del self.outcomes[:-1000]

    def start(self) -> None:
        for listener in self._listeners:
            listener.start()
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        for listener in self._listeners:
            listener.stop()
        for thread in list(self._adhoc):
            thread.join(timeout=10)

    def knows(self, name: str) -> bool:
        return any(f.name == name for f in (*self.queue_functions, *self.timer_functions))

    def fire(self, name: str, text: str = "") -> None:
        """Run `name` now in the background. Raises KeyError when it is not a queue or timer function here."""
        timer = next((t for t in self.timer_functions if t.name == name), None)
        if timer is not None:
            self.scheduler.fire(name)
            return
        function = next((q for q in self.queue_functions if q.name == name), None)
        if function is None:
            raise KeyError(name)
        message = QueueMessage(id=str(uuid.uuid4()), body=text.encode("utf-8"), dequeue_count=1)
        thread = threading.Thread(target=self._run_adhoc, args=(function, message), daemon=True)
        self._adhoc.add(thread)
        thread.start()

    def _run_adhoc(self, function: QueueFunction, message: QueueMessage) -> None:
        outcome = "done"
        try:
            invoke(function, message, self._loop)
        except Exception:
            outcome = "failed"
            logger.exception("function %s failed on a message posted to /admin/functions", function.name)
        finally:
            self._record(function.name, message.id or "", outcome)
            self._adhoc.discard(threading.current_thread())

    def describe(self) -> list[str]:
        """One line per trigger, for the devhost's start-up banner."""
        lines = []
        for function in self.queue_functions:
            lines.append(
                f"  {function.name:<24} queue {function.queue_name} (batch {self.options.batch_size}, "
                f"max dequeue {self.options.max_dequeue_count}, poison {function.queue_name}-poison)"
            )
        for timer in self.timer_functions:
            lines.append(
                f"  {timer.name:<24} timer '{timer.schedule.expression}' next "
                f"{self.scheduler.next_firing(timer.name):%Y-%m-%d %H:%M:%S} UTC"
            )
        for other in self.unsupported:
            lines.append(f"  {other.name:<24} not run ({other.trigger})")
        return lines
