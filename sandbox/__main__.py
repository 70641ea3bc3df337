"""`python -m sandbox`: run the stand-ins with the demo scenario until Ctrl-C, printing the app settings (also
written to `.sandbox/sandbox.env`).

`python -m sandbox serve --dev --app-url URL --keys-file FILE [--state-dir .sandbox]`: the development sandbox
`make start` runs (sandbox.admin.dev_server). `python -m sandbox <command> [--json]`: drive that running
sandbox from outside (sandbox.cli; `python -m sandbox --help` lists the commands).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received signal %s, stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def run_demo() -> int:
    from sandbox.demo import demo_settings, seed_demo
    from sandbox.server import Sandbox

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = _stop_on_signals()
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


def serve(argv: list[str]) -> int:
    from sandbox.admin.dev_server import serve as serve_dev
    from sandbox.admin.snapshot import SnapshotError

    parser = argparse.ArgumentParser(prog="python -m sandbox serve", description="The sandbox `make start` runs.")
    parser.add_argument("--dev", action="store_true", required=True, help="the development world (required)")
    parser.add_argument("--state-dir", type=Path, default=Path(".sandbox"))
    parser.add_argument("--app-url", required=True, help="where the function app listens, e.g. http://localhost:7071")
    parser.add_argument("--keys-file", type=Path, required=True, help="the development host's keys (JSON)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    host_key = json.loads(args.keys_file.read_text(encoding="utf-8"))["host_key"]
    try:
        serve_dev(args.state_dir, args.app_url, host_key, _stop_on_signals())
    except SnapshotError as exc:
        sys.stderr.write(f"sandbox: {exc}\n")
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if not arguments:
        return run_demo()
    if arguments[0] == "serve":
        return serve(arguments[1:])
    from sandbox.cli.commands import main as cli_main

    return cli_main(arguments)


if __name__ == "__main__":
    sys.exit(main())
