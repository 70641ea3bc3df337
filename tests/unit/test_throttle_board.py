"""The shared Retry-After board: windows published by one instance are honoured by the others, the latest end
wins, reads follow the refresh interval, and a storage failure never holds calls up."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError

from shared.auth.token_provider import AccessToken
from shared.dataverse.client import DataverseClient, RetryPolicy
from shared.dataverse.governor import OrgGovernor
from shared.dataverse.throttle_board import MAX_SHARED_WINDOW_SECONDS, REST_AFTER_FAILURE_SECONDS, ThrottleBoard
from tests.unit.fake_table import FakeTable

ORG = "https://contoso.crm.dynamics.com"
OTHER = "https://fabrikam.crm4.dynamics.com"
TENANT = "11111111-1111-1111-1111-111111111111"


class Clocks:
    """A wall clock and a monotonic clock that tests move by hand."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class CountingTable(FakeTable):
    def __init__(self) -> None:
        super().__init__()
        self.queries = 0
        self.calls = 0
        self.failing: Exception | None = None
        self.hold: threading.Event | None = None  # when set, each query waits for this event first
        self.query_began = threading.Event()

    def hold_queries(self) -> threading.Event:
        """From now on queries wait until the returned event is set; `query_began` tells when one is waiting."""
        self.query_began.clear()
        self.hold = threading.Event()
        return self.hold

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.failing is not None:
            raise self.failing

    def query_entities(self, query_filter: str, *, parameters: dict[str, Any], **kwargs: Any) -> list[Any]:
        self._maybe_fail()
        self.query_began.set()
        if self.hold is not None:
            self.hold.wait(5)
        self.queries += 1
        assert "BlockedUntil gt @now" in query_filter and kwargs["retry_total"] == 0
        return super().query_entities(query_filter, parameters=parameters)

    def get_entity(self, partition_key: str, row_key: str, **kwargs: Any) -> Any:
        self._maybe_fail()
        return super().get_entity(partition_key, row_key)


def board(table: FakeTable, clocks: Clocks, refresh: float = 0.0) -> ThrottleBoard:
    return ThrottleBoard(
        lambda: table, refresh_seconds=refresh, clock=lambda: clocks.wall, monotonic=lambda: clocks.mono
    )


def test_a_window_published_by_one_instance_is_seen_by_another_for_that_org_only() -> None:
    table, clocks = CountingTable(), Clocks()
    first, second = board(table, clocks), board(table, clocks)
    assert second.remaining(ORG) == 0.0
    first.publish(ORG, 7.0)
    assert second.remaining(ORG) == pytest.approx(7.0)
    assert second.remaining(OTHER) == 0.0
    clocks.advance(5.0)
    assert second.remaining(ORG) == pytest.approx(2.0)
    clocks.advance(2.5)
    assert second.remaining(ORG) == 0.0


def test_the_latest_end_wins_whoever_writes_last() -> None:
    table, clocks = CountingTable(), Clocks()
    first, second, reader = board(table, clocks), board(table, clocks), board(table, clocks)
    first.publish(ORG, 10.0)
    second.publish(ORG, 2.0)  # shorter: must not cut the first instance's window
    assert reader.remaining(ORG) == pytest.approx(10.0)
    second.publish(ORG, 20.0)
    assert reader.remaining(ORG) == pytest.approx(20.0)
    assert len(table.rows) == 1  # one row per org host


def test_reads_follow_the_refresh_interval() -> None:
    table, clocks = CountingTable(), Clocks()
    writer, reader = board(table, clocks), board(table, clocks, refresh=1.0)
    assert reader.remaining(ORG) == 0.0 and table.queries == 1
    writer.publish(ORG, 5.0)
    clocks.advance(0.5)
    assert reader.remaining(ORG) == 0.0  # snapshot still fresh enough: the window is not seen yet
    assert table.queries == 1
    clocks.advance(0.5)
    assert reader.remaining(ORG) == pytest.approx(4.0)
    assert table.queries == 2


def test_a_snapshot_older_than_the_interval_is_read_again_after_a_long_wait() -> None:
    """An instance that waited out one window must not act on that old snapshot: another instance may have been
    given a later window meanwhile."""
    table, clocks = CountingTable(), Clocks()
    other, waiting = board(table, clocks), board(table, clocks, refresh=1.0)
    other.publish(ORG, 2.0)
    assert waiting.remaining(ORG) == pytest.approx(2.0)
    clocks.advance(1.5)
    other.publish(ORG, 3.0)  # a second 429 at the other instance, while this one waits
    clocks.advance(0.5)
    assert waiting.remaining(ORG) == pytest.approx(2.5)


def test_refresh_zero_reads_for_every_request() -> None:
    table, clocks = CountingTable(), Clocks()
    reader = board(table, clocks)
    for _ in range(3):
        reader.remaining(ORG)
    assert table.queries == 3


def test_refresh_zero_callers_waiting_for_a_query_that_began_after_they_asked_share_it() -> None:
    table, clocks = CountingTable(), Clocks()
    reader = board(table, clocks)
    release = table.hold_queries()
    first = threading.Thread(target=reader.remaining, args=(ORG,))
    first.start()
    table.query_began.wait(5)  # the first caller's query has begun; these callers ask before it ends
    late = [threading.Thread(target=reader.remaining, args=(ORG,)) for _ in range(4)]
    for thread in late:
        thread.start()
    time.sleep(0.2)  # let them ask and queue on the refresh lock
    release.set()
    first.join()
    for thread in late:
        thread.join()
    # The first query began before the late callers asked, so one more query serves all four of them.
    assert table.queries == 2


def test_own_windows_count_at_once_even_before_the_table_has_them() -> None:
    table, clocks = CountingTable(), Clocks()
    own = board(table, clocks, refresh=60.0)
    own.remaining(ORG)
    table.failing = ServiceRequestError("storage down")
    own.publish(ORG, 3.0)
    assert own.remaining(ORG) == pytest.approx(3.0)


def test_a_storage_failure_never_holds_calls_and_the_board_rests_before_trying_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table, clocks = CountingTable(), Clocks()
    reader = board(table, clocks)
    table.failing = ServiceRequestError("connection refused by AccountKey=c2VjcmV0")
    with caplog.at_level(logging.WARNING, logger="shared.dataverse.throttle_board"):
        assert reader.remaining(ORG) == 0.0
        calls = table.calls
        for _ in range(5):
            assert reader.remaining(ORG) == 0.0
            reader.publish(OTHER, 1.0)  # kept locally, not written while resting
    assert table.calls == calls  # resting: the table is left alone
    assert reader.failures == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "orgthrottle" in warnings[0] and "ServiceRequestError" in warnings[0]
    assert "c2VjcmV0" not in warnings[0]
    table.failing = None
    clocks.advance(REST_AFTER_FAILURE_SECONDS)
    other = board(table, clocks)
    other.publish(ORG, 4.0)
    assert reader.remaining(ORG) == pytest.approx(4.0)


def test_published_windows_are_capped() -> None:
    table, clocks = CountingTable(), Clocks()
    board(table, clocks).publish(ORG, 1e9)
    assert board(table, clocks).remaining(ORG) == pytest.approx(MAX_SHARED_WINDOW_SECONDS)


def test_concurrent_publishers_keep_the_latest_end() -> None:
    table, clocks = CountingTable(), Clocks()
    boards = [board(table, clocks) for _ in range(8)]
    threads = [threading.Thread(target=b.publish, args=(ORG, float(i + 1))) for i, b in enumerate(boards)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert board(table, clocks).remaining(ORG) == pytest.approx(8.0)


# -- the client with a board ------------------------------------------------------------------------------


class Tokens:
    def get_token(self, tenant_id: str, resource: str) -> AccessToken:
        return AccessToken("token", time.time() + 3600, tenant_id, resource, "cache")


class Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def read(self, *, decode_content: bool) -> bytes:
        return self.body


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        import requests

        self.status_code = status
        self.headers = requests.structures.CaseInsensitiveDict(headers)
        self.raw = Raw(body)


class Session:
    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.sent_at: list[float] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Answer:
        self.sent_at.append(time.monotonic())
        return self.answers.pop(0)


class Windows:
    """Shared windows that report the given remaining seconds on successive reads, then none."""

    def __init__(self, *remaining: float) -> None:
        self.left = list(remaining)
        self.reads = 0
        self.published: list[tuple[str, float]] = []

    def remaining(self, org_url: str) -> float:
        self.reads += 1
        return self.left.pop(0) if self.left else 0.0

    def publish(self, org_url: str, seconds: float) -> None:
        self.published.append((org_url, seconds))


def _client(session: Session, windows: Windows) -> DataverseClient:
    retry = RetryPolicy(max_attempts=3, budget_seconds=10, base_backoff_seconds=0.01, max_backoff_seconds=0.02)
    return DataverseClient(ORG, TENANT, Tokens(), session, OrgGovernor(), retry=retry, shared_windows=windows)


WHO = b'{"UserId": "u", "BusinessUnitId": "b", "OrganizationId": "o"}'


def test_a_429_is_published_for_the_other_instances() -> None:
    throttled = b'{"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit."}}'
    session = Session(Answer(429, {"Retry-After": "0.2"}, throttled), Answer(200, {}, WHO))
    windows = Windows()
    _client(session, windows).whoami()
    assert windows.published == [(ORG, 0.2)]
    assert session.sent_at[1] - session.sent_at[0] >= 0.2


def test_a_window_from_another_instance_holds_the_request_back() -> None:
    session = Session(Answer(200, {}, WHO))
    started = time.monotonic()
    client = _client(session, Windows(0.3))
    client.whoami()
    assert session.sent_at[0] - started >= 0.3
    assert client.governor.throttle_waits == 1


def test_after_a_wait_the_windows_are_read_again_and_a_later_one_is_waited_out_too() -> None:
    session = Session(Answer(200, {}, WHO))
    windows = Windows(0.2, 0.3)  # another instance was given a later window while this one waited
    started = time.monotonic()
    client = _client(session, windows)
    client.whoami()
    assert session.sent_at[0] - started >= 0.5
    assert windows.reads == 3  # before, after the first wait, after the second
    assert client.governor.peak_in_flight == 1 and client.governor.withdrawn == 1


def test_a_caller_that_finds_a_read_under_way_goes_on_with_its_snapshot_when_there_is_an_interval() -> None:
    table, clocks = CountingTable(), Clocks()
    writer, shared = board(table, clocks), board(table, clocks, refresh=1.0)
    writer.publish(ORG, 5.0)
    assert shared.remaining(ORG) == pytest.approx(5.0)
    clocks.advance(1.0)
    release = table.hold_queries()
    refresher = threading.Thread(target=shared.remaining, args=(ORG,))
    refresher.start()
    table.query_began.wait(5)
    started = time.monotonic()
    assert shared.remaining(ORG) == pytest.approx(4.0)  # the snapshot it had, at once
    took = time.monotonic() - started
    release.set()
    refresher.join()
    assert took < 1.0


def test_publishing_does_not_wait_for_a_slow_read() -> None:
    table, clocks = CountingTable(), Clocks()
    shared = board(table, clocks)
    release = table.hold_queries()
    reader = threading.Thread(target=shared.remaining, args=(ORG,))
    reader.start()
    table.query_began.wait(5)
    started = time.monotonic()
    shared.publish(ORG, 3.0)
    took = time.monotonic() - started
    release.set()
    reader.join()
    assert took < 1.0
    assert board(table, clocks).remaining(ORG) == pytest.approx(3.0)
    assert shared.remaining(ORG) == pytest.approx(3.0)  # the read that was under way did not drop it


def test_a_client_that_waited_out_one_window_reads_again_and_waits_out_a_later_one() -> None:
    """Real clocks: the other instance gets a second 429 while this one waits for the first window to end."""
    table = CountingTable()
    other = ThrottleBoard(lambda: table, refresh_seconds=0.2)
    mine = ThrottleBoard(lambda: table, refresh_seconds=0.2)
    session = Session(Answer(200, {}, WHO))
    retry = RetryPolicy(max_attempts=3, budget_seconds=10, base_backoff_seconds=0.01, max_backoff_seconds=0.02)
    client = DataverseClient(ORG, TENANT, Tokens(), session, OrgGovernor(), retry=retry, shared_windows=mine)
    started = time.monotonic()
    other.publish(ORG, 0.4)
    caller = threading.Thread(target=client.whoami)
    caller.start()
    time.sleep(0.25)
    other.publish(ORG, 0.5)  # ends 0.75 s after the start
    caller.join(5)
    assert session.sent_at[0] - started >= 0.7
    assert client.governor.withdrawn == 1


def test_a_table_that_may_not_be_created_by_this_identity_is_still_used() -> None:
    from azure.core.exceptions import HttpResponseError

    class NoCreate(CountingTable):
        def create_table(self, **_: Any) -> None:
            raise HttpResponseError("This request is not authorized to perform this operation.")

    table, clocks = NoCreate(), Clocks()
    board(table, clocks).publish(ORG, 4.0)
    reader = board(table, clocks)
    assert reader.remaining(ORG) == pytest.approx(4.0) and reader.failures == 0
