"""`python -m devhost [--port 7071]`: serve `function_app.app`'s HTTP functions on 127.0.0.1 until Ctrl-C,
printing the URL, the keys and every route; exit 2 without serving anything when the Python worker would not index
the app (devhost.worker_rules). A development tool: production runs on the Functions host.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import azure.functions as func

from devhost.host import DEFAULT_MAX_BODY_BYTES, DevHost, read_route_prefix
from devhost.worker_rules import SCRIPT_FILE, Violation, WorkerIndexingError, find_function_app

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_local_settings(path: Path) -> list[str]:
    """Like Core Tools: put local.settings.json `Values` into the environment, never overriding a variable that
    is already set. Returns the names loaded (values are not printed: they may be secrets).
    """
    if not path.is_file():
        return []
    values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    loaded = []
    for name, value in values.items():
        if name not in os.environ:
            os.environ[name] = str(value)
            loaded.append(name)
    return loaded


def _describe(host: DevHost) -> str:
    keys = host.keys
    lines = [
        f"devhost (development only) listening on {host.url}",
        "",
        f"master key : {keys.master_key}",
        f"host key   : {keys.host_key}",
        "",
        "HTTP functions:",
    ]
    for function in host.functions:
        methods = ",".join(function.methods) if len(function.methods) < 8 else "any"
        lines.append(
            f"  {function.name:<24} {methods:<16} {function.auth_level.value:<9} {host.url}{host.route_path(function)}"
        )
        if function.auth_level.value == "FUNCTION":
            lines.append(f"  {'':<24} function key: {keys.function_keys[function.name]}")
    for skipped in host.skipped:
        lines.append(f"  {skipped.name:<24} not served ({skipped.trigger})")
    lines.append("")
    lines.append("Send keys as ?code=<key> or an x-functions-key header. Ctrl-C to stop.")
    return "\n".join(lines) + "\n"


def _function_app(spec: str) -> func.FunctionRegister:
    """The FunctionApp of `module[:attribute]`, found as the Python worker finds it: the one top-level instance.
    Raises WorkerIndexingError when the module has none or several, or the attribute names another object.
    """
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    app = find_function_app(module)
    if attribute and getattr(module, attribute, None) is not app:
        raise WorkerIndexingError(
            [Violation(SCRIPT_FILE, "one-function-app", f"{module_name}.{attribute} is not its FunctionApp")]
        )
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devhost",
        description="Serve function_app.app's HTTP functions on 127.0.0.1 (development only) until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=7071, help="TCP port (0 picks a free one); default 7071")
    parser.add_argument(
        "--app",
        default="function_app",
        help="the module holding the FunctionApp (found as the worker finds it); module:attribute also names it",
    )
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger bodies get 413")
    parser.add_argument("--no-local-settings", action="store_true", help="do not load local.settings.json")
    parser.add_argument("--verbose", action="store_true", help="log every request (DEBUG)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    if not args.no_local_settings:
        loaded = _load_local_settings(REPO_ROOT / "local.settings.json")
        if loaded:
            logger.info("loaded %d setting(s) from local.settings.json: %s", len(loaded), ", ".join(loaded))

    try:
        host = DevHost(
            _function_app(args.app),
            port=args.port,
            route_prefix=read_route_prefix(REPO_ROOT / "host.json"),
            max_body_bytes=args.max_body_bytes,
        )
    except WorkerIndexingError as exc:
        # The real host would serve nothing: refuse to start, with the same message the tests print.
        sys.stderr.write(f"devhost: refusing to start: {exc}\n")
        return 2

    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received signal %s, stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with host:
        sys.stdout.write(_describe(host))
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
