"""Log records carry the dimensions operators query (tenant, org host, Dataverse request ids, correlation ids, an
event name and measures) as flat `extra` attributes, which the Azure Monitor distro exports as custom dimensions;
the library loggers are quieted to LIBRARY_LOG_LEVEL while the app's own keep INFO (issue 16, section 4)."""

from __future__ import annotations

import json
import logging
import sys
import time
import types
from collections.abc import Iterator

import pytest

from shared import telemetry
from shared.dataverse.errors import ApplicationUserMissingError
from shared.errors import TokenAcquisitionError
from shared.jobs.sweeps import Sweep, TenantOutcome
from shared.settings import MonitorSettings, Settings, library_log_level
from shared.telemetry import LIBRARY_LOGGERS, dims, org_host, quiet_libraries
from shared.tenants.registry import Tenant, TenantRegistry, TenantStatus
from tests.unit import test_dataverse_client as dv
from tests.unit import test_webhook_intake as wh
from tests.unit.fake_table import FakeTable

TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
GUID = "11111111-2222-3333-4444-555555555555"


class Records(logging.Handler):
    """Every record that reaches the root logger, as the worker's handler (or the distro's) would see it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "event", None) == name]


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # the worker's root level (PYTHON_ENABLE_DEBUG_LOGGING off)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def library_levels() -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in (*LIBRARY_LOGGERS, "shared", "functions")}
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


# -- dims ----------------------------------------------------------------------------------------------------------


def test_dims_are_flat_primitive_and_leave_out_what_is_unknown() -> None:
    extra = dims("x.y", tenant_id=TENANT, org="https://Contoso.crm4.dynamics.com/", correlation_id=None, rows=3)
    assert extra == {"event": "x.y", "tenant_id": TENANT, "org_host": "contoso.crm4.dynamics.com", "rows": 3}


def test_a_measure_named_like_a_record_attribute_is_renamed_not_fatal(records: Records) -> None:
    extra = dims("x.y", measures={"name": "n", "tenant_id": "spoof"}, message="m", lineno=7)
    assert extra == {"event": "x.y", "m_name": "n", "m_tenant_id": "spoof", "m_message": "m", "m_lineno": 7}
    logging.getLogger("shared.test").info("fine", extra=extra)  # would raise KeyError with a reserved name
    assert records.records[-1].m_message == "m"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("given", "host"),
    [("https://a.crm.dynamics.com", "a.crm.dynamics.com"), ("A.crm.dynamics.com", "a.crm.dynamics.com"), (None, None)],
)
def test_org_host_takes_a_url_or_a_host(given: str | None, host: str | None) -> None:
    assert org_host(given) == host


# -- library loggers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "level"),
    [({}, "WARNING"), ({"LIBRARY_LOG_LEVEL": "info"}, "INFO"), ({"LIBRARY_LOG_LEVEL": "loud"}, "WARNING")],
)
def test_library_level_at_import_never_raises(environ: dict[str, str], level: str) -> None:
    assert library_log_level(environ) == level


def test_a_malformed_library_level_is_refused_by_settings_naming_it() -> None:
    base = {"ENTRA_CLIENT_ID": GUID, "ENTRA_HOME_TENANT_ID": GUID, "KEY_VAULT_URL": "https://v.vault.azure.net/"}
    base["KEY_VAULT_CERTIFICATE_NAME"] = "c"
    assert Settings.from_env(base).library_log_level == "WARNING"
    assert Settings.from_env({**base, "LIBRARY_LOG_LEVEL": "debug"}).library_log_level == "DEBUG"
    with pytest.raises(Exception, match="LIBRARY_LOG_LEVEL"):
        Settings.from_env({**base, "LIBRARY_LOG_LEVEL": "loud"})


def test_quieted_libraries_drop_info_and_the_app_keeps_it(records: Records, library_levels: None) -> None:
    quiet_libraries("WARNING")
    names = ("azure.core.pipeline.policies.http_logging_policy", "azure.identity._internal", "msal.application")
    for name in (*names, "urllib3.connectionpool"):
        logging.getLogger(name).info("Request URL: 'https://x'")
        logging.getLogger(name).warning("kept")
    logging.getLogger("shared.jobs.sweeps").info("sweep summary {}")
    logging.getLogger("functions.webhooks").info("Webhook queue message m: done")
    seen = [(r.name.split(".")[0], r.levelname) for r in records.records]
    assert seen.count(("azure", "INFO")) == seen.count(("msal", "INFO")) == seen.count(("urllib3", "INFO")) == 0
    assert seen.count(("azure", "WARNING")) == 2 and ("msal", "WARNING") in seen
    assert ("shared", "INFO") in seen and ("functions", "INFO") in seen


def test_a_setting_can_ask_for_the_library_info_lines(records: Records, library_levels: None) -> None:
    quiet_libraries("INFO")
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").info("Request URL: 'https://x'")
    assert [r.levelname for r in records.records] == ["INFO"]


# -- the app's records carry the dimensions --------------------------------------------------------------------------


def test_a_throttled_dataverse_call_logs_tenant_org_both_request_ids_and_the_wait(records: Records) -> None:
    session = dv.ScriptedSession(
        (429, {"Retry-After": "0.05", "x-ms-service-request-id": "svc-1"}, {"error": {"code": "0x80072322"}}),
        (200, {}, {"UserId": "u", "BusinessUnitId": "b", "OrganizationId": "o"}),
    )
    dv.client(session).whoami()
    (record,) = records.events("dataverse.throttled")
    assert record.tenant_id == dv.TENANT  # type: ignore[attr-defined]
    assert record.org_host == "contoso.crm.dynamics.com"  # type: ignore[attr-defined]
    assert record.dataverse_client_request_id == session.sent[0]["headers"]["x-ms-client-request-id"]  # type: ignore[attr-defined]
    assert record.dataverse_service_request_id == "svc-1"  # type: ignore[attr-defined]
    assert record.retry_after_s == 0.05 and record.method == "GET"  # type: ignore[attr-defined]
    assert dv.SECRET_TOKEN not in json.dumps({k: str(v) for k, v in vars(record).items()})


def test_a_failed_dataverse_call_logs_its_error_code_and_request_ids(records: Records) -> None:
    body = {"error": {"code": "0x80072560", "message": "The user is not a member of the organization."}}
    session = dv.ScriptedSession((403, {"x-ms-service-request-id": "svc-2"}, body))
    with pytest.raises(ApplicationUserMissingError):
        dv.client(session).whoami()
    (record,) = records.events("dataverse.failed")
    assert (record.status, record.error_code) == (403, "0x80072560")  # type: ignore[attr-defined]
    assert record.dataverse_service_request_id == "svc-2" and record.tenant_id == dv.TENANT  # type: ignore[attr-defined]


def test_a_webhook_acknowledgement_logs_tenant_org_correlation_and_latency(records: Records) -> None:
    receiver = wh.intake(wh.FakeStore())
    assert receiver.accept(wh.BODY, wh.SIGNED).status == 202
    assert receiver.accept(wh.BODY, wh.SIGNED).status == 202  # a redelivery: queued again, the claim skips it
    first, second = records.events("webhook.acknowledged")
    assert (first.outcome, second.outcome) == ("accepted", "accepted")  # type: ignore[attr-defined]
    for record in (first, second):
        assert record.tenant_id == wh.TENANT and record.org_host == "contoso.crm.dynamics.com"  # type: ignore[attr-defined]
        assert record.correlation_id == "c2a1b3d4-0000-4000-8000-000000000003"  # type: ignore[attr-defined]
        assert isinstance(record.ack_ms, float) and record.ack_ms >= 0  # type: ignore[attr-defined]


def test_a_webhook_the_store_refuses_is_logged_with_its_503(records: Records) -> None:
    assert wh.intake(wh.FakeStore(fail=True)).accept(wh.BODY, wh.SIGNED).status == 503
    (record,) = records.events("webhook.not_stored")
    assert (record.status, record.tenant_id) == (503, wh.TENANT)  # type: ignore[attr-defined]


def _tenants(n: int) -> list[Tenant]:
    return [Tenant(f"{i:08d}-0000-0000-0000-000000000000", TenantStatus.ACTIVE, (), "t", "t") for i in range(n)]


def test_a_sweep_logs_each_failure_with_its_code_and_correlation_and_one_summary(records: Records) -> None:
    def work(tenant: Tenant, past_deadline: object) -> TenantOutcome:
        if tenant.tenant_id.startswith("00000001"):
            raise TokenAcquisitionError(
                "refused", tenant_id=tenant.tenant_id, aadsts_code=700016, correlation_id="corr-9"
            )
        return TenantOutcome(True, rows=5)

    Sweep(concurrency=2, time_budget_seconds=60, throttle_waits=lambda: 0).run("sync", _tenants(3), work)
    (failure,) = records.events("sweep.tenant_failed")
    assert failure.tenant_id == "00000001-0000-0000-0000-000000000000"  # type: ignore[attr-defined]
    assert (failure.error_code, failure.correlation_id, failure.job) == ("AADSTS700016", "corr-9", "sync")  # type: ignore[attr-defined]
    (summary,) = records.events("sweep.summary")
    measured = {k: getattr(summary, k) for k in ("job", "tenants_ok", "tenants_failed", "tenants_skipped", "rows")}
    assert measured == {"job": "sync", "tenants_ok": 2, "tenants_failed": 1, "tenants_skipped": 0, "rows": 10}
    assert summary.throttle_waits == 0 and summary.stopped_by_time_budget is False  # type: ignore[attr-defined]
    assert isinstance(summary.duration_s, float)  # type: ignore[attr-defined]


def test_a_tenant_status_change_logs_from_to_and_org(records: Records) -> None:
    registry = TenantRegistry(FakeTable(), FakeTable())
    org = "https://fab.crm4.dynamics.com"
    registry.record(TENANT, TenantStatus.PENDING_CONSENT, reason="form", actor="admin", org_url=org)
    registry.record(TENANT, TenantStatus.CONSENTED, reason="token obtained", actor="callback")
    first, second = records.events("tenant.status")
    assert (first.from_status, first.to_status, first.org_host) == ("new", "pending_consent", "fab.crm4.dynamics.com")  # type: ignore[attr-defined]
    assert (second.from_status, second.to_status, second.tenant_id) == ("pending_consent", "consented", TENANT)  # type: ignore[attr-defined]
    assert second.reason == "token obtained" and second.actor == "callback"  # type: ignore[attr-defined]


def test_dimension_values_are_primitives_the_exporter_can_send(records: Records) -> None:
    """OpenTelemetry attributes are str, bool, int or float; anything else would be dropped or stringified."""
    wh.intake(wh.FakeStore()).accept(wh.BODY, wh.SIGNED)
    Sweep(concurrency=1, time_budget_seconds=60).run("health", _tenants(1), lambda t, d: TenantOutcome(True))
    standard = set(vars(logging.LogRecord("n", 20, "p", 1, "m", None, None))) | {"message", "taskName"}
    for record in records.records:
        if getattr(record, "event", None) is None:
            continue
        extra = {k: v for k, v in vars(record).items() if k not in standard}
        assert extra and all(isinstance(v, str | bool | int | float) for v in extra.values()), extra


def test_time_is_measured_not_assumed(records: Records) -> None:
    class SlowStore(wh.FakeStore):
        def enqueue(self, key: str, envelope: dict[str, object], payload: bytes) -> None:
            time.sleep(0.05)
            super().enqueue(key, envelope, payload)

    wh.intake(SlowStore()).accept(wh.BODY, wh.SIGNED)
    (record,) = records.events("webhook.acknowledged")
    assert record.ack_ms >= 50  # type: ignore[attr-defined]


# -- the app's own exporter -------------------------------------------------------------------------------------------

CONNECTION = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://in.example/"


@pytest.fixture
def fresh_monitor(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, object]]]:
    """A fake distro module that records its configuration; the once-per-process state reset around the test."""
    calls: list[dict[str, object]] = []
    fake = types.ModuleType("azure.monitor.opentelemetry")
    fake.configure_azure_monitor = lambda **kwargs: calls.append(kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure.monitor.opentelemetry", fake)
    monkeypatch.setattr(telemetry, "_monitor_state", None)
    yield calls


def test_the_exporter_authenticates_with_the_hosts_managed_identity(fresh_monitor: list[dict[str, object]]) -> None:
    settings = MonitorSettings.from_env(
        {
            "APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION,
            "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": f"ClientId={GUID};Authorization=AAD",
        }
    )
    assert (settings.aad_authentication, settings.aad_client_id) == (True, GUID)
    assert telemetry.enable_azure_monitor(settings) == "enabled"
    assert telemetry.enable_azure_monitor(settings) == "enabled"  # once per process
    (call,) = fresh_monitor
    assert call["connection_string"] == CONNECTION
    credential = call["credential"]
    assert type(credential).__name__ == "ManagedIdentityCredential"
    options = call["instrumentation_options"]
    assert isinstance(options, dict) and options["azure_sdk"] == {"enabled": False}


@pytest.mark.parametrize(
    ("environ", "state"),
    [
        ({}, "no_connection_string"),
        (
            {
                "APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION,
                "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true",
            },
            "worker",
        ),
    ],
)
def test_no_exporter_without_a_connection_string_or_when_the_worker_exports(
    fresh_monitor: list[dict[str, object]], environ: dict[str, str], state: str
) -> None:
    assert telemetry.enable_azure_monitor(MonitorSettings.from_env(environ)) == state
    assert fresh_monitor == []


def test_without_the_distro_nothing_breaks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azure.monitor.opentelemetry", None)  # import raises ImportError
    monkeypatch.setattr(telemetry, "_monitor_state", None)
    settings = MonitorSettings.from_env({"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION})
    assert telemetry.enable_azure_monitor(settings) == "distro_absent"


def test_a_distro_that_raises_is_logged_not_raised(fresh_monitor: list[dict[str, object]], records: Records) -> None:
    def broken(**kwargs: object) -> None:
        raise RuntimeError("bad connection string")

    sys.modules["azure.monitor.opentelemetry"].configure_azure_monitor = broken  # type: ignore[attr-defined]
    settings = MonitorSettings.from_env({"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION})
    assert telemetry.enable_azure_monitor(settings) == "failed"
    assert any("Could not configure the Azure Monitor distro" in r.getMessage() for r in records.records)
