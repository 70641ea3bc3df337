"""The processes of `make start`, started in order and stopped in reverse: Azurite (data under
<state>/azurite), the development sandbox (`python -m sandbox serve --dev`, state in <state>/sandbox-state.json)
and the development host with triggers (`python -m devhost --triggers`, keys in <state>/host-keys.json). Each is
a child process of its own, as the Functions host and the cloud are separate from the app.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from devhost.keys import load_keys
from devhost.start import local_settings
from sandbox.azurite import Azurite, free_port

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
AZURITE_DEFAULT_PORTS = {"blob": 10000, "queue": 10001, "table": 10002}  # what UseDevelopmentStorage=true names
_SANDBOX_READY_SECONDS = 60.0
_DEVHOST_READY_SECONDS = 60.0
_STOP_SECONDS = 15.0
# What `make start-clean` deletes: the persisted world and storage, and the keys (new URLs with new keys).
PERSISTED = ("sandbox-state.json", "azurite", "host-keys.json", "local-settings.sha256")


class StartError(RuntimeError):
    """A part of the loop did not come up; the message says which and where its log is."""


@dataclass
class StartOptions:
    state_dir: Path
    port: int = 7071
    azurite_ports: dict[str, int] = field(default_factory=lambda: dict(AZURITE_DEFAULT_PORTS))
    local_settings_target: Path | None = REPO_ROOT / "local.settings.json"
    fresh: bool = False
    run_app: bool = True  # False: leave the port to `func start` (Core Tools) with the same settings


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        # As the servers bind: a port left in TIME_WAIT by the last run is free for them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class DevStack:
    """Start with `start()` (raises StartError), stop with `stop()` (safe to call more than once)."""

    def __init__(self, options: StartOptions) -> None:
        self.options = options
        self.state_dir = options.state_dir.resolve()
        self.port = options.port or free_port()
        self.app_url = f"http://localhost:{self.port}"
        self.azurite: Azurite | None = None
        self.sandbox: subprocess.Popen[bytes] | None = None
        self.devhost: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}
        self.banner = ""
        self._logs: list[IO[bytes]] = []

    # -- start ----------------------------------------------------------------------------------------

    def start(self) -> DevStack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.options.fresh:
            for name in PERSISTED:
                target = self.state_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
        ports = [self.port] if self.options.run_app else []
        taken = [p for p in (*ports, *self.options.azurite_ports.values()) if _port_taken(p)]
        if taken:
            raise StartError(f"port(s) {taken} are in use: stop what uses them or choose others (see --help)")
        try:
            self._start_azurite()
            keys_file = self.state_dir / "host-keys.json"
            load_keys(keys_file)  # writes a new set when there is none: the sandbox reads the host key there
            self._start_sandbox(keys_file)
            assert self.azurite is not None
            document = local_settings.build(self.info["settings"], self.azurite.connection_string, self.port)
            settings_file = self.state_dir / "local.settings.json"
            local_settings.write(document, settings_file)
            published = None
            if self.options.local_settings_target is not None and local_settings.publish(
                document, self.options.local_settings_target, self.state_dir
            ):
                published = self.options.local_settings_target
            if self.options.run_app:
                self._start_devhost(settings_file, keys_file)
            keys = load_keys(keys_file)  # the devhost added a key per function
            self._write_dev_json(keys, settings_file, published)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_azurite(self) -> None:
        try:
            self.azurite = Azurite(location=self.state_dir / "azurite", ports=self.options.azurite_ports)
        except RuntimeError as exc:
            raise StartError(f"Azurite did not start: {exc}") from exc

    def _start_sandbox(self, keys_file: Path) -> None:
        log = (self.state_dir / "sandbox.log").open("ab")
        self._logs.append(log)
        self.sandbox = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "sandbox",
                "serve",
                "--dev",
                "--state-dir",
                str(self.state_dir),
                "--app-url",
                self.app_url,
                "--keys-file",
                str(keys_file),
            ],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        ready = self.state_dir / "sandbox.json"
        deadline = time.monotonic() + _SANDBOX_READY_SECONDS
        while not ready.is_file():
            if self.sandbox.poll() is not None or time.monotonic() > deadline:
                tail = _tail(self.state_dir / "sandbox.log")
                raise StartError(f"the sandbox did not start (log: {self.state_dir / 'sandbox.log'}):\n{tail}")
            time.sleep(0.1)
        self.info = json.loads(ready.read_text(encoding="utf-8"))

    def _start_devhost(self, settings_file: Path, keys_file: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.devhost = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "devhost",
                "--port",
                str(self.port),
                "--triggers",
                "--no-local-settings",
                "--env-file",
                str(settings_file),
                "--keys-file",
                str(keys_file),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.devhost.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + _DEVHOST_READY_SECONDS
        while time.monotonic() < deadline:
            line = self.devhost.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Send keys as"):
                self.banner = "".join(lines)
                threading.Thread(target=_relay, args=(self.devhost.stdout,), daemon=True).start()
                return
        code = self.devhost.wait(timeout=5)
        raise StartError(f"the development host did not start (exit {code}); its messages are above")

    def _write_dev_json(self, keys: Any, settings_file: Path, published: Path | None) -> None:
        assert self.azurite is not None and self.sandbox is not None
        dev = {
            "app_url": self.app_url,
            "keys": {"master_key": keys.master_key, "host_key": keys.host_key, "function_keys": keys.function_keys},
            "local_settings": str(settings_file),
            "published_local_settings": str(published) if published else None,
            "sandbox_admin_url": self.info["admin_url"],
            "storage_connection_string": self.azurite.connection_string,
            "world": self.info["world"],
            "pids": {"sandbox": self.sandbox.pid, "devhost": self.devhost.pid if self.devhost else None},
        }
        path = self.state_dir / "dev.json"
        path.unlink(missing_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(dev, indent=2) + "\n", encoding="utf-8")

    # -- run and stop ------------------------------------------------------------------------------------

    def failed_child(self) -> str | None:
        """The name of a child that has exited on its own, if any."""
        for name, process in (("sandbox", self.sandbox), ("development host", self.devhost)):
            if process is not None and process.poll() is not None:
                return name
        if self.azurite is not None and not self.azurite.running:
            return "Azurite"
        return None

    def stop(self) -> None:
        """The app first (no more writes), then the sandbox (which saves its state), then Azurite."""
        (self.state_dir / "dev.json").unlink(missing_ok=True)
        for process in (self.devhost, self.sandbox):
            if process is not None:
                _stop_process(process)
        self.devhost = self.sandbox = None
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None
        for log in self._logs:
            log.close()
        self._logs = []


def _stop_process(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            logger.warning("process %d did not stop within %.0f s; killed", process.pid, _STOP_SECONDS)
            process.kill()
            process.wait()


def _relay(stream: IO[str]) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_bytes()[-size:].decode("utf-8", errors="replace")
    except OSError:
        return ""
