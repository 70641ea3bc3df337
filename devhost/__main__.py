"""`python -m devhost [--port 7071] [--triggers]`: serve `function_app.app` on 127.0.0.1 until Ctrl-C, printing
the URL, the keys and every route; with `--triggers` also run its queue and timer functions (devhost.triggers)
after naming every missing app setting at once (devhost.preflight). Exit 2 without serving anything when the
Python worker would not index the app (devhost.worker_rules) or a setting is missing. A development tool:
production runs on the Functions host.
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
from devhost.indexing import index_functions
from devhost.keys import load_keys, save_keys
from devhost.preflight import RuntimeNeed, app_check_problems, report, runtime_problems, trigger_problems
from devhost.worker_rules import SCRIPT_FILE, Violation, WorkerIndexingError, find_function_app
from shared.settings import Settings

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_APP = "function_app"
# Settings this app reads only on first use, so Settings.from_env cannot name them (shared/storage.py raises
# for storage when a table or queue is first needed, shared/tenants/onboarding.py for the redirect URI when the
# first administrator signs in): without them the host starts and a page later answers a bare 500.
APP_RUNTIME_NEEDS = (
    RuntimeNeed(
        ("STORAGE_CONNECTION_STRING", "STORAGE_ACCOUNT_NAME"), "the tenant registry, consent states and queues"
    ),
    RuntimeNeed(("ONBOARDING_REDIRECT_URI",), "the onboarding pages (the administrator's sign-in comes back there)"),
)


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


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=VALUE lines (blank lines and # comments skipped), or a local.settings.json's `Values` when the file
    ends in .json. Raises ValueError naming the line that is neither."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return {str(k): str(v) for k, v in json.loads(text).get("Values", {}).items()}
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{path}:{number} is not NAME=VALUE")
        values[name.strip()] = value.strip()
    return values


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
    if host.triggers is not None:
        lines.append("")
        lines.append("Queue and timer functions (run one now: POST /admin/functions/<name> with the master key):")
        lines.extend(host.triggers.describe())
    else:
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devhost",
        description="Serve function_app.app on 127.0.0.1 (development only) until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=7071, help="TCP port (0 picks a free one); default 7071")
    parser.add_argument(
        "--app",
        default=DEFAULT_APP,
        help="the module holding the FunctionApp (found as the worker finds it); module:attribute also names it",
    )
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger bodies get 413")
    parser.add_argument("--no-local-settings", action="store_true", help="do not load local.settings.json")
    parser.add_argument(
        "--env-file",
        type=Path,
        help="app settings to use (NAME=VALUE lines, or a local.settings.json); they override the environment",
    )
    parser.add_argument(
        "--triggers",
        action="store_true",
        help="also run queue and timer functions (needs AzureWebJobsStorage); every missing setting is named first",
    )
    parser.add_argument("--keys-file", type=Path, help="keep the host keys in this JSON file across restarts")
    parser.add_argument("--verbose", action="store_true", help="log every request (DEBUG)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    if args.env_file is not None:
        try:
            os.environ.update(read_env_file(args.env_file))
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"devhost: cannot read {args.env_file}: {exc}\n")
            return 2
    if not args.no_local_settings:
        loaded = _load_local_settings(REPO_ROOT / "local.settings.json")
        if loaded:
            logger.info("loaded %d setting(s) from local.settings.json: %s", len(loaded), ", ".join(loaded))

    try:
        app = _function_app(args.app)
        indexed = index_functions(app)
        if args.triggers:
            problems = trigger_problems(indexed[1], os.environ)
            if args.app.partition(":")[0] == DEFAULT_APP:
                problems += app_check_problems(Settings.from_env, os.environ)
                problems += runtime_problems(APP_RUNTIME_NEEDS, os.environ)
            if problems:
                sys.stderr.write(f"devhost: refusing to start: {report(problems)}\n")
                return 2
        host = DevHost(
            app,
            port=args.port,
            route_prefix=read_route_prefix(REPO_ROOT / "host.json"),
            max_body_bytes=args.max_body_bytes,
            keys=load_keys(args.keys_file) if args.keys_file else None,
            triggers=args.triggers,
            host_json=REPO_ROOT / "host.json",
            indexed=indexed,
        )
    except ValueError as exc:
        # WorkerIndexingError (the real host would serve nothing: the same message the tests print), or a
        # trigger's schedule, queue name or host.json value the host would refuse.
        sys.stderr.write(f"devhost: refusing to start: {exc}\n")
        return 2
    if args.keys_file:
        save_keys(args.keys_file, host.keys)

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
