"""A loopback HTTPS forward proxy that only knows the sandbox's Dataverse orgs.

Clients honour `HTTPS_PROXY` and open `CONNECT <org host>:443`; for a registered org the proxy answers
`200 Connection established` and relays bytes to the Dataverse stand-in's TLS listener on 127.0.0.1. A host
shaped like an org that the sandbox does not have gets `404 Not Found`, as a forward proxy answers for a host name
that does not exist (clients then report "no such organisation" at once); anything else gets 403. Nothing is ever
dialled but that one local port. Tunnels are bounded and time out when idle.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

_MAX_TUNNELS = 256
_HEADER_LIMIT = 8192
_HEADER_TIMEOUT = 10.0
_IDLE_TIMEOUT = 60.0
_CONNECT_TIMEOUT = 5.0
_CHUNK = 65536


class ConnectProxy:
    """`CONNECT host:443` to `target_port` on 127.0.0.1 when `allow(host)`; 404 when `unknown_org(host)` (an org
    host name the sandbox does not serve); 403 otherwise."""

    def __init__(
        self,
        target_port: int,
        allow: Callable[[str], bool],
        on_connect: Callable[[str, int], None] = lambda host, status: None,
        unknown_org: Callable[[str], bool] = lambda host: False,
    ) -> None:
        self._target_port = target_port
        self._allow = allow
        self._unknown_org = unknown_org
        self._on_connect = on_connect
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(_MAX_TUNNELS)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("proxy not started")
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.settimeout(0.1)  # accept() wakes up to notice stop()
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True)
        self._accept_thread.start()

    def stop(self) -> None:
        """Stop accepting, cut open tunnels and wait briefly for their threads."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
            self._accept_thread = None
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            open_sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=2)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            if not self._slots.acquire(blocking=False):
                with contextlib.suppress(OSError):
                    client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                client.close()
                continue
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        self._track(client)
        try:
            request, early = self._read_request(client)
            if request is None:
                return
            host, status = self._decide(request)
            self._on_connect(host, status)
            if status != 200:
                reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}[status]
                client.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
                return
            upstream = socket.create_connection(("127.0.0.1", self._target_port), timeout=_CONNECT_TIMEOUT)
            self._track(upstream)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # relay each TLS record at once
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if early:
                upstream.sendall(early)
            self._relay(client, upstream)
        except OSError as exc:
            logger.debug("proxy tunnel ended: %s", exc)
        finally:
            for end in (client, upstream):
                if end is not None:
                    with self._lock:
                        self._sockets.discard(end)
                    end.close()
            with self._lock:
                self._threads.discard(threading.current_thread())
            self._slots.release()

    @staticmethod
    def _read_request(client: socket.socket) -> tuple[str | None, bytes]:
        """The request line of the proxy request, and any bytes the client sent after its headers."""
        client.settimeout(_HEADER_TIMEOUT)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(4096)
            if not chunk:
                return None, b""
            data += chunk
            if len(data) > _HEADER_LIMIT:
                client.sendall(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n")
                return None, b""
        head, _, early = data.partition(b"\r\n\r\n")
        return head.split(b"\r\n", 1)[0].decode("latin-1"), early

    def _decide(self, request_line: str) -> tuple[str, int]:
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "", 400
        method, target, _ = parts
        host, _, port = target.rpartition(":")
        host = host.strip("[]").lower()
        if method.upper() != "CONNECT":
            return host or target, 405
        if port == "443" and not self._allow(host) and self._unknown_org(host):
            # Dataverse has no DNS name for an org that does not exist (what clients are seen to report; no
            # Microsoft page documents the answer for an unknown org host): the proxy, the sandbox's resolver,
            # says the host was not found rather than that it is forbidden.
            logger.info("proxy: no org at %s", host)
            return host, 404
        if port != "443" or not self._allow(host):
            logger.info("proxy refused CONNECT %s", target)
            return host, 403
        return host, 200

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until both sides closed (half-close aware) or the tunnel idles out."""
        open_ends = {client: upstream, upstream: client}
        while open_ends and not self._stopping.is_set():
            readable, _, _ = select.select(list(open_ends), [], [], _IDLE_TIMEOUT)
            if not readable:
                logger.debug("proxy tunnel idle for %ss; closing", _IDLE_TIMEOUT)
                return
            for source in readable:
                data = source.recv(_CHUNK)
                sink = open_ends[source]
                if data:
                    sink.settimeout(_IDLE_TIMEOUT)
                    sink.sendall(data)
                    continue
                del open_ends[source]
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
