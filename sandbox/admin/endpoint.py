"""The admin endpoint: `POST /admin/<operation>` with a JSON object, on 127.0.0.1 only, answered with JSON.

Development only, never part of the app: it lets `python -m sandbox <command>` drive a running sandbox. Every
request must carry `Authorization: Bearer <token>`, a random token the sandbox writes to `.sandbox/admin.json`
(mode 0600) at start: another local user, or a web page in the developer's browser (which cannot set that
header cross-origin without a CORS preflight this endpoint never grants), cannot use it.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
from pathlib import Path
from types import TracebackType

from sandbox.admin.operations import Context, OperationError, run
from sandbox.net.httpd import HttpRequest, HttpResponse, LoopbackServer, json_response

logger = logging.getLogger(__name__)

PREFIX = "/admin/"
MAX_BODY = 1024 * 1024


class AdminEndpoint:
    """Serves sandbox.admin.operations for `context` at http://127.0.0.1:<port>/admin/ between start and stop."""

    def __init__(self, context: Context, token: str | None = None) -> None:
        self.context = context
        self.token = token or secrets.token_urlsafe(32)
        self._server: LoopbackServer | None = None
        self._lock = threading.Lock()  # one operation at a time: each reads, then changes, several owners

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("admin endpoint not started")
        return f"http://127.0.0.1:{self._server.port}"

    def start(self) -> AdminEndpoint:
        server = LoopbackServer(None)
        server.application = self.handle
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> AdminEndpoint:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def write_access_file(self, path: Path) -> None:
        """`{"url", "token"}` for the CLI, readable by the owner only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps({"url": self.url, "token": self.token}), encoding="utf-8")

    def handle(self, request: HttpRequest) -> HttpResponse:
        presented = request.headers.get("authorization", "")
        scheme, _, token = presented.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.token.encode()):
            return _error(401, "unauthorized", "send Authorization: Bearer <token from .sandbox/admin.json>")
        if request.method != "POST" or not request.path.startswith(PREFIX):
            return _error(404, "not_found", "POST /admin/<operation> with a JSON object")
        if len(request.body) > MAX_BODY:
            return _error(413, "too_large", f"the body is over {MAX_BODY} bytes")
        try:
            args = json.loads(request.body or b"{}")
        except ValueError:
            return _error(400, "invalid_json", "the body is not JSON")
        if not isinstance(args, dict):
            return _error(400, "invalid_json", "the body must be a JSON object")
        name = request.path[len(PREFIX) :]
        try:
            with self._lock:
                result = run(self.context, name, args)
        except OperationError as exc:
            return _error(exc.status, exc.code, exc.message)
        except Exception:
            logger.exception("admin operation %s failed", name)
            return _error(500, "internal_error", f"operation {name} failed; the sandbox's log has the details")
        logger.info("admin operation %s done", name)
        return json_response(200, result)


def _error(status: int, code: str, message: str) -> HttpResponse:
    return json_response(status, {"error": {"code": code, "message": message}})
