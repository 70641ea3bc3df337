"""HTTP/1.1 plumbing for the DevHost: a threaded loopback server that reads each request (enforcing the body
limit before the function sees anything), hands it to one callable, and writes the answer back with keep-alive.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from sandbox.net.httpd import LoopbackServer

logger = logging.getLogger(__name__)

_IDLE_TIMEOUT = 30.0  # seconds an idle keep-alive connection stays open
# An oversized body is read and thrown away up to this size before the 413 goes out: closing a socket with
# unread data makes the kernel send RST, which can destroy the response before the client reads it.
_DRAIN_LIMIT = 64 * 1024 * 1024
_HOP_BY_HOP = frozenset({"connection", "content-length", "transfer-encoding", "keep-alive", "upgrade"})


@dataclass(frozen=True)
class WireRequest:
    method: str
    target: str  # path and query exactly as sent, still percent-encoded
    headers: list[tuple[str, str]]  # in arrival order, names as sent
    body: bytes
    host: str  # the Host header, or the server's own address


@dataclass(frozen=True)
class WireResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)  # repeated names allowed (Set-Cookie)
    body: bytes = b""


Handler = Callable[[WireRequest], WireResponse]


class _BodyError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "devhost"
    sys_version = ""
    timeout = _IDLE_TIMEOUT
    server: LoopbackHttpServer

    # The Functions host routes these methods; anything else gets 501 from BaseHTTPRequestHandler.
    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_OPTIONS(self) -> None:
        self._serve()

    def do_TRACE(self) -> None:
        self._serve()

    def handle_expect_100(self) -> bool:
        # Refuse an oversized body before the client sends it (curl sends Expect for large uploads).
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.server.max_body_bytes:
            self._write(WireResponse(413), close=True)
            return False
        return super().handle_expect_100()

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except _BodyError as err:
            # The rest of the body is still on the wire: answer and drop the connection.
            self._write(WireResponse(err.status), close=True)
            return
        request = WireRequest(
            method=self.command,
            target=self.path,
            headers=list(self.headers.items()),
            body=body,
            host=self.headers.get("Host") or f"{self.server.server_name}:{self.server.port}",
        )
        try:
            response = self.server.handler(request)
        except Exception:
            logger.exception("devhost failed to serve %s %s", self.command, self.path.split("?", 1)[0])
            response = WireResponse(500, [("Content-Type", "text/plain; charset=utf-8")], b"Internal Server Error")
        self._write(response)

    def _read_body(self) -> bytes:
        limit = self.server.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        text = self.headers.get("Content-Length")
        if text is None:
            return b""
        if not text.strip().isdigit():
            raise _BodyError(400)
        length = int(text)
        if length > limit:
            if length <= _DRAIN_LIMIT:
                self._discard(length)
            raise _BodyError(413)
        return self.rfile.read(length) if length else b""

    def _discard(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                return
            remaining -= len(chunk)

    def _read_chunked(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise _BodyError(400) from None
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailers are ignored
                return b"".join(chunks)
            total += size
            if total > limit:
                raise _BodyError(413)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(8)  # the CRLF after each chunk

    def _write(self, response: WireResponse, *, close: bool = False) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines may carry `?code=<key>`: they are logged at DEBUG only.
        logger.debug("%s %s", self.address_string(), format % args)


class LoopbackHttpServer(LoopbackServer):
    """The sandbox's threaded loopback server (connection tracking, clean stop), plain HTTP, with this host's
    request handler, on a loopback address only."""

    thread_name = "devhost"

    def __init__(self, host: str, port: int, handler: Handler, max_body_bytes: int) -> None:
        if not _is_loopback(host):
            raise ValueError(f"devhost serves loopback addresses only, not {host!r}")
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        super().__init__(None, address=(host, port), handler=_RequestHandler)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return False  # may resolve to a non-loopback address on odd systems; name an address instead
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
