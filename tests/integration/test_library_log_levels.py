"""Under the development host, the real `function_app` keeps the Azure SDK, MSAL and urllib3 loggers quiet at the
host's default level (Information) while the app's own INFO lines still arrive; LIBRARY_LOG_LEVEL=INFO brings the
SDK's request/response lines back (the control that shows the count can fail). Issue 16, section 4.

The request is the onboarding form's POST: it reads the org's bearer challenge (requests, through the sandbox's
proxy) and writes a consent state to Azurite with azure-data-tables, so azure-core logs each storage request and
response unless quieted; the control test shows those records for the very same request.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator

import pytest
import requests

from devhost import DevHost
from shared.telemetry import LIBRARY_LOGGERS
from tests.integration.test_onboarding_flow import Flow, flow  # noqa: F401 - the onboarding world fixture

pytestmark = pytest.mark.integration


class Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def library(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name.split(".")[0] in LIBRARY_LOGGERS]

    def app_info(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name.startswith(("shared.", "functions.")) and r.levelno == logging.INFO]


@pytest.fixture
def counted() -> Iterator[Counter]:
    """Root at INFO with a counting handler, as the Python worker sets it up; levels restored afterwards."""
    counter = Counter()
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS} | {"": root.level}
    root.addHandler(counter)
    root.setLevel(logging.INFO)
    try:
        yield counter
    finally:
        root.removeHandler(counter)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _onboard_through_function_app(world: Flow, counter: Counter) -> None:
    import function_app

    app = importlib.reload(function_app).app  # applies LIBRARY_LOG_LEVEL as the host's indexing would
    with DevHost(app) as host:
        counter.records.clear()
        world.use(onboarding_redirect_uri=f"{host.url}/api/consent/callback")
        response = requests.post(
            f"{host.url}/api/onboard",
            data={"org_url": world.ready_org},
            headers={"Origin": host.url},
            allow_redirects=False,
            timeout=30,
        )
    assert response.status_code == 302, response.text
    assert response.headers["Location"].startswith(
        f"{world.sandbox.authority_host}/organizations/oauth2/v2.0/authorize"
    )


def test_sdk_request_logs_are_quiet_and_the_app_info_lines_arrive(
    flow: Flow,  # noqa: F811
    counted: Counter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LIBRARY_LOG_LEVEL", raising=False)
    _onboard_through_function_app(flow, counted)
    below_warning = [f"{r.name}: {r.getMessage()[:60]}" for r in counted.library() if r.levelno < logging.WARNING]
    assert below_warning == []
    (started,) = [r for r in counted.app_info() if getattr(r, "event", None) == "onboarding.started"]
    assert started.org_host == flow.ready_org.removeprefix("https://")  # type: ignore[attr-defined]


def test_library_log_level_info_brings_the_sdk_request_logs_back(
    flow: Flow,  # noqa: F811
    counted: Counter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIBRARY_LOG_LEVEL", "INFO")
    _onboard_through_function_app(flow, counted)
    http_logging = [r for r in counted.library() if r.name == "azure.core.pipeline.policies.http_logging_policy"]
    # The same request as above writes the consent state: with the setting, its request and response are logged.
    assert len(http_logging) >= 2
    assert any("Request URL" in r.getMessage() and "/consentstates" in r.getMessage() for r in http_logging)
