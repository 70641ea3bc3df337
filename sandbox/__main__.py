"""`python -m sandbox`: run the stand-ins with the demo scenario until Ctrl-C, printing the app settings
(also written to `.sandbox/sandbox.env`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from sandbox.demo import demo_settings, seed_demo
from sandbox.server import Sandbox

logger = logging.getLogger(__name__)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="Run the local cloud-in-a-box (Entra ID, Key Vault, managed identity, Dataverse behind an "
        "HTTPS proxy) with the demo scenario "
        "until Ctrl-C; print the app settings that point at it and write them to .sandbox/sandbox.env.",
    )
    parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received signal %s, stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    state_dir = Path.cwd() / ".sandbox"
    with Sandbox(state_dir) as sandbox:
        seed = seed_demo(sandbox.state)
        lines = "".join(f"{name}={value}\n" for name, value in demo_settings(sandbox, seed).items())
        (state_dir / "sandbox.env").write_text(lines, encoding="utf-8")
        sys.stdout.write(lines)
        sys.stdout.flush()
        logger.info("settings written to %s; Ctrl-C to stop", state_dir / "sandbox.env")
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
