"""One invocation of an HTTP function, the way the Python worker performs it: build the `func.HttpRequest`,
pass the trigger, output bindings and (if asked for) the `context`, run sync code on the calling thread and
coroutines on one shared event loop, then encode the `func.HttpResponse` as the worker's converter does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import uuid
from collections.abc import Coroutine, Iterable
from concurrent.futures import Future
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func
from azure.functions import _abc

from devhost.cookies import set_cookie_headers
from devhost.indexing import HttpFunction
from devhost.server import WireResponse

logger = logging.getLogger(__name__)


# -- request --------------------------------------------------------------------------------------------


def build_request(
    *,
    method: str,
    url: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    route_params: dict[str, str],
    body: bytes,
) -> func.HttpRequest:
    """The request the function receives; `params` holds the first value of each query parameter."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, value)
    merged: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key in merged:
            # RFC 9110 §5.3: repeated fields combine with commas; Cookie is the exception (RFC 6265 §5.4).
            merged[key] = f"{merged[key]}{'; ' if key == 'cookie' else ', '}{value}"
        else:
            merged[key] = value
    return func.HttpRequest(method, url, headers=merged, params=params, route_params=route_params, body=body)


# -- what the function is given ----------------------------------------------------------------------------


class OutputValue(func.Out[Any]):
    """A `func.Out` for an output binding: the devhost keeps what the function sets and moves nothing."""

    def __init__(self) -> None:
        self._value: Any = None
        self.was_set = False

    def set(self, val: Any) -> None:
        self._value = val
        self.was_set = True

    def get(self) -> Any:
        return self._value


class _TraceContext(_abc.TraceContext):
    def __init__(self) -> None:
        # W3C traceparent: version-traceid-parentid-flags.
        self._parent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _NoRetry(_abc.RetryContext):
    """HTTP triggers have no retry policy (protocol §7)."""

    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> Any:
        return None


class InvocationContext(_abc.Context):
    """The `context` argument of one invocation."""

    def __init__(self, function_name: str, invocation_id: str | None = None) -> None:
        self._invocation_id = invocation_id or str(uuid.uuid4())
        self._function_name = function_name
        self._storage = threading.local()
        self._storage.invocation_id = self._invocation_id
        self._trace = _TraceContext()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._storage

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return os.getcwd()

    @property
    def trace_context(self) -> _abc.TraceContext:
        return self._trace

    @property
    def retry_context(self) -> _abc.RetryContext:
        return _NoRetry()


# -- async functions ------------------------------------------------------------------------------------


class EventLoopThread:
    """One event loop on its own thread for every `async def` function, as the worker runs them on a single
    loop: clients that cache loop-bound state between calls behave as in production.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="devhost-event-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run `coroutine` on the loop and wait for it; raises what it raises."""
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the devhost is not running")
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        loop.close()


# -- calling and encoding -----------------------------------------------------------------------------------


def call_function(
    function: HttpFunction, request: func.HttpRequest, context: InvocationContext, loop: EventLoopThread
) -> Any:
    """Call the user function; returns what it answered (its return value, or the value of its HTTP output
    binding when that is not `$return`). Raises what the function raises.
    """
    arguments: dict[str, Any] = {function.trigger_argument: request}
    outputs = {name: OutputValue() for name in function.output_arguments}
    arguments.update(outputs)
    response_out = OutputValue() if function.response_binding != "$return" else None
    if response_out is not None:
        arguments[function.response_binding] = response_out
    if function.wants_context:
        arguments["context"] = context
    result = function.user_function(**arguments)
    if asyncio.iscoroutine(result):
        result = loop.run(result)
    for name, out in outputs.items():
        if out.was_set:
            logger.info("%s set output binding %s; devhost does not deliver output bindings", function.name, name)
    return response_out.get() if response_out is not None else result


def encode_response(result: Any) -> WireResponse:
    """Status, headers and body, as azure.functions' HttpResponseConverter hands them to the host.

    - Content-Type: the function's own header if it set one, else the mimetype, plus `; charset=` for text/*.
    - Set-Cookie: each cookie rewritten as the host writes it back (devhost.cookies). Any other repeated header:
      the last value (the converter builds a dict).
    - A `str` result is a 200 text/plain body; None is 204. Raises TypeError for anything else.
    """
    if isinstance(result, str):
        return WireResponse(200, [("Content-Type", "text/plain; charset=utf-8")], result.encode("utf-8"))
    if result is None:
        return WireResponse(204)
    if not isinstance(result, func.HttpResponse):
        raise TypeError(f"an HTTP function must return func.HttpResponse or str, not {type(result).__name__}")
    status = int(result.status_code)
    if not 100 <= status <= 599:
        raise TypeError(f"invalid HTTP status {status}")
    single: dict[str, tuple[str, str]] = {}
    for name, value in result.headers.items():
        if name.lower() != "set-cookie":
            single[name.lower()] = (name, value)
    cookies = [("Set-Cookie", value) for value in set_cookie_headers(result.headers.get_all("Set-Cookie"))]
    if "content-type" not in single:
        mimetype = result.mimetype
        content_type = f"{mimetype}; charset={result.charset}" if mimetype.startswith("text/") else mimetype
        single["content-type"] = ("Content-Type", content_type)
    return WireResponse(status, [*single.values(), *cookies], result.get_body())
