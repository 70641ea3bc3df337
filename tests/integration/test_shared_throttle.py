"""Retry-After shared between instances of the app through the ``orgthrottle`` table (Azurite).

Each "instance" here is a full set of services built from settings, as a worker process builds them: its own
governors, token cache and HTTP pool. The only thing two instances share is the storage account, so what one
learns from a 429 reaches the other only through the table. The org counts every request that reaches it inside
a Retry-After window it announced (after the in-flight grace), per application user, and all instances are the
same application user.
"""

from __future__ import annotations

import time

import pytest

from shared.bootstrap import build_services
from shared.dataverse.errors import ThrottledError
from shared.dataverse.throttle_board import THROTTLE_TABLE, ThrottleBoard
from tests.integration.conftest import app_with_certificate, cert_file_settings, customer_org

pytestmark = pytest.mark.integration

RETRY_AFTER = 2


@pytest.fixture
def world(sandbox, sandbox_env, azurite, tmp_path):
    st = sandbox.state
    client_id, _, cert = app_with_certificate(st, "Shared throttle", tmp_path)
    org = customer_org(st, client_id, "shared")
    # Two requests per window; the third is refused with a fixed Retry-After.
    st.set_dataverse_limits(
        org.org_url, max_requests=2, window_seconds=RETRY_AFTER, retry_after_seconds=RETRY_AFTER, latency_seconds=0.01
    )

    def instance(**overrides):
        settings = cert_file_settings(
            sandbox,
            client_id,
            cert,
            storage_connection_string=azurite.connection_string,
            dataverse_max_attempts=1,  # a 429 surfaces at once instead of being waited out
            **overrides,
        )
        services = build_services(settings)
        return services.dataverse.for_org(org.tenant, org.org_url)

    return st, org, instance


def _throttle(st, org, client) -> float:
    """Calls until the org's window is full and a call draws the 429; returns when it was answered (monotonic)."""
    with pytest.raises(ThrottledError):
        for _ in range(3):
            client.whoami()
    assert st.count("dataverse_throttled", org=org.org_url) == 1
    return time.monotonic()


def test_an_instance_that_never_saw_the_429_waits_out_the_window_another_instance_got(world):
    st, org, instance = world
    first, second = instance(dataverse_throttle_refresh_ms=0), instance(dataverse_throttle_refresh_ms=0)
    assert first.governor is not second.governor
    throttled_at = _throttle(st, org, first)
    time.sleep(0.3)  # past the org's in-flight grace: from here a request inside the window counts

    second.whoami()
    second.whoami()

    assert time.monotonic() - throttled_at >= RETRY_AFTER - 0.1
    assert st.count("dataverse_request_in_retry_after", org=org.org_url) == 0
    assert st.count("dataverse_throttled", org=org.org_url) == 1  # no second 429
    assert second.governor.throttle_waits == 1


def test_without_the_shared_table_the_other_instance_calls_into_the_window(world):
    """The same sequence with DATAVERSE_SHARED_THROTTLE off: what the test above would see without the board."""
    st, org, instance = world
    first, second = instance(dataverse_shared_throttle=False), instance(dataverse_shared_throttle=False)
    _throttle(st, org, first)
    time.sleep(0.3)
    with pytest.raises(ThrottledError):
        second.whoami()
    assert st.count("dataverse_request_in_retry_after", org=org.org_url) == 1


def test_with_a_refresh_interval_an_instance_acts_on_the_window_once_its_snapshot_is_older(world):
    st, org, instance = world
    first, second = instance(dataverse_throttle_refresh_ms=0), instance(dataverse_throttle_refresh_ms=1000)
    second.whoami()  # second's snapshot of the table: taken now, before any 429
    snapshot_at = time.monotonic()
    throttled_at = _throttle(st, org, first)
    time.sleep(max(0.0, snapshot_at + 1.05 - time.monotonic()))  # second's snapshot is now stale

    second.whoami()

    assert time.monotonic() - throttled_at >= RETRY_AFTER - 0.1
    assert st.count("dataverse_request_in_retry_after", org=org.org_url) == 0
    assert second.governor.throttle_waits == 1


def test_the_window_is_a_row_other_tools_can_read(world, azurite):
    st, org, instance = world
    _throttle(st, org, instance(dataverse_throttle_refresh_ms=0))
    from azure.data.tables import TableClient

    # A reader of its own, as an operator's script would be: the row is plain Table Storage.
    table = TableClient.from_connection_string(azurite.connection_string, THROTTLE_TABLE)
    row = table.get_entity("retry-after", org.org_url.removeprefix("https://"))
    assert row["RetryAfterSeconds"] == RETRY_AFTER
    assert 0 < ThrottleBoard(lambda: table, refresh_seconds=0).remaining(org.org_url) <= RETRY_AFTER
