"""Service protection on the Dataverse stand-in (protocol §4, api-limits): concurrency, request-rate and
execution-time 429s with Retry-After, the count of requests sent inside an announced Retry-After window, and
injected latency.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import msal
import pytest
import requests

from sandbox import Sandbox
from sandbox.dataverse.throttle import IN_FLIGHT_GRACE_SECONDS

from .conftest import DataverseOrg

pytestmark = pytest.mark.integration


def _parallel(org: DataverseOrg, count: int) -> list[requests.Response]:
    """`count` WhoAmI calls released together, each on its own connection."""
    start = threading.Barrier(count)

    def call(_: int) -> requests.Response:
        start.wait()
        return requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=30)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(call, range(count)))


def test_too_many_concurrent_requests_get_429_at_once(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org()
    sandbox_env.state.set_dataverse_limits(org.url, max_concurrent=2, latency_seconds=1.0)

    responses = _parallel(org, 6)

    refused = [r for r in responses if r.status_code == 429]
    assert sorted(r.status_code for r in responses) == [200, 200, 429, 429, 429, 429]
    assert refused[0].json() == {
        "error": {"code": "0x80072326", "message": "Number of concurrent requests exceeded the limit of 2."}
    }
    assert all(r.headers["Retry-After"] == "1" for r in refused)
    # Refused at once: none waited for the one-second latency of the admitted requests.
    assert max(r.elapsed for r in refused) < dt.timedelta(seconds=0.9)
    assert sandbox_env.state.dataverse_peak_concurrency(org.url) == 2
    assert sandbox_env.state.count("dataverse_throttled", org=org.url, code="0x80072326") == 4


def test_request_window_429_announces_when_the_window_frees(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org()
    sandbox_env.state.set_dataverse_limits(org.url, max_requests=3, window_seconds=60)
    session = requests.Session()

    statuses = [session.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10).status_code for _ in range(3)]
    refused = session.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10)

    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.json() == {
        "error": {
            "code": "0x80072322",
            "message": "Number of requests exceeded the limit of 3 over time window of 60 seconds.",
        }
    }
    assert 58 <= int(refused.headers["Retry-After"]) <= 60


def test_requests_inside_an_announced_retry_after_window_are_counted(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org()
    state = sandbox_env.state
    state.set_dataverse_limits(org.url, max_requests=2, window_seconds=0.5, retry_after_seconds=1)
    session = requests.Session()

    def who_am_i() -> requests.Response:
        return session.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10)

    assert [who_am_i().status_code for _ in range(2)] == [200, 200]
    told = who_am_i()
    in_flight = who_am_i()  # as if another worker had sent it before the 429 arrived: not counted
    time.sleep(IN_FLIGHT_GRACE_SECONDS + 0.05)
    impatient_at = time.monotonic()
    impatient = who_am_i()  # ignores Retry-After: counted, and told again
    counted = state.count("dataverse_request_in_retry_after", org=org.url)
    time.sleep(float(impatient.headers["Retry-After"]) + 0.1 - (time.monotonic() - impatient_at))
    patient = who_am_i()  # a well-behaved client waits as told

    assert told.status_code == in_flight.status_code == impatient.status_code == 429
    assert told.headers["Retry-After"] == "1"
    assert counted == 1
    assert patient.status_code == 200
    assert state.count("dataverse_request_in_retry_after", org=org.url) == 1
    assert state.count("dataverse_throttled", org=org.url, code="0x80072322") == 3


def test_injected_latency_overlaps_across_concurrent_requests(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org()
    sandbox_env.state.set_dataverse_limits(org.url, latency_seconds=0.5)

    single_started = time.perf_counter()
    requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10)
    single = time.perf_counter() - single_started
    parallel_started = time.perf_counter()
    responses = _parallel(org, 5)
    parallel = time.perf_counter() - parallel_started

    assert single >= 0.5
    assert [r.status_code for r in responses] == [200] * 5
    assert parallel < 1.5  # five half-second requests ran side by side, not one after another
    assert sandbox_env.state.dataverse_peak_concurrency(org.url) == 5


def test_limits_are_per_application_user(
    new_org: Callable[..., DataverseOrg],
    sandbox_env: Sandbox,
    cca: Callable[..., msal.ConfidentialClientApplication],
) -> None:
    org = new_org()
    state = sandbox_env.state
    state.set_dataverse_limits(org.url, max_requests=1)
    other = state.register_application(display_name="Second app")
    state.add_application_certificate(other, org.app.certificate.cert_pem)
    state.grant_consent(org.org.tenant_id, other)
    state.add_application_user(org.url, other)
    result = cca(other, org.org.tenant_id, org.app.pem_credential()).acquire_token_for_client([f"{org.url}/.default"])

    first = requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10)
    second_app = requests.get(f"{org.api}/WhoAmI", headers={"Authorization": f"Bearer {result['access_token']}"})
    first_again = requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=10)

    assert (first.status_code, second_app.status_code, first_again.status_code) == (200, 200, 429)


def test_combined_execution_time_429_names_the_limit_and_the_window(
    new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox
) -> None:
    org = new_org()
    # 0.5 s of execution per 30 s window; each request takes 0.3 s (injected latency).
    sandbox_env.state.set_dataverse_limits(
        org.url, max_execution_seconds=0.5, window_seconds=30, latency_seconds=0.3, max_requests=100
    )

    first = requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=30)
    second = requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=30)
    third = requests.get(f"{org.api}/WhoAmI", headers=org.headers(), timeout=30)

    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert third.json() == {
        "error": {
            "code": "0x80072321",
            "message": "Combined execution time of incoming requests exceeded limit of 500 milliseconds over time "
            "window of 30 seconds. Decrease number of concurrent requests or reduce the duration of requests and try "
            "again later.",
        }
    }
    assert 25 <= int(third.headers["Retry-After"]) <= 30
    assert third.elapsed < dt.timedelta(seconds=0.25)  # refused before doing (or sleeping) anything
    assert sandbox_env.state.count("dataverse_throttled", org=org.url, code="0x80072321") == 1
