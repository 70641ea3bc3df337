"""Operator commands over the same services the Functions use: tokens and the certificate in use.

Every command prints plain text, or JSON with ``--json``; nothing printed is secret (tokens are shown as their
non-secret claims only). Exit codes: 0 ok, 1 the operation failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cli.terminal_text import terminal_safe
from shared.errors import S2SError

# Claims worth showing; the signature and anything personal are left out.
_SHOWN_CLAIMS = ("aud", "iss", "tid", "appid", "azp", "oid", "idtyp", "roles", "ver", "iat", "nbf", "exp")


def load_env_file(path: Path) -> None:
    """Load ``NAME=value`` lines (as ``python -m sandbox`` writes them) into this process's environment."""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            os.environ[name.strip()] = value.strip()


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cli", description=__doc__)
    parser.add_argument("--env-file", type=Path, help="load NAME=value settings from this file first")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="acquire an app-only token for a tenant and org; show its claims")
    token.add_argument("--tenant", required=True, help="customer tenant id (GUID)")
    token.add_argument("--org", required=True, help="Dataverse org URL, e.g. https://contoso.crm.dynamics.com")
    token.add_argument("--repeat", type=int, default=1, help="ask N times (the second comes from the cache)")
    commands.add_parser(
        "certificate",
        help="show the client certificate in use (thumbprints, expiry, version) and any newer version waiting, "
        "with why it waits and the fix",
    )
    whoami = commands.add_parser("whoami", help="call WhoAmI on an org as the application user (or a user)")
    whoami.add_argument("--tenant", required=True, help="customer tenant id (GUID)")
    whoami.add_argument("--org", required=True, help="Dataverse org URL")
    whoami.add_argument("--as-user", metavar="OBJECT_ID", help="impersonate this Entra object id (CallerObjectId)")
    tenants = commands.add_parser("tenants", help="the tenant registry: list, show, verify, offboard, remove-org")
    tenant_commands = tenants.add_subparsers(dest="tenants_command", required=True)
    listing = tenant_commands.add_parser("list", help="list tenants, page by page")
    listing.add_argument("--status", help="only tenants in this status (e.g. active)")
    listing.add_argument("--page-size", type=int, default=100)
    listing.add_argument("--continuation", help="the token printed with the previous page")
    for name, text in (
        ("show", "a tenant with its history"),
        ("verify", "re-verify now: token + WhoAmI"),
        ("offboard", "stop serving a tenant"),
    ):
        sub = tenant_commands.add_parser(name, help=text)
        sub.add_argument("tenant_id")
        if name == "offboard":
            sub.add_argument("--reason", default="offboarded by an operator")
    remove = tenant_commands.add_parser("remove-org", help="disconnect one organisation of a tenant")
    remove.add_argument("tenant_id")
    remove.add_argument("org_url")
    remove.add_argument("--reason", default="removed by an operator")
    secret = tenant_commands.add_parser(
        "webhook-secret", help="issue a new webhook secret for one org (HttpHeader auth type); shown once"
    )
    secret.add_argument("tenant_id", nargs="?", help="the tenant (not with --all)")
    which = secret.add_mutually_exclusive_group(required=True)
    which.add_argument("--org", help="the org whose webhooks carry it, e.g. https://contoso.crm.dynamics.com")
    which.add_argument(
        "--all",
        action="store_true",
        help="every active org of every active tenant (after rotating the function key or moving the receiver)",
    )
    secret.add_argument(
        "--at-once",
        action="store_true",
        help="with --org: the replaced secrets stop working now, not after WEBHOOK_SECRET_OVERLAP_SECONDS (a leak)",
    )
    explain = commands.add_parser("explain", help="what an AADSTS or Dataverse error code means here, and the fix")
    explain.add_argument("code", help="e.g. 700016, AADSTS65001, 0x80072560, disabled, 'expired delta token'")
    jobs = commands.add_parser("jobs", help="scheduled jobs: run one now, a sweep's status, work the queue")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    run = job_commands.add_parser(
        "run", help="run sync, health or certificate-expiry now (a sweep is fanned out and its queue worked here)"
    )
    run.add_argument("job", choices=["sync", "health", "certificate-expiry"])
    run.add_argument("--tenant", help="only this tenant (default: all that the job covers)")
    run.add_argument(
        "--single-invocation",
        action="store_true",
        help="the old way: the whole sweep in this one process, without the queue",
    )
    status = job_commands.add_parser("status", help="a fanned-out sweep's aggregated status (default: the latest)")
    status.add_argument("--run", help="the run id (sync-YYYYMMDDTHHMMSSZ-xxxxxx); without it, the latest runs")
    work = job_commands.add_parser("work", help="work the sweep queue in this process until it stays empty")
    work.add_argument("--idle-seconds", type=float, default=3.0, help="stop after the queue was empty this long")
    work.add_argument("--max-seconds", type=float, default=3600.0)
    poison = commands.add_parser("poison", help="webhook events that could not be processed")
    poison_commands = poison.add_subparsers(dest="poison_command", required=True)
    poison_commands.add_parser("list", help="peek at up to 32 poison messages with their reasons")
    for name, text in (("show", "one poison message in full"), ("replay", "send one back to the work queue")):
        sub = poison_commands.add_parser(name, help=text)
        sub.add_argument("message_id")
    return parser


def _progress_bar(status: Any) -> str:
    """``[#######.............]  35% 350/1000 units, 2 failed, 12,345 rows``."""
    planned = max(status.planned, 1)
    finished = status.done + status.failed
    filled = int(20 * finished / planned)
    return (
        f"[{'#' * filled}{'.' * (20 - filled)}] {100 * finished // planned:3d}% {finished}/{status.planned} units, "
        f"{status.failed} failed, {status.rows:,} rows"
    )


def _queue_runner(services: Any, threads: int) -> Any:
    from shared.jobs.queue_runner import LocalQueueRunner
    from shared.jobs.units import SWEEP_POISON_QUEUE

    settings = services.settings
    worker = services.sweep_worker
    return LocalQueueRunner(
        services.sweep_queue(),
        worker.handle,
        poison_queue=services.storage.queue(SWEEP_POISON_QUEUE),
        batch_size=threads,
        new_batch_threshold=max(1, threads // 2),
        max_dequeue_count=settings.webhook_max_dequeue_count,
        retry_visibility=min(30.0, settings.sweep_lease_seconds),
    )


def _sweep_status(services: Any, args: argparse.Namespace) -> Any:
    ledger = services.run_ledger
    if args.run:
        status = ledger.get_status(args.run)
        if sys.stdout.isatty() and not args.json:
            print(terminal_safe(_progress_bar(status)))
        return status.to_dict()
    runs = [ledger.get_status(run_id, with_failures=False) for run_id in ledger.list_runs(10)]
    if sys.stdout.isatty() and not args.json:
        for status in runs:
            print(terminal_safe(f"{status.run_id} {_progress_bar(status)}"))
    return {"runs": [s.to_dict() for s in runs]}


def _fanned_out_run(services: Any, args: argparse.Namespace) -> Any:
    """Schedule a run as the timer does, then work the queue here until the run is finished, with progress on
    stderr (a bar on a terminal, a line a second otherwise)."""
    import threading
    import time

    scheduled = services.sweep_scheduler.start(args.job, args.tenant)
    ledger = services.run_ledger
    finished = threading.Event()
    last = [0.0]

    def until() -> bool:
        now = time.monotonic()
        if now - last[0] >= 1.0 or finished.is_set():
            last[0] = now
            status = ledger.get_status(scheduled.run_id, with_failures=False)
            line = terminal_safe(f"{scheduled.run_id} {_progress_bar(status)}")
            sys.stderr.write(f"\r{line}" if sys.stderr.isatty() else f"{line}\n")
            sys.stderr.flush()
            if status.finished:
                finished.set()
        return finished.is_set()

    _queue_runner(services, services.settings.sweep_concurrency).run(until=until, max_seconds=6 * 3600)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    return ledger.get_status(scheduled.run_id).to_dict()


def _jobs(services: Any, args: argparse.Namespace) -> Any:
    if args.jobs_command == "status":
        return _sweep_status(services, args)
    if args.jobs_command == "work":
        stats = _queue_runner(services, services.settings.sweep_concurrency).run(
            idle_seconds=args.idle_seconds, max_seconds=args.max_seconds
        )
        return {"processed": stats.processed, "outcomes": stats.outcomes, "failed_attempts": stats.failed_attempts}
    if args.job == "certificate-expiry":
        return services.jobs.run_certificate_expiry()
    if not args.single_invocation:
        return _fanned_out_run(services, args)
    done = [0]

    def progress(tenant_id: str, outcome: str, detail: str) -> None:
        # Progress goes to stderr, so --json output on stdout stays machine-readable.
        done[0] += 1
        sys.stderr.write(terminal_safe(f"[{done[0]}] {tenant_id} {outcome}: {detail[:120]}") + "\n")
        sys.stderr.flush()

    runner = services.jobs.run_sync if args.job == "sync" else services.jobs.run_health
    return runner(args.tenant, progress=progress).to_dict()


def _poison(services: Any, args: argparse.Namespace) -> Any:
    store = services.webhook_store
    try:
        if args.poison_command == "list":
            return {"messages": store.list_poison()}
        if args.poison_command == "show":
            return store.show_poison(args.message_id)
        return {"replayed": store.replay_poison(args.message_id)}
    except KeyError:
        raise ValueError(f"no poison message with id {args.message_id}") from None


_REVOKE_ADVICE = (
    "Jobs no longer run for this tenant and its tokens were dropped. To withdraw consent, the customer's "
    "administrator deletes the enterprise application (application id {client_id}) in the Microsoft Entra admin "
    "center > Enterprise applications, and removes its application user from each environment in the Power "
    "Platform admin center > Environments > Settings > Application users."
)


def _tenants(services: Any, args: argparse.Namespace) -> Any:
    from shared.tenants.registry import TenantStatus

    registry = services.registry
    if args.tenants_command == "list":
        status = TenantStatus(args.status) if args.status else None
        page = registry.list_tenants(status=status, page_size=args.page_size, continuation=args.continuation)
        return {"tenants": [t.to_dict() for t in page.tenants], "continuation": page.continuation}
    if args.tenants_command == "show":
        tenant = registry.get_tenant(args.tenant_id)
        return {**tenant.to_dict(), "history": [vars(h) for h in registry.history(args.tenant_id)]}
    if args.tenants_command == "webhook-secret":
        from shared.tenants.webhook_upkeep import WebhookUpkeep

        upkeep = WebhookUpkeep(services.settings, registry, services.dataverse)
        header = services.settings.webhook_secret_header
        if args.all:
            if args.tenant_id or args.at_once:
                raise ValueError(
                    "--all rotates every tenant's orgs with the overlap: leave out the tenant id and --at-once"
                )
            return {"rotations": [rotation.to_dict(header) for rotation in upkeep.rotate_all()]}
        if not args.tenant_id:
            raise ValueError("--org needs the tenant id: tenants webhook-secret <tenant> --org <org url>")
        return upkeep.rotate(args.tenant_id, args.org, at_once=args.at_once).to_dict(header)
    if args.tenants_command == "verify":
        return services.onboarding.verify(args.tenant_id, actor="operator CLI").to_dict()
    if args.tenants_command == "remove-org":
        from shared.tenants.webhook_upkeep import WebhookUpkeep

        upkeep = WebhookUpkeep(services.settings, registry, services.dataverse)
        before = registry.get_tenant(args.tenant_id)
        removals = upkeep.remove(args.tenant_id, (args.org_url,), frozenset(before.active_org_urls))
        tenant = registry.remove_org(args.tenant_id, args.org_url, actor="operator CLI", reason=args.reason)
        return {
            "tenant_id": tenant.tenant_id,
            "status": tenant.status.value,
            "orgs": [org.to_dict() for org in tenant.orgs],
            "next_steps": "Webhooks from that organisation are now refused and it is no longer synced.",
            "left_in_customer_environment": upkeep.left_in_orgs(removals),
        }
    from shared.tenants.webhook_upkeep import WebhookUpkeep

    result = services.onboarding.offboard(args.tenant_id, actor="operator CLI", reason=args.reason)
    upkeep = WebhookUpkeep(services.settings, registry, services.dataverse)
    return {
        "tenant_id": result.tenant_id,
        "status": result.status.value,
        "next_steps": _REVOKE_ADVICE.format(client_id=services.settings.entra_client_id),
        "left_in_customer_environments": upkeep.left_in_orgs(result.removals),
    }


def _token_report(services: Any, tenant: str, org: str, repeat: int) -> list[dict[str, Any]]:
    import jwt

    reports = []
    for _ in range(max(1, repeat)):
        token = services.tokens.get_token(tenant, org)
        claims = jwt.decode(token.token, options={"verify_signature": False})
        reports.append(
            {
                "tenant_id": token.tenant_id,
                "resource": token.resource,
                "source": token.source,
                "expires_on": int(token.expires_on),
                "claims": {k: claims[k] for k in _SHOWN_CLAIMS if k in claims},
            }
        )
    return reports


def _certificate_report(services: Any) -> dict[str, Any]:
    """The version in use (top level) and ``waiting_version``: a newer version that does not sign yet, with its
    status (``not_registered``: Entra ID refused it; ``unproven``: its check proved nothing yet), why and the fix."""
    described = dict(services.tokens.assertion_source.describe())
    if described.get("credential") == "certificate" and described.get("waiting_version") is None:
        described["waiting_version"] = "none: no newer version is waiting"
    return described


def _print(data: Any, as_json: bool) -> None:
    """JSON (``ensure_ascii``: every control and non-ASCII character is a ``\\uXXXX`` escape, so the document
    stays valid and nothing reaches the terminal raw) or text lines, each passed through ``terminal_safe``:
    stored values (a contact, a reason, who signed in) may hold anything a browser or an org sent."""
    if as_json:
        print(json.dumps(data, indent=2, default=str, ensure_ascii=True))
        return
    rows = data if isinstance(data, list) else [data]
    for row in rows:
        for key, value in row.items():
            if isinstance(value, dict):
                print(terminal_safe(f"{key}:"))
                for k, v in value.items():
                    print(terminal_safe(f"  {k}: {v}"))
            else:
                print(terminal_safe(f"{key}: {value}"))
        print()


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "explain":
        # Needs no settings or services: operators use it while something is broken.
        from dataclasses import asdict

        from shared.troubleshooting import explain

        entry = explain(args.code)
        if entry is None:
            _print(
                {"error": "unknown_code", "message": f"No entry for {args.code[:40]!r}; see docs/troubleshooting.md"},
                args.json,
            )
            return 1
        details = asdict(entry)
        details.pop("aliases")
        _print(details, args.json)
        return 0
    if args.env_file:
        load_env_file(args.env_file)
    from shared.bootstrap import build_services, installed_services
    from shared.dataverse.org_url import InvalidOrgUrlError
    from shared.errors import ConfigurationError, InvalidTenantError
    from shared.jobs.runs import RunNotFoundError
    from shared.settings import Settings

    try:
        services = installed_services() or build_services(Settings.from_env())
        if args.command == "token":
            _print(_token_report(services, args.tenant, args.org, args.repeat), args.json)
        elif args.command == "whoami":
            client = services.dataverse.for_org(args.tenant, args.org)
            who = client.whoami(caller_object_id=args.as_user)
            _print(
                {
                    "org_url": client.org_url,
                    "tenant_id": client.tenant_id,
                    "user_id": who.user_id,
                    "business_unit_id": who.business_unit_id,
                    "organization_id": who.organization_id,
                    "impersonating": args.as_user,
                },
                args.json,
            )
        elif args.command == "tenants":
            _print(_tenants(services, args), args.json)
        elif args.command == "jobs":
            _print(_jobs(services, args), args.json)
        elif args.command == "poison":
            _print(_poison(services, args), args.json)
        else:
            _print(_certificate_report(services), args.json)
    except (ConfigurationError, InvalidOrgUrlError, InvalidTenantError, RunNotFoundError) as exc:
        _print({"error": exc.code, "message": exc.message}, args.json)
        return 2
    except S2SError as exc:
        details = exc.to_dict() if hasattr(exc, "to_dict") else {"error": exc.code}
        _print({**details, "message": exc.message}, args.json)
        return 1
    except ValueError as exc:
        _print({"error": "invalid_argument", "message": str(exc)}, args.json)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
