"""`python -m devhost.start` (what `make start` runs; `--fresh` is `make start-clean`): Azurite, the development
sandbox and the function app with its queue and timer triggers, until Ctrl-C. Prints the app's URL and keys and
the seeded tenants and orgs, and writes them to <state>/dev.json; writes local.settings.json for `func start`.
Exit 2 when a part does not come up (the message says which), 1 when one stops on its own later.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from devhost.start.stack import AZURITE_DEFAULT_PORTS, REPO_ROOT, DevStack, StartError, StartOptions

logger = logging.getLogger(__name__)


def _ports(text: str) -> dict[str, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("three ports: blob,queue,table")
    return dict(zip(("blob", "queue", "table"), parts, strict=True))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devhost.start", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=REPO_ROOT / ".sandbox", help="default .sandbox/")
    parser.add_argument("--port", type=int, default=7071, help="the function app's port (0: a free one)")
    parser.add_argument(
        "--azurite-ports",
        type=_ports,
        default=dict(AZURITE_DEFAULT_PORTS),
        help="blob,queue,table (default 10000,10001,10002, what UseDevelopmentStorage=true names)",
    )
    parser.add_argument(
        "--local-settings",
        type=Path,
        default=REPO_ROOT / "local.settings.json",
        help="where to write the settings for `func start` (never over a file make start did not write)",
    )
    parser.add_argument("--no-local-settings", action="store_true", help="do not write that file")
    parser.add_argument("--fresh", action="store_true", help="forget the saved sandbox and storage first")
    parser.add_argument(
        "--no-app",
        action="store_true",
        help="start Azurite and the sandbox only, for `func start` with the local.settings.json written here",
    )
    return parser


def summary(stack: DevStack) -> str:
    dev: dict[str, Any] = stack.info["world"]
    keys = stack.state_dir / "dev.json"
    ports = ",".join(str(p) for p in stack.options.azurite_ports.values())
    app_line = (
        f"   app            {stack.app_url}   (onboarding: {stack.app_url}/api/onboard)"
        if stack.options.run_app
        else f"   app            not started: run `func start` (it reads {stack.options.local_settings_target})"
    )
    lines = [
        "",
        f"== make start: the development loop is running (Ctrl-C stops it; state is kept in {stack.state_dir})",
        app_line,
        f"   keys           master, host and function keys in {keys}",
        f"   storage        Azurite, blob/queue/table on 127.0.0.1 ports {ports}",
        "   sandbox        python -m sandbox status | token | create-row | update-row | fault | counters … --json",
        f"   app client id  {dev['app']['client_id']}",
        "",
        "   tenants:",
    ]
    for tenant in dev["tenants"]:
        if tenant["home"]:
            continue
        lines.append(f"     {tenant['name']:<12} {tenant['id']}")
        for user in tenant["users"]:
            role = "  (Global Administrator, System Administrator)" if user["global_admin"] else ""
            lines.append(f"        sign in as {user['upn']}{role}")
    lines.append("   orgs:")
    for org in dev["orgs"]:
        app_user = "our application user" if org["application_user"] else "no application user yet"
        rows = ", ".join(f"{count} {table}" for table, count in org["rows"].items())
        lines.append(f"     {org['url']:<40} {app_user}; {rows}")
    lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    options = StartOptions(
        state_dir=args.state_dir,
        port=args.port,
        azurite_ports=args.azurite_ports,
        local_settings_target=None if args.no_local_settings else args.local_settings,
        fresh=args.fresh,
        run_app=not args.no_app,
    )
    stack = DevStack(options)
    try:
        stack.start()
    except StartError as exc:
        sys.stderr.write(f"make start: {exc}\n")
        return 2
    code = 0
    try:
        sys.stdout.write(stack.banner + summary(stack))
        sys.stdout.flush()
        while not stop.wait(0.5):
            failed = stack.failed_child()
            if failed is not None:
                sys.stderr.write(f"make start: the {failed} stopped; stopping the rest\n")
                code = 1
                break
    finally:
        sys.stdout.write("make start: stopping (the sandbox saves its state)\n")
        sys.stdout.flush()
        stack.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
