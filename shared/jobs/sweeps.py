"""The scheduled S2S jobs over every onboarded tenant: incremental sync, tenant health, certificate expiry.

A sweep runs tenants with bounded concurrency (per-org limits are still enforced by the Dataverse client's
governor), isolates them (a failing tenant is recorded on its registry entry and never stops the others), and
keeps to a time budget: it stops starting new work when the budget is spent, and a sync in progress stops at its
next page boundary, leaving a checkpoint the next run continues from. Every sweep ends with one structured summary.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from shared.errors import S2SError, TokenAcquisitionError
from shared.jobs.fanout import HEALTH_STATUSES
from shared.jobs.units import SweepUnit, UnitResult
from shared.telemetry import dims
from shared.tenants.registry import Tenant, TenantStatus, Verification, utc_now

if TYPE_CHECKING:
    from shared.jobs.leases import UnitLease

logger = logging.getLogger(__name__)

Progress = Callable[[str, str, str], None]  # (tenant id, outcome, detail)


@dataclass
class SweepSummary:
    job: str
    tenants_ok: int = 0
    tenants_failed: int = 0
    tenants_skipped: int = 0
    rows: int = 0
    throttle_waits: int = 0
    duration_seconds: float = 0.0
    stopped_by_time_budget: bool = False
    failures: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def explain_failure(exc: BaseException) -> tuple[str, str]:
    """(code, message) for a tenant's failure. The code is what ``python -m cli explain`` takes (``AADSTS65001``,
    ``entra_unreachable``, ``certificate_error``, …); the message says what happened and, for Entra, what it
    means and what to do. Never secret: error messages carry no token, assertion or key."""
    if isinstance(exc, TokenAcquisitionError):
        # Meaning and fix first: Entra's own description is long and is what a length limit may cut.
        parts = [exc.meaning, exc.fix]
        if exc.correlation_id:
            parts.append(f"Entra correlation id {exc.correlation_id}.")
        parts.append(exc.message)
        return exc.lookup_code, " ".join(p for p in parts if p)
    if isinstance(exc, S2SError):
        return exc.code, exc.message
    return type(exc).__name__, str(exc)


@dataclass(frozen=True)
class TenantOutcome:
    ok: bool
    rows: int = 0
    detail: str = ""
    finished: bool = True


class Sweep:
    def __init__(
        self,
        *,
        concurrency: int,
        time_budget_seconds: float,
        throttle_waits: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._concurrency = concurrency
        self._budget = time_budget_seconds
        self._throttle_waits = throttle_waits
        self._clock = clock

    def run(
        self,
        job: str,
        tenants: Iterable[Tenant],
        work: Callable[[Tenant, Callable[[], bool]], TenantOutcome],
        *,
        on_failure: Callable[[Tenant, str], None] | None = None,
        progress: Progress | None = None,
    ) -> SweepSummary:
        started = self._clock()
        deadline = started + self._budget
        waits_before = self._throttle_waits()
        summary = SweepSummary(job)
        lock = threading.Lock()

        def past_deadline() -> bool:
            return self._clock() >= deadline

        def one(tenant: Tenant) -> None:
            if past_deadline():
                with lock:
                    summary.tenants_skipped += 1
                    summary.stopped_by_time_budget = True
                if progress:
                    progress(tenant.tenant_id, "skipped", "time budget spent")
                return
            try:
                outcome = work(tenant, past_deadline)
            except Exception as exc:
                code, message = explain_failure(exc)
                reason = f"{code}: {message}"[:500]
                with lock:
                    summary.tenants_failed += 1
                    summary.failures[tenant.tenant_id] = reason
                logger.warning(
                    "%s failed for tenant %s: %s",
                    job,
                    tenant.tenant_id,
                    reason,
                    exc_info=not isinstance(exc, S2SError),
                    extra=dims(
                        "sweep.tenant_failed",
                        tenant_id=tenant.tenant_id,
                        org=getattr(exc, "org_url", None),
                        correlation_id=getattr(exc, "correlation_id", None),
                        client_request_id=getattr(exc, "client_request_id", None),
                        service_request_id=getattr(exc, "service_request_id", None),
                        job=job,
                        error_code=code,
                        detail=reason,
                    ),
                )
                if on_failure is not None:
                    try:
                        on_failure(tenant, reason)
                    except Exception:
                        logger.exception("Could not record the %s failure of tenant %s", job, tenant.tenant_id)
                if progress:
                    progress(tenant.tenant_id, "failed", reason)
                return
            with lock:
                if outcome.ok:
                    summary.tenants_ok += 1
                else:
                    summary.tenants_failed += 1
                    summary.failures[tenant.tenant_id] = outcome.detail[:500]
                summary.rows += outcome.rows
                if not outcome.finished:
                    summary.stopped_by_time_budget = True
            if not outcome.ok:
                logger.warning(
                    "%s failed for tenant %s: %s",
                    job,
                    tenant.tenant_id,
                    outcome.detail[:500],
                    extra=dims("sweep.tenant_failed", tenant_id=tenant.tenant_id, job=job, detail=outcome.detail[:500]),
                )
            if progress:
                progress(tenant.tenant_id, "ok" if outcome.ok else "failed", outcome.detail)

        with ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix=f"sweep-{job}") as pool:
            list(pool.map(one, tenants))
        summary.duration_seconds = round(self._clock() - started, 3)
        summary.throttle_waits = self._throttle_waits() - waits_before
        # One structured line per run, for dashboards and alerts.
        logger.info(
            "sweep summary %s",
            json.dumps(summary.to_dict(), sort_keys=True),
            extra=dims(
                "sweep.summary",
                job=job,
                tenants_ok=summary.tenants_ok,
                tenants_failed=summary.tenants_failed,
                tenants_skipped=summary.tenants_skipped,
                rows=summary.rows,
                throttle_waits=summary.throttle_waits,
                duration_s=summary.duration_seconds,
                stopped_by_time_budget=summary.stopped_by_time_budget,
            ),
        )
        return summary


class JobRunner:
    """The three jobs over the worker's services (see shared.bootstrap.Services)."""

    def __init__(self, services: Any) -> None:
        self._services = services
        settings = services.settings
        self._sweep = Sweep(
            concurrency=settings.sweep_concurrency,
            time_budget_seconds=settings.sweep_time_budget_seconds,
            throttle_waits=self._total_throttle_waits,
        )

    def _total_throttle_waits(self) -> int:
        return int(sum(g.throttle_waits for g in self._services.dataverse.governors.all()))

    def _tenants(self, statuses: Iterable[TenantStatus], tenant_id: str | None) -> list[Tenant]:
        registry = self._services.registry
        if tenant_id is not None:
            return [registry.get_tenant(tenant_id)]
        wanted = set(statuses)
        if len(wanted) == 1:  # one status: let Table Storage filter instead of shipping every row here
            return list(registry.iter_tenants(status=next(iter(wanted)), page_size=1000))
        return [t for t in registry.iter_tenants(page_size=1000) if t.status in wanted]

    def run_sync(self, tenant_id: str | None = None, progress: Progress | None = None) -> SweepSummary:
        from shared.jobs.sync import TableSync

        services = self._services
        settings = services.settings
        tenants = [t for t in self._tenants([TenantStatus.ACTIVE], tenant_id) if t.status is TenantStatus.ACTIVE]

        def sync_tenant(tenant: Tenant, past_deadline: Callable[[], bool]) -> TenantOutcome:
            syncer = TableSync(
                checkpoints=services.sync_checkpoints,
                sink=services.sync_sink,
                page_size=settings.sync_page_size,
                deadline=past_deadline,
            )
            rows, finished = 0, True
            for org in tenant.active_org_urls:
                client = services.dataverse.for_org(tenant.tenant_id, org, bulk=True)
                for table, columns in settings.sync_tables:
                    if past_deadline():
                        return TenantOutcome(True, rows, "paused by the time budget", finished=False)
                    result = syncer.run(client, tenant.tenant_id, table, columns)
                    rows += result.rows + result.deletions
                    finished = finished and result.finished
            return TenantOutcome(True, rows, f"{rows} changes", finished)

        return self._sweep.run(
            "sync", tenants, sync_tenant, on_failure=self._failure_recorder("sync"), progress=progress
        )

    def sync_unit(self, unit: SweepUnit, past_deadline: Callable[[], bool], lease: UnitLease) -> UnitResult:
        """One fanned-out sync unit: every table of one org, checkpoints saved under the unit's lease. Throttle
        waits are the org governor's (one unit per org at a time, so they are this unit's in this process)."""
        from shared.jobs.leases import FencedCheckpointStore
        from shared.jobs.sync import TableSync

        services = self._services
        settings = services.settings
        tenant = services.registry.get_tenant(unit.tenant_id)
        if unit.org_url not in tenant.active_org_urls:
            return UnitResult(True, detail=f"{unit.org_url} is no longer an active org of the tenant: nothing to do")
        client = services.dataverse.for_org(tenant.tenant_id, unit.org_url, bulk=True)
        governor = services.dataverse.governors.for_org(client.org_url)
        waits_before = governor.throttle_waits
        syncer = TableSync(
            checkpoints=FencedCheckpointStore(services.sync_checkpoints, lease),
            sink=services.sync_sink,
            page_size=settings.sync_page_size,
            deadline=past_deadline,
        )
        rows, finished = 0, True
        for index, (table, columns) in enumerate(settings.sync_tables):
            # The first table starts whatever the clock says: every segment saves at least one page, so a unit
            # always progresses however small the budget.
            if index and past_deadline():
                finished = False
                break
            result = syncer.run(client, tenant.tenant_id, table, columns)
            rows += result.rows + result.deletions
            finished = finished and result.finished
        waits = int(governor.throttle_waits - waits_before)
        return UnitResult(True, rows, waits, finished, f"{rows} changes")

    def health_unit(self, unit: SweepUnit, _past_deadline: Callable[[], bool], _lease: UnitLease) -> UnitResult:
        """One fanned-out health unit: the tenant's verification (which records its own outcome on the tenant)."""

        tenant = self._services.registry.get_tenant(unit.tenant_id)
        outcome = self._health_check(tenant)
        return UnitResult(outcome.ok, detail=outcome.detail)

    def record_unit_failure(self, unit: SweepUnit, reason: str) -> None:
        """A poisoned unit on its tenant's registry entry (status kept, the reason in its last verification)."""
        self._record_failure(unit.job, unit.tenant_id, reason)

    def _health_check(self, tenant: Tenant) -> TenantOutcome:
        services = self._services
        result = services.onboarding.verify(tenant.tenant_id, actor="health job")
        if result.status is not tenant.status:
            logger.warning(
                "Health: tenant %s moved %s -> %s: %s",
                tenant.tenant_id,
                tenant.status,
                result.status,
                result.message,
                extra=dims(
                    "tenant.health_changed",
                    tenant_id=tenant.tenant_id,
                    from_status=str(tenant.status),
                    to_status=str(result.status),
                    error_code=result.error_code,
                ),
            )
        # A verification that failed without changing the status (a transient Entra failure keeps an active
        # tenant active) is still a failure of this run.
        ok = result.status is TenantStatus.ACTIVE and result.error_code is None
        return TenantOutcome(ok, 0, f"{result.status}: {result.error_code or ''} {result.message or ''}".strip())

    def run_health(self, tenant_id: str | None = None, progress: Progress | None = None) -> SweepSummary:
        def check(tenant: Tenant, _past_deadline: Callable[[], bool]) -> TenantOutcome:
            return self._health_check(tenant)

        return self._sweep.run(
            "health",
            self._tenants(HEALTH_STATUSES, tenant_id),
            check,
            on_failure=self._failure_recorder("health"),
            progress=progress,
        )

    def run_certificate_expiry(self) -> dict[str, Any]:
        """Reports the certificate in use (a warning inside a threshold) and any newer version that does not sign
        yet: an error when Entra ID refused it ("new version not registered on the app"), so a version Key Vault
        renewed on its own is noticed while the one in use still works. Says so when secretless."""
        settings = self._services.settings
        described = self._services.tokens.assertion_source.describe()
        if described.get("credential") != "certificate":
            report = {
                "event": "certificate_expiry",
                "credential": described.get("credential"),
                "message": "Secretless credential (managed identity federation): nothing expires.",
            }
            logger.info("certificate expiry %s", json.dumps(report))
            return report
        days_left = float(described["days_left"])
        crossed = [d for d in settings.certificate_expiry_warning_days if days_left <= d]
        waiting = described.get("waiting_version")
        problem = waiting.get("problem") if isinstance(waiting, dict) else None
        report = {
            "event": "certificate_expiry",
            "credential": "certificate",
            "source": described.get("source"),
            "version": described.get("version"),
            "sha1_thumbprint": described.get("sha1_thumbprint"),
            "not_after": described.get("not_after"),
            "days_left": days_left,
            "threshold_days": min(crossed) if crossed else None,
            "proven": described.get("proven"),
            "problem": problem,
            "waiting_version": waiting,
            "checked_at": utc_now(),
        }
        if isinstance(waiting, dict) and waiting.get("status") == "not_registered":
            logger.error("certificate expiry %s", json.dumps(report))
        elif crossed or problem:
            logger.warning("certificate expiry %s", json.dumps(report))
        else:
            logger.info("certificate expiry %s", json.dumps(report))
        return report

    def _failure_recorder(self, job: str) -> Callable[[Tenant, str], None]:
        return lambda tenant, reason: self._record_failure(job, tenant.tenant_id, reason)

    def _record_failure(self, job: str, tenant_id: str, reason: str) -> None:
        """Records a tenant's failed run on its registry entry (code and explanation), keeping its status: a
        failure the job could not interpret says nothing about the tenant's consent or application user."""
        registry = self._services.registry
        current = registry.find_tenant(tenant_id)
        if current is None:
            logger.warning("%s: tenant %s left the registry during the run", job, tenant_id)
            return
        code, _, message = reason.partition(": ")
        registry.record(
            tenant_id,
            current.status,
            reason=f"{job} failed: {reason}"[:300],
            actor=f"{job} job",
            verification=Verification(utc_now(), f"{job}_failed", code[:100], (message or reason)[:500]),
        )
