"""HTTP(S) plumbing shared by the stand-ins: request/response values and a threaded loopback server that
does TLS handshakes on worker threads and speaks HTTP/1.1 keep-alive.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

logger = logging.getLogger(__name__)

_HANDSHAKE_TIMEOUT = 10.0
_IDLE_TIMEOUT = 30.0  # an idle keep-alive connection is closed after this many seconds


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # without the query, still percent-encoded
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""

    @property
    def segments(self) -> list[str]:
        """Decoded path segments; `/secrets/x/` gives ["secrets", "x", ""]."""
        return [unquote(part) for part in self.path.split("/")[1:]]

    def form(self) -> dict[str, str]:
        """The body as application/x-www-form-urlencoded fields (first value wins)."""
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Runs once the response is written (or the write failed): work the service does after answering.
    after_sent: Callable[[], None] | None = field(default=None, compare=False, repr=False)


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> HttpResponse:
    return HttpResponse(
        status,
        json.dumps(payload).encode("utf-8"),
        {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
    )


Application = Callable[[HttpRequest], HttpResponse]


def _unavailable(_: HttpRequest) -> HttpResponse:
    return json_response(503, {"error": "not_started"})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    server_version = "sandbox"
    sys_version = ""
    timeout = _IDLE_TIMEOUT
    server: LoopbackServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = HttpRequest(
            method=self.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        try:
            response = self.server.application(request)
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            response = json_response(500, {"error": "sandbox_internal_error"})
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The client gave up first (its timeout beat an injected delay): nothing to answer any more.
            logger.debug("%s %s: client went away before the response (%s)", request.method, request.path, exc)
            self.close_connection = True
        finally:
            if response.after_sent is not None:
                try:
                    response.after_sent()
                except Exception:
                    logger.exception("%s %s: work after the response failed", request.method, request.path)

    def log_message(self, format: str, *args: Any) -> None:
        # Paths never carry tokens here (they travel in bodies and headers), so DEBUG is safe.
        logger.debug("%s %s", self.address_string(), format % args)


class LoopbackServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer on 127.0.0.1 with an ephemeral port, optionally TLS.

    The TLS handshake runs in the per-connection thread, so one slow client cannot stall accept().
    """

    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 resets connections when dozens of clients connect at once (the webhook
    # fault test sends from 50); a real front end accepts far more.
    request_queue_size = 512

    thread_name = "sandbox"

    def __init__(
        self,
        tls: ssl.SSLContext | None = None,
        *,
        address: tuple[str, int] = ("127.0.0.1", 0),
        handler: type[BaseHTTPRequestHandler] | None = None,
    ) -> None:
        self.application: Application = _unavailable
        self._tls = tls
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler or _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name via getfqdn(); skip that lookup on loopback.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def finish_request(self, request: Any, client_address: Any) -> None:
        connection: socket.socket = request
        # Headers and body leave in separate writes; without TCP_NODELAY, Nagle's algorithm holds the body
        # until the client's delayed ACK (about 40 ms) on every keep-alive response.
        with contextlib.suppress(OSError):
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            connection.settimeout(_HANDSHAKE_TIMEOUT)
            try:
                connection = self._tls.wrap_socket(connection, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                logger.debug("TLS handshake with %s failed: %s", client_address, exc)
                return
        with self._connections_lock:
            self._connections.add(connection)
        try:
            self.RequestHandlerClass(connection, client_address, self)  # type: ignore[arg-type]
        finally:
            with self._connections_lock:
                self._connections.discard(connection)
            if connection is not request:
                connection.close()

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.thread_name}-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, cut idle keep-alive connections and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        with self._connections_lock:
            open_connections = list(self._connections)
        for connection in open_connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self.server_close()
