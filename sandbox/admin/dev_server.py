"""`python -m sandbox serve --dev`: the sandbox `make start` runs. It comes back with the saved world
(sandbox.admin.snapshot) or seeds a new one (sandbox.admin.world), points it at the function app, serves the
admin endpoint, writes `sandbox.json` (the app settings and the world, for `make start` and the CLI) and saves
the state whenever an operation changed it and every few seconds (rows the app wrote), and once more on exit.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from sandbox.admin import snapshot
from sandbox.admin.endpoint import AdminEndpoint
from sandbox.admin.operations import Context, status
from sandbox.admin.world import DevWorld, app_settings, connect_app, seed_world
from sandbox.server import Sandbox

logger = logging.getLogger(__name__)

STATE_FILE = "sandbox-state.json"
INFO_FILE = "sandbox.json"
ACCESS_FILE = "admin.json"
_SAVE_EVERY_SECONDS = 5.0


class _Saver:
    def __init__(self, sandbox: Sandbox, world: DevWorld, path: Path) -> None:
        self._sandbox, self._world, self._path = sandbox, world, path
        self._last = ""

    def save(self) -> None:
        document = snapshot.capture(self._sandbox.state, self._world)
        text = snapshot.write_if_changed(self._path, document, self._last)
        if text != self._last:
            logger.debug("sandbox state saved to %s", self._path)
        self._last = text


def serve(state_dir: Path, app_url: str, webhook_key: str, stop: threading.Event) -> None:
    """Run until `stop` is set. Raises snapshot.SnapshotError when the saved state cannot be read back."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / INFO_FILE).unlink(missing_ok=True)
    saved = snapshot.read(state_dir / STATE_FILE)
    with Sandbox(state_dir) as sandbox:
        if saved is not None:
            world = snapshot.restore(sandbox.state, saved)
            logger.info("sandbox state restored from %s", state_dir / STATE_FILE)
        else:
            world = seed_world(sandbox.state)
            logger.info("new development world seeded")
        connect_app(sandbox.state, world, app_url, webhook_key)
        changed = threading.Event()
        saver = _Saver(sandbox, world, state_dir / STATE_FILE)
        saver.save()
        context = Context(sandbox.state, world, changed.set)
        with AdminEndpoint(context) as admin:
            admin.write_access_file(state_dir / ACCESS_FILE)
            info: dict[str, Any] = {
                "admin_url": admin.url,
                "settings": app_settings(sandbox, world),
                "world": status(context, {}),
            }
            snapshot.write(state_dir / INFO_FILE, info)
            logger.info("development sandbox ready; admin endpoint %s", admin.url)
            waited = 0.0
            while not stop.wait(0.5):
                waited += 0.5
                if changed.is_set() or waited >= _SAVE_EVERY_SECONDS:
                    changed.clear()
                    waited = 0.0
                    saver.save()
            saver.save()
        (state_dir / INFO_FILE).unlink(missing_ok=True)
