"""The commands of `python -m sandbox <command>`, each one admin operation (sandbox.admin.operations), plus
`run-function`, which asks the development host to run a queue or timer function now. `--json` prints the
operation's JSON answer; otherwise a short human summary. Exit 0 on success, 1 when the sandbox refused the
operation (its message says why), 2 when no sandbox is running or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox.cli.client import AdminClient, NoSandboxError, OperationFailed, post_json

Build = Callable[[argparse.Namespace], dict[str, Any]]


def _values(pairs: list[str] | None) -> dict[str, Any]:
    """`column=value` pairs; a value that reads as JSON (number, true, null, "text") is taken as JSON."""
    values: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--set takes column=value, not {pair!r}")
        try:
            values[name] = json.loads(raw)
        except ValueError:
            values[name] = raw
    return values


def _labels(pairs: list[str] | None) -> dict[str, str]:
    labels = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--label takes name=value, not {pair!r}")
        labels[name] = value
    return labels


def _fault_args(a: argparse.Namespace) -> dict[str, Any]:
    """Entra and Key Vault faults answer 503 unless --status or --delay says otherwise (a delay alone: slow but
    working)."""
    args: dict[str, Any] = {"service": a.service}
    if a.service != "dataverse":
        args["status"] = a.status if a.status is not None else (None if a.delay is not None else 503)
    for key in ("delay", "count", "tenant", "endpoint", "retry_after", "org", "max_requests"):
        if getattr(a, key) is not None:
            args[key] = getattr(a, key)
    return args


# Command name -> (operation, help, arguments, how the arguments become the operation's JSON).
COMMANDS: dict[str, tuple[str, str, list[tuple[tuple[str, ...], dict[str, Any]]], Build]] = {
    "status": ("status", "the app, the tenants (and their users) and the orgs", [], lambda a: {}),
    "add-tenant": (
        "add-tenant",
        "a new customer tenant",
        [(("name",), {})],
        lambda a: {"name": a.name},
    ),
    "add-org": (
        "add-org",
        "a new org in a tenant, with our application user unless --no-app-user",
        [
            (("url",), {"help": "https://<org>.crm<N>.dynamics.com"}),
            (("--tenant",), {"required": True, "help": "tenant id, name or domain"}),
            (("--no-app-user",), {"action": "store_true"}),
            (("--rows",), {"type": int, "default": 0, "help": "accounts to seed"}),
        ],
        lambda a: {"url": a.url, "tenant": a.tenant, "application_user": not a.no_app_user, "rows": a.rows},
    ),
    "app-user": (
        "application-user",
        "create or remove our application user in an org",
        [(("--org",), {"required": True}), (("--remove",), {"action": "store_true"})],
        lambda a: {"org": a.org, "present": not a.remove},
    ),
    "add-user": (
        "add-user",
        "a user of a tenant, optionally Global Administrator and a licensed user of orgs with security roles",
        [
            (("name",), {}),
            (("--tenant",), {"required": True}),
            (("--upn",), {}),
            (("--global-admin",), {"action": "store_true"}),
            (("--org",), {"action": "append", "dest": "orgs"}),
            (("--role",), {"action": "append", "dest": "roles", "help": 'e.g. "System Administrator"'}),
        ],
        lambda a: {
            "tenant": a.tenant,
            "name": a.name,
            "upn": a.upn,
            "global_admin": a.global_admin,
            "orgs": a.orgs or [],
            "roles": a.roles or [],
        },
    ),
    "token": (
        "user-token",
        "a user token for the app's /api/me (v2 by default)",
        [
            (("--tenant",), {"required": True}),
            (("--user",), {"help": "object id, UPN or display name; default the tenant's first user"}),
            (("--version",), {"choices": ["1.0", "2.0"], "default": "2.0"}),
            (("--scope",), {"action": "append", "dest": "scopes"}),
        ],
        lambda a: {"tenant": a.tenant, "user": a.user, "version": a.version, "scopes": a.scopes},
    ),
    "disable-app": ("set-app", "disable the app registration", [], lambda a: {"enabled": False}),
    "enable-app": ("set-app", "enable the app registration again", [], lambda a: {"enabled": True}),
    "seed-rows": (
        "seed-rows",
        "insert rows (each fires the org's Create webhooks, up to 1,000 rows)",
        [
            (("--org",), {"required": True}),
            (("--table",), {"required": True}),
            (("--count",), {"type": int, "default": 10}),
            (("--prefix",), {"default": "Row"}),
            (("--no-webhooks",), {"action": "store_true"}),
        ],
        lambda a: {
            "org": a.org,
            "table": a.table,
            "count": a.count,
            "prefix": a.prefix,
            "webhooks": not a.no_webhooks,
        },
    ),
    "create-row": (
        "create-row",
        "create a row (fires Create webhooks)",
        [
            (("--org",), {"required": True}),
            (("--table",), {"required": True}),
            (("--set",), {"action": "append", "dest": "values", "metavar": "COLUMN=VALUE"}),
        ],
        lambda a: {"org": a.org, "table": a.table, "values": _values(a.values)},
    ),
    "update-row": (
        "update-row",
        "change a row (fires Update webhooks)",
        [
            (("id",), {}),
            (("--org",), {"required": True}),
            (("--table",), {"required": True}),
            (("--set",), {"action": "append", "dest": "values", "metavar": "COLUMN=VALUE", "required": True}),
        ],
        lambda a: {"org": a.org, "table": a.table, "id": a.id, "values": _values(a.values)},
    ),
    "delete-row": (
        "delete-row",
        "delete a row (fires Delete webhooks)",
        [(("id",), {}), (("--org",), {"required": True}), (("--table",), {"required": True})],
        lambda a: {"org": a.org, "table": a.table, "id": a.id},
    ),
    "fault": (
        "fault",
        "inject a fault (entra, keyvault: --status/--delay) or latency and limits (dataverse: --org, --delay)",
        [
            (("service",), {"choices": ["entra", "keyvault", "dataverse"]}),
            (("--status",), {"type": int}),
            (("--delay",), {"type": float}),
            (("--count",), {"type": int}),
            (("--tenant",), {}),
            (("--endpoint",), {"choices": ["token", "discovery"]}),
            (("--retry-after",), {"type": int}),
            (("--org",), {}),
            (("--max-requests",), {"type": int}),
        ],
        _fault_args,
    ),
    "clear-faults": ("clear-faults", "remove every fault, latency and limit", [], lambda a: {}),
    "counters": (
        "counters",
        "request counters (one count with --name and --label name=value)",
        [(("--name",), {}), (("--label",), {"action": "append", "dest": "labels"})],
        lambda a: {"name": a.name, "labels": _labels(a.labels)} if a.name else {},
    ),
    "deliveries": (
        "deliveries",
        "the latest webhook deliveries of an org",
        [(("--org",), {"required": True}), (("--last",), {"type": int, "default": 20})],
        lambda a: {"org": a.org, "last": a.last},
    ),
}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="Drive the running development sandbox (`make start`). Without a command: run the demo sandbox.",
    )
    root.add_argument("--state-dir", type=Path, default=Path(".sandbox"), help="where `make start` keeps its state")
    root.add_argument("--json", action="store_true", help="print the JSON answer")
    # --json and --state-dir also after the command (SUPPRESS keeps the value given before it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    commands = root.add_subparsers(dest="command", required=True, metavar="command")
    for name, (_, help_text, arguments, _build) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        for flags, options in arguments:
            sub.add_argument(*flags, **options)
    run = commands.add_parser("run-function", help="run a queue or timer function of the app now", parents=[common])
    run.add_argument("function")
    run.add_argument("--input", default="", help="a queue function's message text")
    return root


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "run-function":
            result = _run_function(args.state_dir, args.function, args.input)
        else:
            operation, _, _, build = COMMANDS[args.command]
            result = AdminClient(args.state_dir).run(operation, build(args))
    except NoSandboxError as exc:
        sys.stderr.write(f"sandbox: {exc}\n")
        return 2
    except ValueError as exc:
        sys.stderr.write(f"sandbox: {exc}\n")
        return 2
    except OperationFailed as exc:
        if args.json:
            sys.stdout.write(json.dumps({"error": {"code": exc.code, "message": exc.message}}) + "\n")
        sys.stderr.write(f"sandbox: {exc.message} ({exc.code})\n")
        return 1
    sys.stdout.write(json.dumps(result, indent=1, sort_keys=True) + "\n" if args.json else _human(result))
    return 0


def _run_function(state_dir: Path, function: str, text: str) -> dict[str, Any]:
    """POST /admin/functions/<name> on the development host named in dev.json, with its master key."""
    dev = state_dir / "dev.json"
    if not dev.is_file():
        raise NoSandboxError(f"{dev} not found: is `make start` running?")
    saved = json.loads(dev.read_text(encoding="utf-8"))
    url = f"{saved['app_url']}/admin/functions/{function}"
    try:
        status, body = post_json(url, {"input": text}, {"x-functions-key": saved["keys"]["master_key"]})
    except OSError as exc:
        raise NoSandboxError(f"the development host at {saved['app_url']} does not answer ({exc})") from exc
    if status != 202:
        detail = body.decode("utf-8", errors="replace") or "no queue or timer function of that name"
        raise OperationFailed(status, "not_started", f"{function}: HTTP {status}: {detail}")
    return {"function": function, "started": True}


def _human(result: dict[str, Any]) -> str:
    if "tenants" in result and "orgs" in result:
        return _status_text(result)
    lines = []
    for key, value in result.items():
        shown = json.dumps(value) if isinstance(value, list | dict) else value
        lines.append(f"{key}: {shown}")
    return "\n".join(lines) + "\n"


def _status_text(result: dict[str, Any]) -> str:
    app = result["app"]
    state = "enabled" if app["enabled"] else "DISABLED"
    lines = [f"app     {app['name']}  client id {app['client_id']}  ({state})  at {app['url']}", "", "tenants:"]
    for tenant in result["tenants"]:
        marks = " (home)" if tenant["home"] else (" consented" if tenant["consented"] else "")
        lines.append(f"  {tenant['name']:<12} {tenant['id']}{marks}")
        for user in tenant["users"]:
            admin = "  Global Administrator" if user["global_admin"] else ""
            lines.append(f"      {user['upn']:<40} {user['object_id']}{admin}")
    lines += ["", "orgs:"]
    for org in result["orgs"]:
        rows = ", ".join(f"{n} {t}" for t, n in org["rows"].items())
        app_user = "application user" if org["application_user"] else "NO application user"
        lines.append(f"  {org['url']:<42} tenant {org['tenant'][:8]}…  {app_user}; {rows}")
    return "\n".join(lines) + "\n"
