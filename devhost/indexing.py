"""Indexing, as the Functions host does it: read every function's bindings from `app.get_functions()` and keep
the HTTP-triggered ones with their route, methods and auth level. Nothing here is read from the code itself
except the user function to call and whether it wants a `context` argument.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import azure.functions as func

from devhost.keys import AuthLevel
from devhost.routes import RouteTemplate
from devhost.worker_rules import check_functions

logger = logging.getLogger(__name__)

ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
_HTTP_TRIGGER = "httptrigger"
_HTTP_OUTPUT = "http"
_CONTEXT_ARGUMENT = "context"  # the Python worker passes the invocation context to a parameter of this name


@dataclass(frozen=True)
class HttpFunction:
    """One HTTP-triggered function as the host sees it."""

    name: str
    route: RouteTemplate
    methods: tuple[str, ...]  # upper case; every method when the binding names none
    auth_level: AuthLevel
    trigger_argument: str  # the parameter that receives the func.HttpRequest
    response_binding: str  # "$return", or the parameter holding a func.Out[func.HttpResponse]
    output_arguments: tuple[str, ...]  # other output bindings: given a func.Out whose value is dropped
    unsupported_inputs: tuple[str, ...]  # "name (type)" of input bindings the devhost cannot provide
    wants_context: bool
    user_function: Callable[..., Any]

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.user_function)

    def allows(self, method: str) -> bool:
        return method.upper() in self.methods


@dataclass(frozen=True)
class SkippedFunction:
    """A function the devhost does not serve over HTTP: its trigger is not HTTP (timer, queue ...). Its bindings
    and user function let devhost.triggers run the triggers it knows.
    """

    name: str
    trigger: str
    bindings: tuple[dict[str, Any], ...] = ()
    user_function: Callable[..., Any] | None = None


def index_functions(app: func.FunctionApp) -> tuple[list[HttpFunction], list[SkippedFunction]]:
    """The app's HTTP functions and the functions skipped. Raises WorkerIndexingError (a ValueError) when the
    Python worker would refuse to index the app (devhost.worker_rules), ValueError for a route template or auth
    level the devhost cannot honour (better at start than as a surprise 404), and whatever
    `app.get_functions()` raises (e.g. duplicate function names).
    """
    functions = app.get_functions()
    check_functions(functions)
    served: list[HttpFunction] = []
    skipped: list[SkippedFunction] = []
    for function in functions:
        name = function.get_function_name()
        bindings: list[dict[str, Any]] = json.loads(function.get_function_json()).get("bindings", [])
        trigger = next((b for b in bindings if str(b.get("type", "")).lower().endswith("trigger")), None)
        if trigger is None or str(trigger["type"]).lower() != _HTTP_TRIGGER:
            skipped.append(
                SkippedFunction(
                    name,
                    str(trigger["type"]) if trigger else "none",
                    tuple(bindings),
                    function.get_user_function(),
                )
            )
            continue
        served.append(_http_function(name, trigger, bindings, function.get_user_function()))
    return served, skipped


def _http_function(
    name: str, trigger: dict[str, Any], bindings: list[dict[str, Any]], user_function: Callable[..., Any]
) -> HttpFunction:
    methods = tuple(str(m).upper() for m in trigger.get("methods") or ALL_METHODS)
    unknown = set(methods) - set(ALL_METHODS)
    if unknown:
        raise ValueError(f"function {name}: unsupported HTTP method(s) {sorted(unknown)}")
    others = [b for b in bindings if b is not trigger]
    response = next((b for b in others if str(b.get("type", "")).lower() == _HTTP_OUTPUT), None)
    outputs = tuple(
        str(b["name"]) for b in others if b is not response and str(b.get("direction", "")).upper() == "OUT"
    )
    inputs = tuple(
        f"{b.get('name')} ({b.get('type')})"
        for b in others
        if b is not response and str(b.get("direction", "")).upper() != "OUT"
    )
    if inputs:
        logger.warning("devhost cannot provide input bindings of %s: %s; calls will get 501", name, inputs)
    parameters = inspect.signature(user_function).parameters
    binding_names = {str(b.get("name")) for b in bindings}
    return HttpFunction(
        name=name,
        route=RouteTemplate(str(trigger.get("route") or name)),
        methods=methods,
        auth_level=AuthLevel.parse(trigger.get("authLevel", AuthLevel.FUNCTION.value)),
        trigger_argument=str(trigger["name"]),
        response_binding=str(response["name"]) if response else "$return",
        output_arguments=outputs,
        unsupported_inputs=inputs,
        wants_context=_CONTEXT_ARGUMENT in parameters and _CONTEXT_ARGUMENT not in binding_names,
        user_function=user_function,
    )
