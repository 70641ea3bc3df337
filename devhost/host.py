"""The `DevHost`: serves a FunctionApp's HTTP functions on loopback from their binding metadata, answering
like the Functions host: unknown route or method -> 404, missing or wrong key -> 401 (both with empty
bodies), body over the limit -> 413, exception in the function -> 500 with a generic body.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from devhost.indexing import HttpFunction, SkippedFunction, index_functions
from devhost.invocation import EventLoopThread, InvocationContext, build_request, call_function, encode_response
from devhost.keys import KEY_HEADER, KEY_QUERY_PARAMETER, AuthLevel, HostKeys
from devhost.server import LoopbackHttpServer, WireRequest, WireResponse
from devhost.triggers.runtime import TriggerRuntime

logger = logging.getLogger(__name__)

DEFAULT_ROUTE_PREFIX = "api"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024

_GENERIC_500 = WireResponse(500, [("Content-Type", "text/plain; charset=utf-8")], b"Internal Server Error")
# The host's admin API runs a non-HTTP function on demand (master key only; learn.microsoft.com/azure/
# azure-functions/functions-manually-run-non-http): POST /admin/functions/<name> {"input": "..."} -> 202.
_ADMIN_FUNCTIONS = re.compile(r"^/admin/functions/([A-Za-z0-9_-]+)$")


def read_route_prefix(host_json: Path) -> str:
    """`extensions.http.routePrefix` from host.json, or "api" when the file or the setting is absent."""
    if not host_json.is_file():
        return DEFAULT_ROUTE_PREFIX
    settings = json.loads(host_json.read_text(encoding="utf-8"))
    prefix = settings.get("extensions", {}).get("http", {}).get("routePrefix", DEFAULT_ROUTE_PREFIX)
    return str(prefix).strip("/")


class DevHost:
    """A development host for `app`'s HTTP functions on http://127.0.0.1:<port> (demo and browser tests only;
    production runs on the Functions host).

    Functions are indexed here, once: `app.get_functions()` refuses a second call on the same app. Raises
    WorkerIndexingError (a ValueError) when the Python worker would refuse to index the app, so that the devhost
    never serves what the real host would not; ValueError for a non-loopback `host`, a route template or auth
    level it cannot honour, or an ambiguous route.

    With `triggers=True` it also runs the queue and timer functions (devhost.triggers) against the app settings
    in `environ` and the queue options of `host_json`, and serves `POST /admin/functions/<name>`; construction
    then also raises what devhost.triggers.runtime.TriggerRuntime raises.
    """

    def __init__(
        self,
        app: func.FunctionApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keys: HostKeys | None = None,
        route_prefix: str = DEFAULT_ROUTE_PREFIX,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        triggers: bool = False,
        environ: Mapping[str, str] | None = None,
        host_json: Path | None = None,
        indexed: tuple[list[HttpFunction], list[SkippedFunction]] | None = None,
    ) -> None:
        # `indexed`: what index_functions(app) already returned (the app's functions can be listed only once).
        served, skipped = indexed if indexed is not None else index_functions(app)
        # ASP.NET routing precedence: literal segments before constrained parameters before plain ones.
        self._functions = sorted(served, key=lambda f: (f.route.precedence, f.route.text.lower()))
        _refuse_ambiguous_routes(self._functions)
        self.skipped: list[SkippedFunction] = skipped
        self.keys = (keys or HostKeys()).with_function_keys(f.name for f in self._functions)
        self.route_prefix = route_prefix.strip("/")
        self._host = host
        self._port = port
        self._max_body_bytes = max_body_bytes
        self._server: LoopbackHttpServer | None = None
        self._loop = EventLoopThread()
        self.triggers: TriggerRuntime | None = None
        if triggers:
            self.triggers = TriggerRuntime(
                skipped,
                os.environ if environ is None else environ,
                host_json or Path(__file__).resolve().parents[1] / "host.json",
                self._loop,
            )

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> DevHost:
        if self._server is not None:
            raise RuntimeError("devhost already started")
        server = LoopbackHttpServer(self._host, self._port, self._serve, self._max_body_bytes)
        self._loop.start()
        server.start()
        self._server = server
        if self.triggers is not None:
            self.triggers.start()
        logger.info("devhost serving %d HTTP function(s) at %s", len(self._functions), self.url)
        return self

    def stop(self) -> None:
        if self.triggers is not None and self._server is not None:
            self.triggers.stop()
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        self._loop.stop()

    def __enter__(self) -> DevHost:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what it serves -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("devhost is not running; call start() first")
        host = self._server.server_name
        return f"http://[{host}]:{self._server.port}" if ":" in host else f"http://{host}:{self._server.port}"

    @property
    def functions(self) -> list[HttpFunction]:
        """The HTTP functions served, in matching order."""
        return list(self._functions)

    def route_path(self, function: HttpFunction) -> str:
        """The function's URL path template, e.g. `/api/items/{id:int}`."""
        parts = [part for part in (self.route_prefix, function.route.text) if part]
        return "/" + "/".join(parts)

    # -- one request ----------------------------------------------------------------------------------------

    def _serve(self, wire: WireRequest) -> WireResponse:
        started = time.perf_counter()
        if wire.target.startswith("/"):
            path, _, query = wire.target.partition("?")
        else:  # absolute-form request target
            parts = urlsplit(wire.target)
            path, query = parts.path or "/", parts.query
        admin = _ADMIN_FUNCTIONS.match(path)
        if admin is not None and self.triggers is not None:
            return self._run_now(wire, admin.group(1), query)
        found = self._route(wire.method, path)
        if found is None:
            logger.debug("%s %s -> 404", wire.method, path)
            return WireResponse(404)
        function, route_params = found
        if not self.keys.authorizes(function.auth_level, function.name, _presented_key(wire, query)):
            logger.debug("%s %s -> 401 (%s)", wire.method, path, function.name)
            return WireResponse(401)
        if function.unsupported_inputs:
            message = f"devhost cannot provide input bindings: {', '.join(function.unsupported_inputs)}"
            return WireResponse(501, [("Content-Type", "text/plain; charset=utf-8")], message.encode())
        context = InvocationContext(function.name)
        request = build_request(
            method=wire.method,
            url=f"http://{wire.host}{wire.target}" if wire.target.startswith("/") else wire.target,
            query=query,
            headers=wire.headers,
            route_params=route_params,
            body=wire.body,
        )
        try:
            response = encode_response(call_function(function, request, context, self._loop))
        except Exception:
            logger.exception("function %s failed (invocation %s)", function.name, context.invocation_id)
            return _GENERIC_500
        logger.debug(
            "%s %s -> %d (%s, %.1f ms)",
            wire.method,
            path,
            response.status,
            function.name,
            (time.perf_counter() - started) * 1000,
        )
        return response

    def _run_now(self, wire: WireRequest, name: str, query: str) -> WireResponse:
        """POST /admin/functions/<name>: 202 once started, 401 without the master key, 404 for a function that
        is not a queue or timer function here, 400 for a body that is not `{"input": <string>}`."""
        assert self.triggers is not None
        if wire.method != "POST" or not self.triggers.knows(name):
            return WireResponse(404)
        if not self.keys.authorizes(AuthLevel.ADMIN, name, _presented_key(wire, query)):
            return WireResponse(401)
        try:
            payload = json.loads(wire.body or b"{}")
            text = payload.get("input", "") if isinstance(payload, dict) else None
        except ValueError:
            text = None
        if not isinstance(text, str):
            body = json.dumps({"error": 'the body must be {"input": "<string>"}'}).encode()
            return WireResponse(400, [("Content-Type", "application/json")], body)
        self.triggers.fire(name, text)
        logger.info("function %s started through /admin/functions", name)
        return WireResponse(202)

    def _route(self, method: str, path: str) -> tuple[HttpFunction, dict[str, str]] | None:
        """The function for this method and path. A route that exists but not for this method is a 404,
        as on the Functions host (azure-functions-host#10098).
        """
        remainder = self._strip_prefix(path)
        if remainder is None:
            return None
        for function in self._functions:
            if not function.allows(method):
                continue
            params = function.route.match(remainder)
            if params is not None:
                return function, params
        return None

    def _strip_prefix(self, path: str) -> str | None:
        if not self.route_prefix:
            return path
        prefix = "/" + self.route_prefix
        head = path[: len(prefix)]
        rest = path[len(prefix) :]
        if head.lower() != prefix.lower() or (rest and not rest.startswith("/")):
            return None
        return rest


def _presented_key(wire: WireRequest, query: str) -> str | None:
    """The header wins over the query parameter, as on the Functions host."""
    for name, value in wire.headers:
        if name.lower() == KEY_HEADER:
            return value
    return next((value for name, value in parse_qsl(query) if name == KEY_QUERY_PARAMETER), None)


def _refuse_ambiguous_routes(functions: list[HttpFunction]) -> None:
    """Two functions with the same route shape and a common method would make routing a coin toss."""
    seen: dict[tuple[str, str], str] = {}
    for function in functions:
        shape = _route_shape(function.route.text)
        for method in function.methods:
            other = seen.setdefault((shape, method), function.name)
            if other != function.name:
                raise ValueError(f"functions {other} and {function.name} both serve {method} {function.route.text}")


def _route_shape(template: str) -> str:
    """The template with parameter names erased: `items/{id:int}` and `items/{n:int}` have the same shape."""
    return re.sub(r"\{\*{0,2}[A-Za-z_][A-Za-z0-9_]*", "{", template.lower())
