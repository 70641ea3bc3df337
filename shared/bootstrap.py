"""The composition root: the only place that turns Settings into concrete adapters.

Functions call ``get_services()``; it builds everything on first use (never at import time) and keeps it for
the worker's life, because MSAL apps and their token caches must be long-lived. Tests pass fakes to
``build_services`` instead.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.auth.azure_identity import azure_credential
from shared.auth.certificate_canary import HomeTenantCanary
from shared.auth.certificate_sources import (
    CertificateProvider,
    CertificateSource,
    FileCertificateSource,
    KeyVaultCertificateSource,
)
from shared.auth.client_assertions import (
    CertificateAssertionSource,
    ClientAssertionSource,
    ManagedIdentityAssertionSource,
)
from shared.auth.token_provider import TenantTokenProvider
from shared.dataverse.clients import DataverseClients
from shared.dataverse.throttle_board import THROTTLE_TABLE, ThrottleBoard
from shared.jobs.fanout import UNITS_TABLE, SweepScheduler, UnitHistory
from shared.jobs.housekeeping import Housekeeping, TenantHistoryRetention
from shared.jobs.runs import RUNS_TABLE, RunLedger
from shared.jobs.sinks import BlobNdjsonSink, ChangeSink
from shared.jobs.sweeps import JobRunner
from shared.jobs.sync import SYNC_STATE_TABLE, CheckpointStore
from shared.jobs.units import SWEEP_POISON_QUEUE, SWEEP_QUEUE
from shared.jobs.workers import SweepWorker
from shared.settings import CredentialSource, Settings
from shared.signin.administrators import AdministratorSignIn
from shared.signin.user_tokens import JwksCache, UserTokenValidator
from shared.storage import StorageClients
from shared.tenants.consent_states import CONSENT_STATES_TABLE, ConsentStateStore
from shared.tenants.onboarding import VERIFY_QUEUE, OnboardingService
from shared.tenants.org_index import ORG_INDEX_TABLE, OrgIndex
from shared.tenants.orgs import OrgRecord
from shared.tenants.registry import HISTORY_TABLE, TENANTS_TABLE, TenantRegistry
from shared.webhooks.intake import WebhookIntake
from shared.webhooks.processing import CHANGES_TABLE, WebhookProcessor
from shared.webhooks.store import EVENTS_QUEUE, EVENTS_TABLE, PAYLOAD_CONTAINER, POISON_QUEUE, WebhookStore

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential


class Services:
    """Everything the functions use, built once per worker. Storage-backed parts are built on first use, so a
    function that does not need storage works without storage settings."""

    def __init__(
        self,
        settings: Settings,
        tokens: TenantTokenProvider,
        dataverse: DataverseClients,
        storage: StorageClients | None = None,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.dataverse = dataverse
        self._storage = storage
        self._lock = threading.Lock()
        self._registry: TenantRegistry | None = None
        self._states: ConsentStateStore | None = None
        self._onboarding: OnboardingService | None = None
        self._org_index: OrgIndex | None = None
        self._webhook_store: WebhookStore | None = None
        self._webhook_intake: WebhookIntake | None = None
        self._webhook_processor: WebhookProcessor | None = None
        self._checkpoints: CheckpointStore | None = None
        self._sink: ChangeSink | None = None
        self._jobs: JobRunner | None = None
        self._run_ledger: RunLedger | None = None
        self._unit_history: UnitHistory | None = None
        self._sweep_worker: SweepWorker | None = None
        self._user_tokens: UserTokenValidator | None = None
        self._sign_in: AdministratorSignIn | None = None

    @property
    def storage(self) -> StorageClients:
        with self._lock:
            if self._storage is None:
                self._storage = StorageClients(self.settings)
            return self._storage

    @property
    def registry(self) -> TenantRegistry:
        if self._registry is None:
            storage = self.storage
            registry = TenantRegistry(storage.table(TENANTS_TABLE), storage.table(HISTORY_TABLE))
            registry.create_tables()
            self._registry = registry
        return self._registry

    @property
    def consent_states(self) -> ConsentStateStore:
        if self._states is None:
            states = ConsentStateStore(
                self.storage.table(CONSENT_STATES_TABLE), self.settings.consent_state_ttl_seconds
            )
            states.create_table()
            self._states = states
        return self._states

    @property
    def org_index(self) -> OrgIndex:
        if self._org_index is None:
            index = OrgIndex(self.storage.table(ORG_INDEX_TABLE))
            index.create_table()
            self._org_index = index
        return self._org_index

    @property
    def webhook_store(self) -> WebhookStore:
        if self._webhook_store is None:
            storage = self.storage
            store = WebhookStore(
                queue=storage.queue(EVENTS_QUEUE),
                poison_queue=storage.queue(POISON_QUEUE),
                table=storage.table(EVENTS_TABLE),
                container=storage.container(PAYLOAD_CONTAINER),
            )
            store.create_resources()
            self._webhook_store = store
        return self._webhook_store

    @property
    def webhook_intake(self) -> WebhookIntake:
        if self._webhook_intake is None:
            self._webhook_intake = WebhookIntake(
                store=self.webhook_store,
                org_index=self.org_index,
                registry=self.registry,
                max_body_bytes=self.settings.webhook_max_body_bytes,
                header_secret_name=self.settings.webhook_secret_header,
                secret_required=self.settings.webhook_secret_required,
            )
        return self._webhook_intake

    @property
    def webhook_processor(self) -> WebhookProcessor:
        if self._webhook_processor is None:
            changes = self.storage.table(CHANGES_TABLE)
            with contextlib.suppress(Exception):
                changes.create_table()
            self._webhook_processor = WebhookProcessor(
                store=self.webhook_store,
                dataverse=self.dataverse,
                changes_table=changes,
                impersonate_initiating_user=self.settings.webhook_impersonate_initiating_user,
                max_dequeue_count=self.settings.webhook_max_dequeue_count,
                active_org=self._active_org,
            )
        return self._webhook_processor

    def _active_org(self, tenant_id: str, org_url: str) -> OrgRecord | None:
        """The org's record (its current connection), or None when it is not an active org."""
        tenant = self.registry.find_tenant(tenant_id)
        return tenant.org(org_url) if tenant is not None and org_url in tenant.active_org_urls else None

    @property
    def sync_checkpoints(self) -> CheckpointStore:
        if self._checkpoints is None:
            store = CheckpointStore(self.storage.table(SYNC_STATE_TABLE))
            store.create_table()
            self._checkpoints = store
        return self._checkpoints

    @property
    def sync_sink(self) -> ChangeSink:
        if self._sink is None:
            sink = BlobNdjsonSink(self.storage.container(self.settings.sync_container))
            sink.create_container()
            self._sink = sink
        return self._sink

    @property
    def jobs(self) -> JobRunner:
        if self._jobs is None:
            self._jobs = JobRunner(self)
        return self._jobs

    @property
    def run_ledger(self) -> RunLedger:
        """Fanned-out sweeps' aggregated status per run id (``sweepruns``)."""
        if self._run_ledger is None:
            ledger = RunLedger(self.storage.table(RUNS_TABLE))
            ledger.create_table()
            self._run_ledger = ledger
        return self._run_ledger

    @property
    def unit_history(self) -> UnitHistory:
        if self._unit_history is None:
            history = UnitHistory(self.storage.table(UNITS_TABLE))
            history.create_table()
            self._unit_history = history
        return self._unit_history

    def sweep_queue(self) -> Any:
        """A client of the ``sweep-units`` queue the timers fill and ``functions/jobs.py`` consumes."""
        return self.storage.queue(SWEEP_QUEUE)

    @property
    def sweep_scheduler(self) -> SweepScheduler:
        return SweepScheduler(
            registry=self.registry, history=self.unit_history, ledger=self.run_ledger, queue=self.sweep_queue()
        )

    @property
    def sweep_worker(self) -> SweepWorker:
        """What one ``sweep-units`` message does; ``max_dequeue_count`` is the host's (host.json maxDequeueCount,
        which WEBHOOK_MAX_DEQUEUE_COUNT overrides for every queue of the app: see infra/README.md)."""
        with self._lock:
            built = self._sweep_worker
        if built is None:
            jobs, settings = self.jobs, self.settings
            built = SweepWorker(
                queue=self.sweep_queue(),
                poison_queue=self.storage.queue(SWEEP_POISON_QUEUE),
                ledger=self.run_ledger,
                history=self.unit_history,
                lease_table=self.sync_checkpoints.table,
                work={"sync": jobs.sync_unit, "health": jobs.health_unit},
                record_failure=jobs.record_unit_failure,
                max_dequeue_count=settings.webhook_max_dequeue_count,
                lease_seconds=settings.sweep_lease_seconds,
                time_budget_seconds=settings.sweep_time_budget_seconds,
            )
            with self._lock:
                self._sweep_worker = built
        return built

    @property
    def user_tokens(self) -> UserTokenValidator:
        if self._user_tokens is None:
            settings = self.settings
            jwks_uri = f"{settings.entra_authority_host}/common/discovery/v2.0/keys"

            def fetch() -> dict[str, Any]:
                import requests

                response = requests.get(jwks_uri, timeout=settings.http_timeout_seconds)
                response.raise_for_status()
                document: dict[str, Any] = response.json()
                return document

            self._user_tokens = UserTokenValidator(
                jwks=JwksCache(fetch),
                v2_issuer_template=f"{settings.entra_authority_host}/{{tenantid}}/v2.0",
                v1_issuer_template=settings.oidc_v1_issuer_template,
                audiences=settings.effective_oidc_audiences,
                required_scope=settings.oidc_required_scope,
                required_role=settings.oidc_required_role,
                leeway_seconds=settings.oidc_clock_skew_seconds,
            )
        return self._user_tokens

    @property
    def administrator_sign_in(self) -> AdministratorSignIn:
        """One MSAL confidential client per worker for administrators' sign-ins (its authority metadata is read
        once): ``organizations`` in multi-tenant mode, the home tenant in single-tenant mode."""
        with self._lock:
            if self._sign_in is None:
                settings = self.settings
                self._sign_in = AdministratorSignIn(
                    client_id=settings.entra_client_id,
                    authority_host=settings.entra_authority_host,
                    authority=settings.entra_home_tenant_id if settings.is_single_tenant else "organizations",
                    assertion_source=self.tokens.assertion_source,
                    http_timeout=settings.http_timeout_seconds,
                )
            return self._sign_in

    @property
    def onboarding(self) -> OnboardingService:
        if self._onboarding is None:
            self._onboarding = OnboardingService(
                self.settings,
                self.registry,
                self.consent_states,
                self.dataverse,
                self.tokens,
                sign_in=self.administrator_sign_in,
                enqueue_verification=self.enqueue_verification,
                org_index=self.org_index,
            )
        return self._onboarding

    @property
    def housekeeping(self) -> Housekeeping:
        """The housekeeping job's purges over the tables the other services own; each store is reached only when its
        purge runs, so one that cannot be built fails that purge alone."""
        settings = self.settings
        history = TenantHistoryRetention(
            self.storage.table(HISTORY_TABLE),
            keep_newest=settings.tenant_history_keep,
            max_age_days=settings.tenant_history_retention_days,
        )
        retention_seconds = settings.webhook_event_retention_days * 86400
        return Housekeeping(
            {
                "onboarding_states": lambda limit: self.consent_states.purge_expired(limit=limit),
                "webhook_events": lambda limit: self.webhook_store.purge_older_than(retention_seconds, limit=limit),
                "tenant_history": history.purge,
            }
        )

    def enqueue_verification(self, message: dict[str, Any], delay_seconds: int) -> None:
        """Durably schedule a tenant re-verification (the queue-triggered function picks it up)."""
        import json

        from azure.core.exceptions import ResourceExistsError

        queue = self.storage.queue(VERIFY_QUEUE)
        with contextlib.suppress(ResourceExistsError):
            queue.create_queue()
        queue.send_message(json.dumps(message), visibility_timeout=delay_seconds)


def build_certificate_source(
    settings: Settings, credential_factory: Callable[[], TokenCredential] | None = None
) -> CertificateSource:
    if settings.credential_source is CredentialSource.CERTIFICATE_FILE:
        assert settings.certificate_path is not None  # guaranteed by Settings validation
        return FileCertificateSource(settings.certificate_path, settings.certificate_password)
    assert settings.key_vault_url is not None and settings.key_vault_certificate_name is not None
    return KeyVaultCertificateSource(
        settings.key_vault_url,
        settings.key_vault_certificate_name,
        credential_factory or (lambda: azure_credential(settings)),
        verify_challenge_resource=settings.key_vault_verify_challenge_resource,
        timeout=settings.http_timeout_seconds,
    )


def build_assertion_source(
    settings: Settings, certificate_source: CertificateSource | None = None
) -> ClientAssertionSource:
    if settings.credential_source is CredentialSource.MANAGED_IDENTITY_FEDERATION:
        assert settings.managed_identity_client_id is not None
        return ManagedIdentityAssertionSource(settings.managed_identity_client_id, settings.federation_audience)
    # A new version signs only after a token request for the home tenant proved it (shared.auth.certificate_canary).
    canary = HomeTenantCanary(
        client_id=settings.entra_client_id,
        authority_host=settings.entra_authority_host,
        home_tenant_id=settings.entra_home_tenant_id,
        http_timeout=settings.http_timeout_seconds,
        send_certificate_chain=settings.send_certificate_chain,
    )
    provider = CertificateProvider(
        certificate_source or build_certificate_source(settings),
        refresh_seconds=settings.certificate_refresh_seconds,
        canary=canary,
    )
    return CertificateAssertionSource(provider, send_certificate_chain=settings.send_certificate_chain)


def build_services(
    settings: Settings,
    assertion_source: ClientAssertionSource | None = None,
    storage: StorageClients | None = None,
) -> Services:
    tokens = TenantTokenProvider(
        client_id=settings.entra_client_id,
        authority_host=settings.entra_authority_host,
        assertion_source=assertion_source or build_assertion_source(settings),
        max_tenants=settings.token_client_cache_size,
        http_timeout=settings.http_timeout_seconds,
    )
    if storage is None and (settings.storage_connection_string or settings.storage_account_name):
        storage = StorageClients(settings)  # builds nothing until first used
    board = None
    if storage is not None and settings.dataverse_shared_throttle:
        tables = storage
        board = ThrottleBoard(
            lambda: tables.table(THROTTLE_TABLE), refresh_seconds=settings.dataverse_throttle_refresh_ms / 1000
        )
    return Services(settings, tokens, DataverseClients(settings, tokens, shared_windows=board), storage)


_services: Services | None = None
_services_lock = threading.Lock()


def use_services(services: Services | None) -> None:
    """Install the worker's services (tests and the development host); ``None`` resets to build-on-first-use."""
    global _services  # noqa: PLW0603
    with _services_lock:
        _services = services


def installed_services() -> Services | None:
    """The services already built or installed in this process, if any (the CLI reuses them in tests)."""
    return _services


def get_services() -> Services:
    """The worker's services, built from the environment on first call. Raises ConfigurationError."""
    global _services  # noqa: PLW0603 - the worker-lifetime singleton is the point
    with _services_lock:
        if _services is None:
            _services = build_services(Settings.from_env())
        return _services
