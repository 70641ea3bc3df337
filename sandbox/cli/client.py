"""The CLI's side of the admin endpoint: find it from `.sandbox/admin.json`, POST one operation, return the JSON.
Loopback only, never through a proxy (HTTPS_PROXY points at the sandbox's Dataverse proxy in a dev shell).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

_TIMEOUT_SECONDS = 120.0  # seeding tens of thousands of rows takes a while


class NoSandboxError(Exception):
    """No development sandbox is running for this state directory."""


class OperationFailed(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post_json(url: str, payload: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes]:
    """POST JSON to a loopback URL; (status, body). Raises OSError when nothing answers."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with _no_proxy_opener().open(request, timeout=_TIMEOUT_SECONDS) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


class AdminClient:
    def __init__(self, state_dir: Path) -> None:
        access = state_dir / "admin.json"
        if not access.is_file():
            raise NoSandboxError(f"no sandbox is running for {state_dir} (start one with `make start`)")
        saved = json.loads(access.read_text(encoding="utf-8"))
        self.url = str(saved["url"])
        self._token = str(saved["token"])

    def run(self, operation: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run `operation`. Raises NoSandboxError when the endpoint does not answer, OperationFailed otherwise."""
        try:
            status, body = post_json(f"{self.url}/admin/{operation}", args, {"Authorization": f"Bearer {self._token}"})
        except OSError as exc:
            message = f"the sandbox at {self.url} does not answer ({exc}); is `make start` running?"
            raise NoSandboxError(message) from exc
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            raise OperationFailed(status, "invalid_response", "the sandbox's answer is not JSON") from None
        if status != 200:
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            raise OperationFailed(status, str(error.get("code", "error")), str(error.get("message", f"HTTP {status}")))
        return dict(payload)
