"""Identity faults during scheduled sweeps: Entra's token endpoint failing (5xx) or too slow, Key Vault refusing
connections or answering 5xx, the certificate rotated mid-sweep, consent revoked mid-sweep or between pages.

Every fault must end in a recorded, explained state, never a silent skip: the sweep summary counts the tenant
(failed, or ok after a successful retry), its registry entry carries the code `python -m cli explain` knows and
what it means, a WARNING names the tenant and the code, the sweep's other tenants are untouched, and the next
run recovers once the fault is gone. Faults come from the sandbox (`SandboxState.inject_fault`) or, for
"unreachable", from a loopback port with nothing listening.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest

from sandbox.net.pki import make_certificate
from shared.auth.azure_identity import azure_credential
from shared.auth.certificate_sources import CertificateProvider, KeyVaultCertificateSource
from shared.auth.client_assertions import CertificateAssertionSource
from shared.bootstrap import Services, build_services
from shared.settings import Settings
from shared.tenants.orgs import OrgStatus
from shared.tenants.registry import TenantRegistry, TenantStatus
from shared.troubleshooting import explain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ROWS = 22  # five pages of five: a failure after the first page always leaves pages to do
PAGE_SIZE = 5
HTTP_TIMEOUT = 1.5  # the token client's timeout (HTTP_TIMEOUT_SECONDS)


class Fleet:
    """One app (certificate in Key Vault) and `size` consenting customer tenants, each with one org holding an
    application user and ROWS accounts, all `active` in a registry of the fleet's own (so a sweep over "every
    active tenant" sweeps exactly these)."""

    def __init__(self, sandbox, azurite, *, size: int = 3, concurrency: int = 3) -> None:
        st = sandbox.state
        self.sandbox = sandbox
        self.state = st
        self.client_id = st.register_application(display_name="Identity faults")
        self.bundle = make_certificate("identity-faults")
        st.add_application_certificate(self.client_id, self.bundle.cert_pem)
        self.cert_name = f"faults-{self.client_id[:8]}"
        st.create_certificate(self.cert_name, self.bundle)
        identity = st.add_managed_identity()
        st.grant_vault_secret_access(identity.principal_id)
        self.orgs: dict[str, str] = {}
        for n in range(size):
            tenant = st.add_tenant(display_name=f"Faults customer {n}")
            st.grant_consent(tenant, self.client_id)
            org = f"https://faults{uuid.uuid4().hex[:10]}.crm4.dynamics.com"
            st.add_org(tenant, org)
            st.add_application_user(org, self.client_id)
            st.seed_rows(org, "accounts", ROWS)
            self.orgs[tenant] = org
        self.tenants = sorted(self.orgs)  # the order the registry lists them in, and a sweep starts them in
        suffix = uuid.uuid4().hex[:10]
        self.settings = Settings(
            entra_client_id=self.client_id,
            entra_home_tenant_id=st.home_tenant_id,
            entra_authority_host=sandbox.authority_host,
            key_vault_url=sandbox.vault_url,
            key_vault_certificate_name=self.cert_name,
            key_vault_verify_challenge_resource=False,
            managed_identity_client_id=identity.client_id,
            certificate_refresh_seconds=3600,
            http_timeout_seconds=HTTP_TIMEOUT,
            storage_connection_string=azurite.connection_string,
            sync_tables=(("accounts", ("accountid", "name")),),
            sync_page_size=PAGE_SIZE,
            sync_container=f"faults{suffix}",
            sweep_concurrency=concurrency,
            dataverse_retry_budget_seconds=20,
        )
        self._tables = (f"faulttenants{suffix}", f"faulthistory{suffix}")
        self.services = self.worker()
        self.registry.create_tables()
        for tenant, org in self.orgs.items():
            for status in (TenantStatus.PENDING_CONSENT, TenantStatus.CONSENTED, TenantStatus.ACTIVE):
                self.registry.record(tenant, status, reason="test setup", actor="test", org_url=org)
            self.registry.set_org_status(tenant, org, OrgStatus.ACTIVE, reason="seed", actor="test")

    def worker(
        self,
        *,
        vault_url: str | None = None,
        refresh_seconds: int = 3600,
        retry_seconds: float = 60.0,
        min_forced_interval: float = 10.0,
        vault_timeout: float = 2.0,
        vault_retries: int = 1,
        **changes,
    ) -> Services:
        """A fresh worker (no token, no certificate loaded yet) on this fleet's registry. The Key Vault client is
        built here so tests can keep its timeouts short and point it at another address."""
        settings = replace(self.settings, **changes)
        source = KeyVaultCertificateSource(
            vault_url or self.sandbox.vault_url,
            self.cert_name,
            lambda: azure_credential(settings),
            verify_challenge_resource=False,
            timeout=vault_timeout,
            max_retries=vault_retries,
            retry_backoff_max=0.5,
        )
        provider = CertificateProvider(
            source,
            refresh_seconds=refresh_seconds,
            retry_seconds=retry_seconds,
            min_forced_interval=min_forced_interval,
        )
        services = build_services(settings, assertion_source=CertificateAssertionSource(provider))
        storage = services.storage
        services._registry = TenantRegistry(storage.table(self._tables[0]), storage.table(self._tables[1]))
        return services

    @property
    def registry(self) -> TenantRegistry:
        return self.services.registry

    def entry(self, tenant: str):
        return self.registry.get_tenant(tenant)

    def synced_ids(self, tenant: str) -> list[str]:
        """Account ids the sink holds for the tenant, one per upsert written (repeats included)."""
        container = self.services.storage.container(self.settings.sync_container)
        with contextlib.suppress(Exception):
            container.create_container()
        ids = []
        for blob in container.list_blobs(name_starts_with=f"{tenant}/"):
            for line in container.download_blob(blob.name).readall().decode().splitlines():
                record = json.loads(line)
                if record["op"] == "upsert":
                    ids.append(record["row"]["accountid"])
        return ids

    def all_ids(self, tenant: str) -> set[str]:
        return {str(r["accountid"]) for r in self.state.rows(self.orgs[tenant], "accounts")}

    def rotate(self, *, entra: bool = True, key_vault: bool = True):
        """A new certificate: registered on the app (and the old one removed) and/or a new Key Vault version."""
        new = make_certificate("identity-faults-rotated")
        if entra:
            self.state.add_application_certificate(self.client_id, new.cert_pem)
            self.state.remove_application_certificate(self.client_id, self.bundle.cert_pem)
        if key_vault:
            self.state.create_certificate(self.cert_name, new)
        return new


@pytest.fixture
def fleet(sandbox, sandbox_env, azurite) -> Iterator[Fleet]:
    made = Fleet(sandbox, azurite)
    try:
        yield made
    finally:
        sandbox.state.clear_faults()


def warnings_naming(caplog, *words: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and all(w in r.getMessage() for w in words)
    ]


def assert_explained(verification, code: str) -> None:
    """The registry entry names a code the troubleshooting catalogue explains, and says what to do."""
    assert verification is not None and verification.error_code == code
    entry = explain(code)
    assert entry is not None, f"{code} is not in docs/troubleshooting.md"
    assert verification.message


def run(services: Services, job: str, tenant: str | None = None, progress=None):
    jobs = services.jobs
    return jobs.run_sync(tenant, progress=progress) if job == "sync" else jobs.run_health(tenant, progress=progress)


def assert_untouched(fleet: Fleet, tenants: list[str], job: str) -> None:
    """The sweep's other tenants: still active, nothing recorded against them, (sync) every row written."""
    for tenant in tenants:
        entry = fleet.entry(tenant)
        assert entry.status is TenantStatus.ACTIVE
        if job == "sync":
            assert entry.last_verification is None
            assert set(fleet.synced_ids(tenant)) == fleet.all_ids(tenant)
        else:
            assert entry.last_verification.outcome == "active" and entry.last_verification.error_code is None


# -- the sandbox's fault injection itself ------------------------------------------------------------------------


def test_injected_faults_answer_in_each_services_documented_error_shape(sandbox, sandbox_env, new_app):
    import requests

    st = sandbox.state
    app = new_app()
    ca = str(sandbox.ca_bundle_path)
    try:
        st.inject_fault("entra", status=503, count=1, tenant=app.tenant_id, endpoint="token", retry_after=7)
        token_url = f"{sandbox.authority_host}/{app.tenant_id}/oauth2/v2.0/token"
        elsewhere = f"{sandbox.authority_host}/{st.home_tenant_id}/oauth2/v2.0/token"
        other = requests.post(elsewhere, data={"client_id": app.client_id}, verify=ca, timeout=5)
        assert other.status_code == 400  # another tenant's authority: not hit, handled normally
        answer = requests.post(token_url, data={"client_id": app.client_id}, verify=ca, timeout=5)
        body = answer.json()
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "7"
        assert body["error"] == "temporarily_unavailable" and body["error_codes"] == [90033]
        assert body["error_description"].startswith("AADSTS90033:") and body["trace_id"] and body["correlation_id"]
        # count=1: the next request is handled normally again (here: refused for its missing grant type).
        again = requests.post(token_url, data={"client_id": app.client_id}, verify=ca, timeout=5)
        assert again.status_code == 400 and again.json()["error_codes"] == [900144]

        st.inject_fault("keyvault", status=500)
        vault = requests.get(f"{sandbox.vault_url}secrets/x", params={"api-version": "7.5"}, verify=ca, timeout=5)
        assert vault.status_code == 500 and vault.json() == {
            "error": {
                "code": "InternalServerError",
                "message": "The service encountered an internal error. Please try again later.",
            }
        }
        assert st.clear_faults("keyvault") == 1  # count=None: armed until cleared
        vault = requests.get(f"{sandbox.vault_url}secrets/x", params={"api-version": "7.5"}, verify=ca, timeout=5)
        assert vault.status_code == 401  # the normal anonymous challenge

        st.inject_fault("entra", status=None, delay=1.0, count=1, tenant=app.tenant_id, endpoint="discovery")
        started = time.monotonic()
        slow = requests.get(
            f"{sandbox.authority_host}/{app.tenant_id}/v2.0/.well-known/openid-configuration", verify=ca, timeout=5
        )
        assert slow.status_code == 200 and time.monotonic() - started >= 1.0  # late, then served normally
        for wrong in ({"status": 200}, {"status": None}, {"tenant": app.tenant_id}, {"endpoint": "token"}):
            with pytest.raises(ValueError):
                st.inject_fault("keyvault", **wrong)
    finally:
        st.clear_faults()


def test_an_injected_dataverse_fault_hits_one_kind_of_request_of_one_org_after_letting_some_through(sandbox, new_org):
    import requests

    st = sandbox.state
    org, other = new_org(), new_org()
    create = {"name": "Fault test"}
    try:
        st.inject_fault("dataverse", status=503, org=org.url, endpoint="POST accounts", after=1)
        first = requests.post(f"{org.api}/accounts", json=create, headers=org.headers(), timeout=10)
        assert first.status_code == 204  # `after=1`: the first matching request goes through
        assert requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10).status_code == 200  # a GET
        elsewhere = requests.post(f"{other.api}/accounts", json=create, headers=other.headers(), timeout=10)
        assert elsewhere.status_code == 204  # another org
        for _ in range(2):  # count=None: armed until cleared
            hit = requests.post(f"{org.api}/accounts", json=create, headers=org.headers(), timeout=10)
            assert hit.status_code == 503 and hit.json()["error"]["code"] == "0x80040216"
        assert len(st.rows(org.url, "accounts")) == 1  # the refused creates changed nothing
        assert st.clear_faults("dataverse") == 1
        assert requests.post(f"{org.api}/accounts", json=create, headers=org.headers(), timeout=10).status_code == 204
        for wrong in ({"tenant": org.app.tenant_id}, {"endpoint": "token"}, {"after": -1}):
            with pytest.raises(ValueError):
                st.inject_fault("dataverse", **wrong)
        with pytest.raises(ValueError):
            st.inject_fault("entra", org=org.url)
    finally:
        st.clear_faults()


# -- 1. the token endpoint answers 5xx, or too late --------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "status", "code"),
    [("sync", 503, "AADSTS90033"), ("health", 500, "AADSTS50000")],
)
def test_token_endpoint_5xx_fails_one_tenant_explained_honours_retry_after_then_recovers(
    fleet, caplog, job, status, code
):
    caplog.set_level(logging.INFO)
    hit, *others = fleet.tenants
    retry_after = 4
    fleet.state.inject_fault("entra", status=status, tenant=hit, endpoint="token", retry_after=retry_after)

    summary = run(fleet.services, job)

    assert (summary.tenants_ok, summary.tenants_failed, summary.tenants_skipped) == (2, 1, 0)
    assert list(summary.failures) == [hit] and code in summary.failures[hit]
    entry = fleet.entry(hit)
    assert entry.status is TenantStatus.ACTIVE  # transient: says nothing about the tenant's consent
    assert entry.last_verification.outcome == ("sync_failed" if job == "sync" else "error")
    assert_explained(entry.last_verification, code)
    assert explain(code).fix in entry.last_verification.message
    assert warnings_naming(caplog, hit, code)
    assert_untouched(fleet, others, job)

    # Entra is fine again, but asked inside Retry-After the worker does not call it: it reports why instead.
    fleet.state.clear_faults()
    posts = fleet.state.count("token", tenant=hit)
    held_back = run(fleet.services, job, hit)
    assert held_back.tenants_failed == 1 and "entra_unavailable" in held_back.failures[hit]
    assert fleet.state.count("token", tenant=hit) == posts
    assert_explained(fleet.entry(hit).last_verification, "entra_unavailable")

    time.sleep(retry_after)
    recovered = run(fleet.services, job, hit)
    assert (recovered.tenants_ok, recovered.tenants_failed) == (1, 0)
    assert fleet.entry(hit).status is TenantStatus.ACTIVE
    if job == "sync":
        assert set(fleet.synced_ids(hit)) == fleet.all_ids(hit)
    else:
        assert fleet.entry(hit).last_verification.error_code is None


def test_discovery_5xx_on_a_fresh_worker_is_transient_not_tenant_not_found(fleet, caplog):
    caplog.set_level(logging.WARNING)
    hit, *others = fleet.tenants
    fleet.state.inject_fault("entra", status=503, tenant=hit, endpoint="discovery")

    summary = run(fleet.services, "health")

    assert (summary.tenants_ok, summary.tenants_failed) == (2, 1)
    entry = fleet.entry(hit)
    assert entry.status is TenantStatus.ACTIVE  # not `failed` as an unknown tenant (AADSTS90002) would be
    assert_explained(entry.last_verification, "AADSTS90033")
    assert warnings_naming(caplog, hit, "AADSTS90033")
    assert_untouched(fleet, others, "health")
    fleet.state.clear_faults()
    assert run(fleet.services, "health", hit).tenants_ok == 1  # discovery errors are not held back


@pytest.mark.parametrize("job", ["sync", "health"])
def test_token_endpoint_slower_than_the_client_timeout_fails_one_tenant_in_bounded_time(fleet, caplog, job):
    caplog.set_level(logging.WARNING)
    hit, *others = fleet.tenants
    delay = HTTP_TIMEOUT + 2.5
    fleet.state.inject_fault("entra", status=None, delay=delay, tenant=hit, endpoint="token")

    summary = run(fleet.services, job)

    assert (summary.tenants_ok, summary.tenants_failed) == (2, 1)
    assert "entra_unreachable" in summary.failures[hit]
    assert summary.duration_seconds < delay  # the worker gave up before Entra would have answered
    assert fleet.state.count("fault_injected", service="entra", tenant=hit) == 1  # one try, no retry storm
    entry = fleet.entry(hit)
    assert entry.status is TenantStatus.ACTIVE
    assert_explained(entry.last_verification, "entra_unreachable")
    assert explain("entra_unreachable").fix in entry.last_verification.message
    assert warnings_naming(caplog, hit, "entra_unreachable")
    assert_untouched(fleet, others, job)

    fleet.state.clear_faults()
    recovered = run(fleet.services, job, hit)
    assert (recovered.tenants_ok, recovered.tenants_failed) == (1, 0)


# -- 2. Key Vault unreachable ------------------------------------------------------------------------------------


class PortForwarder:
    """Plain TCP from a fixed loopback port to the sandbox's vault (TLS passes through), so the vault can vanish
    (connection refused) and come back at the same address. Stopping cuts open connections too."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port, self._target = port, target_port
        self._server: socketserver.ThreadingTCPServer | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        forwarder = self

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.create_connection(("127.0.0.1", forwarder._target), timeout=10)
                with forwarder._lock:
                    forwarder._open.update((self.request, upstream))

                def pump(source: socket.socket, sink: socket.socket) -> None:
                    with contextlib.suppress(OSError):
                        while data := source.recv(65536):
                            sink.sendall(data)
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)

                back = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
                back.start()
                pump(self.request, upstream)
                back.join(timeout=10)
                upstream.close()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Pipe)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._open.clear()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_key_vault_connection_refused_keeps_a_loaded_certificate_and_fails_a_fresh_worker_explained(fleet, caplog):
    caplog.set_level(logging.WARNING)
    vault_port = int(fleet.sandbox.vault_url.rsplit(":", 1)[1].strip("/"))
    forwarder = PortForwarder(free_port(), vault_port)
    vault_url = f"https://127.0.0.1:{forwarder.port}/"
    forwarder.start()
    try:
        # A worker that already holds the certificate: Key Vault vanishes as its re-read falls due.
        holding = fleet.worker(vault_url=vault_url, refresh_seconds=1)
        assert run(holding, "sync").tenants_ok == 3
        forwarder.stop()
        time.sleep(1.1)
        for tenant in fleet.tenants:
            holding.tokens.forget_tenant(tenant)  # the tokens expired: every tenant needs a new one
        kept = run(holding, "sync")
        assert (kept.tenants_ok, kept.tenants_failed) == (3, 0)
        assert warnings_naming(caplog, "Certificate re-read failed; keeping version", "unreachable")
        assert all(fleet.entry(t).last_verification is None for t in fleet.tenants)

        # A fresh worker holds no certificate: every tenant fails, each recorded and named, in bounded time.
        fresh = fleet.worker(vault_url=vault_url, retry_seconds=1)
        started = time.monotonic()
        failed = run(fresh, "health")
        assert time.monotonic() - started < 15
        assert (failed.tenants_ok, failed.tenants_failed) == (0, 3)
        for tenant in fleet.tenants:
            entry = fleet.entry(tenant)
            assert entry.status is TenantStatus.ACTIVE  # our credential, not the tenant, is the problem
            assert entry.last_verification.outcome == "health_failed"
            assert_explained(entry.last_verification, "certificate_error")
            assert "Key Vault is unreachable" in entry.last_verification.message
            assert warnings_naming(caplog, tenant, "certificate_error")

        forwarder.start()  # the vault is back at the same address
        time.sleep(1)  # the worker's retry interval after a failed read
        recovered = run(fresh, "health")
        assert (recovered.tenants_ok, recovered.tenants_failed) == (3, 0)
        assert all(fleet.entry(t).last_verification.error_code is None for t in fleet.tenants)
    finally:
        forwarder.stop()


@pytest.mark.parametrize(
    ("job", "case"),
    [
        ("sync", ({"status": 503}, 1, "Key Vault answered 503")),
        ("health", ({"status": 500}, 1, "Key Vault answered 500")),
        ("sync", ({"status": None, "delay": 3.0}, 0, "did not answer in time")),
    ],
    ids=["sync-503", "health-500", "sync-slow"],
)
def test_key_vault_5xx_or_too_slow_fails_a_fresh_workers_tenants_after_one_bounded_read_then_recovers(
    fleet, caplog, job, case
):
    caplog.set_level(logging.WARNING)
    fault, retries, says = case
    fleet.state.inject_fault("keyvault", **fault)
    hits_before = fleet.state.count("fault_injected", service="keyvault")
    worker = fleet.worker(vault_timeout=1.0, vault_retries=retries, retry_seconds=1.5)

    summary = run(worker, job)

    assert (summary.tenants_ok, summary.tenants_failed) == (0, 3)
    assert summary.duration_seconds < 10
    # One bounded read (its retries included) for the whole sweep: the other tenants got its error at once
    # instead of each waiting out the vault again.
    assert fleet.state.count("fault_injected", service="keyvault") - hits_before <= retries + 1
    messages = []
    for tenant in fleet.tenants:
        entry = fleet.entry(tenant)
        assert entry.status is TenantStatus.ACTIVE  # our credential, not the tenant, is the problem
        assert_explained(entry.last_verification, "certificate_error")
        assert says in entry.last_verification.message
        assert warnings_naming(caplog, tenant, "certificate_error", says)
        messages.append(entry.last_verification.message)
    assert any("read again after" in m for m in messages)

    fleet.state.clear_faults()
    time.sleep(1.5)
    recovered = run(worker, job)
    assert (recovered.tenants_ok, recovered.tenants_failed) == (3, 0)


# -- 3. the certificate rotated mid-run --------------------------------------------------------------------------


def test_certificate_rotated_between_tenants_of_a_sweep_costs_one_rejection_and_one_vault_read(fleet, caplog):
    caplog.set_level(logging.WARNING)
    first, second, _third = fleet.tenants
    reads = fleet.state.count("vault_get", name=fleet.cert_name)
    worker = fleet.worker(sweep_concurrency=1)
    rotated = []

    def rotate_after_first(tenant, outcome, detail):
        if tenant == first:
            rotated.append(fleet.rotate())

    summary = run(worker, "sync", progress=rotate_after_first)

    assert rotated and (summary.tenants_ok, summary.tenants_failed) == (3, 0)
    # The second tenant's request was signed with the old certificate, rejected, re-read, retried; the third
    # was signed with the new one from the start.
    assert [fleet.state.count("token_error", tenant=t, code=700027) for t in fleet.tenants] == [0, 1, 0]
    assert fleet.state.count("vault_get", name=fleet.cert_name) - reads == 2  # first load + one re-read
    assert worker.tokens.assertion_source.describe()["sha1_thumbprint"] == rotated[0].sha1_thumbprint_hex
    assert warnings_naming(caplog, second, "AADSTS700027")
    assert_untouched(fleet, fleet.tenants, "sync")


def test_certificate_rotated_under_a_concurrent_sweep_is_one_vault_read_for_every_rejection(fleet):
    worker = fleet.worker()
    assert run(worker, "health").tenants_ok == 3  # the worker holds the first certificate
    for tenant in fleet.tenants:
        worker.tokens.forget_tenant(tenant)
    new = fleet.rotate()
    reads = fleet.state.count("vault_get", name=fleet.cert_name)
    rejected = sum(fleet.state.count("token_error", tenant=t, code=700027) for t in fleet.tenants)

    summary = run(worker, "health")

    assert (summary.tenants_ok, summary.tenants_failed) == (3, 0)
    rejections = sum(fleet.state.count("token_error", tenant=t, code=700027) for t in fleet.tenants) - rejected
    assert 1 <= rejections <= 3
    assert fleet.state.count("vault_get", name=fleet.cert_name) - reads == 1
    assert worker.tokens.assertion_source.describe()["sha1_thumbprint"] == new.sha1_thumbprint_hex


@pytest.mark.parametrize("job", ["sync", "health"])
def test_entra_rotated_before_key_vault_fails_explained_and_recovers_once_the_vault_has_it(fleet, caplog, job):
    caplog.set_level(logging.WARNING)
    worker = fleet.worker(min_forced_interval=0.2)
    new = fleet.rotate(key_vault=False)  # Entra no longer accepts the certificate Key Vault still serves

    summary = run(worker, job)

    assert (summary.tenants_ok, summary.tenants_failed) == (0, 3)
    for tenant in fleet.tenants:
        entry = fleet.entry(tenant)
        # Our own certificate is refused: that says nothing about the customer, so no tenant's status moves.
        assert entry.status is TenantStatus.ACTIVE
        assert_explained(entry.last_verification, "AADSTS700027")
        assert "Upload the current certificate" in entry.last_verification.message
        assert warnings_naming(caplog, tenant, "AADSTS700027")
    # Re-read and retried once per tenant at most: never an endless loop.
    assert all(fleet.state.count("token_error", tenant=t, code=700027) == 2 for t in fleet.tenants)

    fleet.state.create_certificate(fleet.cert_name, new)  # the new version reaches Key Vault
    time.sleep(0.3)  # past the worker's minimum interval between forced re-reads
    recovered = run(worker, job)
    assert (recovered.tenants_ok, recovered.tenants_failed) == (3, 0)
    assert all(fleet.entry(t).status is TenantStatus.ACTIVE for t in fleet.tenants)


# -- 4. consent revoked mid-run ----------------------------------------------------------------------------------


def test_consent_revoked_between_tenants_of_a_health_sweep_moves_only_that_tenant(fleet, caplog):
    caplog.set_level(logging.WARNING)
    first, middle, last = fleet.tenants
    worker = fleet.worker(sweep_concurrency=1)

    def revoke_last_after_first(tenant, outcome, detail):
        if tenant == first:
            fleet.state.remove_service_principal(last, fleet.client_id)

    summary = run(worker, "health", progress=revoke_last_after_first)

    assert (summary.tenants_ok, summary.tenants_failed) == (2, 1) and list(summary.failures) == [last]
    entry = fleet.entry(last)
    assert entry.status is TenantStatus.CONSENT_REVOKED
    assert_explained(entry.last_verification, "AADSTS700016")
    assert explain("AADSTS700016").fix in entry.last_verification.message
    assert warnings_naming(caplog, last, "active -> consent_revoked")
    assert warnings_naming(caplog, last, "AADSTS700016")
    assert_untouched(fleet, [first, middle], "health")

    fleet.state.grant_consent(last, fleet.client_id)  # the administrator consents again
    recovered = run(worker, "health", last)
    assert recovered.tenants_ok == 1
    assert fleet.entry(last).status is TenantStatus.ACTIVE
    moves = [(h.from_status, h.to_status) for h in fleet.registry.history(last)][:3]
    assert moves == [("consented", "active"), ("consent_revoked", "consented"), ("active", "consent_revoked")]


def test_consent_revoked_between_tenants_of_a_sync_sweep_is_recorded_then_the_health_job_decides(fleet, caplog):
    caplog.set_level(logging.WARNING)
    first, middle, last = fleet.tenants
    worker = fleet.worker(sweep_concurrency=1)

    def revoke_last_after_first(tenant, outcome, detail):
        if tenant == first:
            fleet.state.revoke_consent(last, fleet.client_id)

    summary = run(worker, "sync", progress=revoke_last_after_first)

    assert (summary.tenants_ok, summary.tenants_failed) == (2, 1) and "AADSTS65001" in summary.failures[last]
    entry = fleet.entry(last)
    assert entry.status is TenantStatus.ACTIVE  # the sync job records; the tenant's status is the health job's
    assert entry.last_verification.outcome == "sync_failed"
    assert_explained(entry.last_verification, "AADSTS65001")
    assert explain("AADSTS65001").fix in entry.last_verification.message
    assert warnings_naming(caplog, last, "AADSTS65001")
    assert_untouched(fleet, [first, middle], "sync")
    assert fleet.synced_ids(last) == []

    assert run(worker, "health", last).tenants_failed == 1
    assert fleet.entry(last).status is TenantStatus.CONSENT_REVOKED
    skipped = run(worker, "sync")  # only active tenants are synced: the revoked one is explained, not tried
    assert skipped.tenants_ok == 2 and last not in skipped.failures

    fleet.state.grant_consent(last, fleet.client_id)
    assert run(worker, "health", last).tenants_ok == 1
    resumed = run(worker, "sync")
    assert (resumed.tenants_ok, resumed.tenants_failed) == (3, 0)
    assert set(fleet.synced_ids(last)) == fleet.all_ids(last)


class RevokingSink:
    """The real sink; while the chosen tenant's first page is written, its consent is revoked and its token
    expires (forgetting it stands for the expiry), so its next page needs a token Entra now refuses."""

    def __init__(self, inner, fleet: Fleet, worker: Services, tenant: str) -> None:
        self.inner, self.fleet, self.worker, self.tenant = inner, fleet, worker, tenant
        self.pages: dict[str, int] = {}

    def write_page(self, **page) -> None:
        tenant = page["tenant_id"]
        self.inner.write_page(**page)
        self.pages[tenant] = self.pages.get(tenant, 0) + 1
        if tenant == self.tenant and self.pages[tenant] == 1:
            self.fleet.state.revoke_consent(tenant, self.fleet.client_id)
            self.worker.tokens.forget_tenant(tenant)


def test_consent_revoked_between_pages_stops_that_tenant_at_a_checkpoint_and_the_next_run_resumes(fleet, caplog):
    caplog.set_level(logging.WARNING)
    hit, *others = fleet.tenants
    worker = fleet.worker()
    sink = RevokingSink(worker.sync_sink, fleet, worker, hit)
    worker._sink = sink

    summary = run(worker, "sync")

    assert (summary.tenants_ok, summary.tenants_failed) == (2, 1)
    pages = -(-ROWS // PAGE_SIZE)
    assert 1 <= sink.pages[hit] < pages  # stopped mid-table, after what was already written
    entry = fleet.entry(hit)
    assert entry.status is TenantStatus.ACTIVE
    assert_explained(entry.last_verification, "AADSTS65001")
    assert warnings_naming(caplog, hit, "AADSTS65001")
    assert_untouched(fleet, others, "sync")

    assert run(worker, "health", hit).tenants_failed == 1
    assert fleet.entry(hit).status is TenantStatus.CONSENT_REVOKED
    fleet.state.grant_consent(hit, fleet.client_id)
    assert run(worker, "health", hit).tenants_ok == 1
    resumed = run(worker, "sync", hit)
    assert (resumed.tenants_ok, resumed.tenants_failed) == (1, 0)
    written = fleet.synced_ids(hit)
    assert set(written) == fleet.all_ids(hit)  # nothing missed
    assert len(written) <= ROWS + PAGE_SIZE  # resumed from the checkpoint: at most one page written twice
