"""Azurite, the Azure Storage emulator (installed by `npm ci`), on free loopback ports: the storage part of the
cloud-in-a-box, for tests and the demo.

By default the data lives in memory and `stop()` ends it for good. With `persistent=True` the data is written to
the instance's temporary directory (`--location`), so a test can take storage away with `stop()` and bring it back
with `start()` (or `restart()`): same ports, same connection string, same queues, tables and blobs. `close()`
removes the directory. With `location`, the data lives there instead and outlives the instance (`make start`
keeps it under .sandbox/azurite); `ports` then usually names Azurite's default ports, 10000-10002.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
# Azurite's documented development account; public by design, valid only against the emulator.
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# Azurite prints this once the last of its three services (blob, queue, table, in that order) listens.
_READY_LINE = b"Azurite Table service is successfully listening"
_START_SECONDS = 30.0
_STOP_SECONDS = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Azurite:
    """One emulator process on loopback. Starts on construction; `stop()` is safe to call more than once."""

    def __init__(
        self, *, persistent: bool = False, location: Path | None = None, ports: dict[str, int] | None = None
    ) -> None:
        self._binary = ROOT / "node_modules" / ".bin" / "azurite"
        if not self._binary.exists():
            raise RuntimeError("Azurite is not installed: run `npm ci` (make test does it)")
        self.persistent = persistent or location is not None
        self._location = location
        self.ports = dict(ports) if ports else {"blob": free_port(), "queue": free_port(), "table": free_port()}
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        try:
            self.start()
        except BaseException:
            self.close()
            raise

    @property
    def connection_string(self) -> str:
        p = self.ports
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{p['blob']}/{ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{p['queue']}/{ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{p['table']}/{ACCOUNT};"
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def location(self) -> Path | None:
        """Where a persistent instance keeps its data (None in memory)."""
        if self._location is not None:
            return self._location / "data"
        if not self.persistent or self._workdir is None:
            return None
        return Path(self._workdir.name) / "data"

    def start(self) -> None:
        """Start the emulator on this instance's ports (again, after `stop()`); a no-op while it runs.

        Ready means Azurite itself said all three services listen, not merely that something answers on the ports
        (after a restart another process could have taken one). Raises RuntimeError if it does not get there.
        """
        if self.running:
            return
        if self._location is not None:
            workdir = self._location
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            if self._workdir is None:
                self._workdir = tempfile.TemporaryDirectory(prefix="azurite-")
            workdir = Path(self._workdir.name)
        storage = ["--location", str(workdir / "data")] if self.persistent else ["--inMemoryPersistence"]
        log_path = workdir / "azurite.log"
        log = log_path.open("ab")
        offset = log.tell()
        self._log = log
        self._proc = subprocess.Popen(
            [
                str(self._binary),
                "--silent",
                *storage,
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--blobHost",
                "127.0.0.1",
                "--queueHost",
                "127.0.0.1",
                "--tableHost",
                "127.0.0.1",
                "--blobPort",
                str(self.ports["blob"]),
                "--queuePort",
                str(self.ports["queue"]),
                "--tablePort",
                str(self.ports["table"]),
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + _START_SECONDS
        while True:
            with log_path.open("rb") as reader:
                reader.seek(offset)
                output = reader.read()
            if _READY_LINE in output:
                return
            if time.monotonic() > deadline or self._proc.poll() is not None:
                tail = output[-400:].decode("utf-8", errors="replace").strip()
                self._terminate()
                raise RuntimeError(f"Azurite did not start on ports {self.ports}: {tail or 'no output'}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the emulator: SIGTERM, so Azurite closes its servers and saves its metadata, then wait for it.

        In memory the data is gone and the directory is removed, as before. A persistent instance keeps its data
        for `start()`; `close()` removes it.
        """
        self._terminate()
        if not self.persistent:
            self._cleanup()

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop, stay down for `down_seconds`, start again on the same ports (with the same data if persistent)."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def close(self) -> None:
        """Stop and remove the directory, data included."""
        self._terminate()
        self._cleanup()

    def __enter__(self) -> Azurite:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                # Killed before it saved: a persistent instance may come back without its last few seconds.
                logger.warning("Azurite did not stop within %.0f s; killed", _STOP_SECONDS)
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _cleanup(self) -> None:
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            workdir.cleanup()
