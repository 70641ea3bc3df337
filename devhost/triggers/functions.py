"""Queue- and timer-triggered functions as the host indexes them from their bindings, with `%NAME%` binding
expressions resolved from app settings (learn.microsoft.com/azure/azure-functions/
functions-bindings-expressions-patterns#binding-expressions---app-settings), and one invocation of each.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from devhost.indexing import SkippedFunction
from devhost.invocation import EventLoopThread, InvocationContext, OutputValue
from devhost.triggers import ncrontab

logger = logging.getLogger(__name__)

QUEUE_TRIGGER = "queuetrigger"
TIMER_TRIGGER = "timertrigger"
DEFAULT_CONNECTION = "AzureWebJobsStorage"  # an empty `connection` means this setting (queue trigger docs)
_EXPRESSION = re.compile(r"%([A-Za-z0-9_.:-]+)%")
_CONTEXT_ARGUMENT = "context"


class SettingExpressionError(ValueError):
    """A `%NAME%` binding expression names an app setting that is not set."""

    def __init__(self, function: str, missing: list[str]) -> None:
        super().__init__(f"function {function}: app setting(s) {', '.join(missing)} not set")
        self.missing = missing


def resolve(text: str, environ: Mapping[str, str], function: str) -> str:
    """`text` with every `%NAME%` replaced by the app setting's value. Raises SettingExpressionError."""
    missing = [name for name in _EXPRESSION.findall(text) if not environ.get(name, "").strip()]
    if missing:
        raise SettingExpressionError(function, missing)
    return _EXPRESSION.sub(lambda m: environ[m.group(1)].strip(), text)


@dataclass(frozen=True)
class TriggeredFunction:
    name: str
    trigger: dict[str, Any]
    output_arguments: tuple[str, ...]
    wants_context: bool
    user_function: Callable[..., Any]

    @property
    def trigger_argument(self) -> str:
        return str(self.trigger["name"])


@dataclass(frozen=True)
class QueueFunction(TriggeredFunction):
    queue_name: str
    connection: str  # the app setting holding the storage connection string


@dataclass(frozen=True)
class TimerFunction(TriggeredFunction):
    schedule: ncrontab.Schedule
    run_on_startup: bool


def settings_named(skipped: list[SkippedFunction]) -> dict[str, list[str]]:
    """App setting -> the functions whose trigger needs it (connections and `%NAME%` expressions)."""
    needed: dict[str, list[str]] = {}
    for function in skipped:
        trigger = _trigger(function)
        if trigger is None:
            continue
        kind = str(trigger.get("type", "")).lower()
        if kind == QUEUE_TRIGGER:
            needed.setdefault(str(trigger.get("connection") or DEFAULT_CONNECTION), []).append(function.name)
        for key in ("queueName", "schedule"):
            for name in _EXPRESSION.findall(str(trigger.get(key, ""))):
                needed.setdefault(name, []).append(function.name)
    return needed


def index_triggers(
    skipped: list[SkippedFunction], environ: Mapping[str, str]
) -> tuple[list[QueueFunction], list[TimerFunction], list[SkippedFunction]]:
    """The queue and timer functions among `skipped`, and those with another trigger. Raises
    SettingExpressionError for an unset `%NAME%`, ncrontab.ScheduleError for a schedule that is not NCRONTAB.
    """
    queues: list[QueueFunction] = []
    timers: list[TimerFunction] = []
    others: list[SkippedFunction] = []
    for function in skipped:
        trigger = _trigger(function)
        kind = str(trigger.get("type", "")).lower() if trigger else ""
        if trigger is None or function.user_function is None or kind not in (QUEUE_TRIGGER, TIMER_TRIGGER):
            others.append(function)
            continue
        common: dict[str, Any] = {
            "name": function.name,
            "trigger": trigger,
            "output_arguments": tuple(
                str(b["name"])
                for b in function.bindings
                if b is not trigger and str(b.get("direction", "")).upper() == "OUT"
            ),
            "wants_context": _wants_context(function),
            "user_function": function.user_function,
        }
        if kind == QUEUE_TRIGGER:
            queue_name = resolve(str(trigger.get("queueName", "")), environ, function.name).lower()
            queues.append(
                QueueFunction(
                    **common, queue_name=queue_name, connection=str(trigger.get("connection") or DEFAULT_CONNECTION)
                )
            )
        else:
            text = resolve(str(trigger.get("schedule", "")), environ, function.name)
            try:
                schedule = ncrontab.parse(text)
            except ncrontab.ScheduleError as exc:
                raise ncrontab.ScheduleError(f"function {function.name}: {exc}") from None
            timers.append(TimerFunction(**common, schedule=schedule, run_on_startup=bool(trigger.get("runOnStartup"))))
    return queues, timers, others


def invoke(function: TriggeredFunction, trigger_value: Any, loop: EventLoopThread) -> None:
    """Call the function with its trigger value, a func.Out per output binding and (if asked for) the context;
    coroutines run on the host's one event loop. Raises what the function raises."""
    arguments: dict[str, Any] = {function.trigger_argument: trigger_value}
    outputs = {name: OutputValue() for name in function.output_arguments}
    arguments.update(outputs)
    if function.wants_context:
        arguments[_CONTEXT_ARGUMENT] = InvocationContext(function.name)
    result = function.user_function(**arguments)
    if asyncio.iscoroutine(result):
        loop.run(result)
    for name, out in outputs.items():
        if out.was_set:
            logger.warning("%s set output binding %s; the devhost does not deliver it", function.name, name)


def _trigger(function: SkippedFunction) -> dict[str, Any] | None:
    return next((b for b in function.bindings if str(b.get("type", "")).lower().endswith("trigger")), None)


def _wants_context(function: SkippedFunction) -> bool:
    if function.user_function is None:
        return False
    parameters = inspect.signature(function.user_function).parameters
    return _CONTEXT_ARGUMENT in parameters and _CONTEXT_ARGUMENT not in {str(b.get("name")) for b in function.bindings}
