"""The host.json settings that shape queue-triggered invocations, read as the Functions host reads them.

`extensions.queues` (host.json reference, "queues"; learn.microsoft.com/azure/azure-functions/
functions-bindings-storage-queue#host-json): `batchSize` (default 16, at most 32) messages fetched at once,
`newBatchThreshold` (default batchSize / 2) in flight before the next fetch, `maxDequeueCount` (default 5) tries
before a message goes to `<queue>-poison`, `visibilityTimeout` (default 0) the wait before a failed message is
retried, `maxPollingInterval` (default 1 minute; 2 s when running locally) the longest idle wait. Also
`functionTimeout`: a message stays invisible that long while its function runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d+))?$")


class HostJsonError(ValueError):
    """host.json holds a value the host would refuse."""


@dataclass(frozen=True)
class QueueOptions:
    batch_size: int = 16
    new_batch_threshold: int = 8
    max_dequeue_count: int = 5
    visibility_timeout_seconds: float = 0.0
    max_polling_interval_seconds: float = 2.0  # the local default (queue trigger docs, "Polling algorithm")
    function_timeout_seconds: float = 600.0  # the host.json default on a Flex Consumption / Consumption plan


def timespan_seconds(text: str, name: str) -> float:
    """`[d.]hh:mm:ss[.fff]` as seconds. Raises HostJsonError naming the setting."""
    match = _TIMESPAN.match(str(text).strip())
    if not match:
        raise HostJsonError(f"host.json {name} must be a TimeSpan such as 00:00:30, not {text!r}")
    days, hours, minutes, seconds, fraction = match.groups()
    total = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    return total + (float(f"0.{fraction}") if fraction else 0.0)


def read_queue_options(host_json: Path) -> QueueOptions:
    """The queue options of `host_json` (defaults when absent). Raises HostJsonError for a value out of range."""
    settings: dict[str, Any] = json.loads(host_json.read_text(encoding="utf-8")) if host_json.is_file() else {}
    queues = settings.get("extensions", {}).get("queues", {})
    batch_size = int(queues.get("batchSize", 16))
    if not 1 <= batch_size <= 32:
        raise HostJsonError("host.json extensions.queues.batchSize must be between 1 and 32")
    threshold = int(queues.get("newBatchThreshold", batch_size // 2))
    if threshold < 0:
        raise HostJsonError("host.json extensions.queues.newBatchThreshold cannot be negative")
    max_dequeue = int(queues.get("maxDequeueCount", 5))
    if max_dequeue < 1:
        raise HostJsonError("host.json extensions.queues.maxDequeueCount must be at least 1")
    visibility = timespan_seconds(queues.get("visibilityTimeout", "00:00:00"), "extensions.queues.visibilityTimeout")
    polling_raw = queues.get("maxPollingInterval")
    polling = 2.0 if polling_raw is None else _polling_seconds(polling_raw)
    timeout_raw = settings.get("functionTimeout")
    timeout = 600.0 if timeout_raw in (None, "-1") else timespan_seconds(timeout_raw, "functionTimeout")
    return QueueOptions(
        batch_size=batch_size,
        new_batch_threshold=threshold,
        max_dequeue_count=max_dequeue,
        visibility_timeout_seconds=visibility,
        max_polling_interval_seconds=max(0.1, polling),
        function_timeout_seconds=timeout,
    )


def _polling_seconds(value: object) -> float:
    """maxPollingInterval is a TimeSpan in 2.x+ host.json; a bare number is milliseconds (the 1.x form)."""
    if isinstance(value, int | float):
        return float(value) / 1000
    return timespan_seconds(str(value), "extensions.queues.maxPollingInterval")
