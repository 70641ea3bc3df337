"""The app settings `make start` gives the function app, written as a `local.settings.json` that Functions Core
Tools reads too (learn.microsoft.com/azure/azure-functions/functions-develop-local#local-settings-file:
`IsEncrypted`, `Values`, `Host.LocalHttpPort`).

The values start from local.settings.example.json (every setting the app knows, with its documented default)
and are overridden by what points at this run: the sandbox's endpoints, CA bundle and proxy, the world's app,
Azurite, and the redirect URI on the app's port.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[2] / "local.settings.example.json"
_FINGERPRINT = "local-settings.sha256"


def build(sandbox_settings: dict[str, str], storage_connection_string: str, port: int) -> dict[str, Any]:
    values = dict(json.loads(EXAMPLE.read_text(encoding="utf-8"))["Values"])
    values.update(sandbox_settings)
    values.update(
        {
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "AzureWebJobsStorage": storage_connection_string,
            "STORAGE_CONNECTION_STRING": storage_connection_string,
            "STORAGE_ACCOUNT_NAME": "",
        }
    )
    return {"IsEncrypted": False, "Values": values, "Host": {"LocalHttpPort": port}}


def write(document: dict[str, Any], path: Path) -> None:
    """Write `document` to `path`, readable by the owner only (it names a development key and header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def publish(document: dict[str, Any], target: Path, state_dir: Path) -> bool:
    """Write `document` to `target` (the repository's local.settings.json, for `func start`) unless a file is
    there that `make start` did not write (it is then left alone). Returns whether it was written."""
    fingerprint = state_dir / _FINGERPRINT
    if target.is_file():
        ours = fingerprint.is_file() and fingerprint.read_text(encoding="ascii").strip() == _digest(target)
        if not ours:
            return False
    write(document, target)
    fingerprint.write_text(_digest(target), encoding="ascii")
    return True


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
