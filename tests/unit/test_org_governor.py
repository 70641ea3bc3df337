"""Pacing learned from a request-rate 429: the next window's requests wait until the answers that filled the
window are older than it (instead of costing another 429), a widened margin after a 429 pacing did not prevent,
and no pacing without a named limit."""

from __future__ import annotations

import json
import threading
import time

import pytest

from shared.dataverse.errors import rate_limit_named
from shared.dataverse.governor import MAX_PACED_REQUESTS, PACING_MARGIN_SECONDS, OrgGovernor, Ticket

WINDOW = 0.3


def _send(governor: OrgGovernor) -> Ticket:
    ticket = governor.acquire(time.monotonic() + 5)
    governor.release(ticket)
    return ticket


def _rate_body(limit: int, window: float, code: str = "0x80072322") -> bytes:
    message = f"Number of requests exceeded the limit of {limit} over time window of {window:g} seconds."
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def test_the_documented_message_names_the_limit_and_window():
    assert rate_limit_named(_rate_body(6000, 300)) == (6000, 300.0)
    assert rate_limit_named(_rate_body(2, 0.5)) == (2, 0.5)


@pytest.mark.parametrize(
    "body",
    [
        _rate_body(2, 1, code="0x80072326"),  # concurrency: names no window
        json.dumps({"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit"}}).encode(),
        b"not json",
        b"",
    ],
)
def test_other_bodies_name_no_rate(body):
    assert rate_limit_named(body) is None


def test_after_a_named_429_the_next_request_waits_for_the_window_to_slide():
    governor = OrgGovernor()
    first = _send(governor)
    _send(governor)
    refused_at = _send(governor)  # the third in the window: the server answered 429
    governor.refused(refused_at, (2, WINDOW))
    assert governor.paced_rate == (2, WINDOW)
    fourth = _send(governor)
    # Paced on the answer to the oldest of the last two *counted* requests (the refused one is not in the
    # server's window): that answer came after the request reached the server.
    assert first.answered_at is not None
    assert fourth.admitted_at >= first.answered_at + WINDOW + PACING_MARGIN_SECONDS
    assert governor.pacing_waits == 1
    fifth = _send(governor)  # the second slot of the new window is free at once after the window slid
    assert fifth.admitted_at - fourth.admitted_at < WINDOW / 2


def test_a_paced_request_waits_for_an_answer_still_in_flight():
    governor = OrgGovernor()
    in_flight = governor.acquire(time.monotonic() + 5)  # its answer has not come back yet
    governor.refused(_send(governor), (1, 0.05))
    released = []

    def answer_later():
        time.sleep(0.2)
        released.append(time.monotonic())
        governor.release(in_flight)

    threading.Thread(target=answer_later).start()
    paced = _send(governor)
    assert released and paced.admitted_at >= released[0] + 0.05


def test_without_a_named_limit_nothing_is_paced():
    governor = OrgGovernor()
    for _ in range(3):
        _send(governor)
    refused_at = _send(governor)
    governor.refused(refused_at, None)
    started = time.monotonic()
    for _ in range(5):
        _send(governor)
    assert time.monotonic() - started < 0.1
    assert governor.paced_rate is None and governor.pacing_waits == 0


def test_a_limit_too_large_to_log_is_left_to_retry_after():
    governor = OrgGovernor()
    governor.refused(_send(governor), (MAX_PACED_REQUESTS + 1, 300.0))
    assert governor.paced_rate is None


def test_a_429_that_pacing_did_not_prevent_widens_the_margin_once_per_429():
    governor = OrgGovernor()
    early = _send(governor)  # in flight before the limit was known
    governor.refused(_send(governor), (1, 0.05))
    governor.refused(early, (1, 0.05))  # its 429 says nothing about pacing
    base = governor._margin
    governor.refused(_send(governor), (1, 0.05))  # sent while paced, refused anyway (another worker, say)
    assert governor._margin == pytest.approx(base * 2)


def test_pacing_keeps_no_more_starts_than_the_limit_needs():
    governor = OrgGovernor()
    for _ in range(200):
        _send(governor)
    assert len(governor._recent) <= 64
    governor.refused(_send(governor), (100, 60.0))
    assert governor._recent.maxlen == 100


def test_a_withdrawn_ticket_frees_its_slot_and_is_not_paced() -> None:
    governor = OrgGovernor(initial_limit=1)
    first = governor.acquire(time.monotonic() + 1)
    governor.release(first)
    governor.refused(first, rate=(1, 60.0))  # a 429 that teaches the governor: 1 request per minute
    ticket = governor.acquire(time.monotonic() + 1)
    governor.withdraw(ticket)
    assert governor.withdrawn == 1
    again = governor.acquire(time.monotonic() + 0.5)  # neither the slot nor the pacing log holds it back
    assert not again.waited


def test_pacing_counts_from_when_the_answer_began_not_from_when_its_body_was_read():
    governor = OrgGovernor()
    governor.refused(_send(governor), (1, WINDOW))  # learn: one request per window
    slow_body = governor.acquire(time.monotonic() + 5)
    governor.answered(slow_body)  # status and headers are in
    began = slow_body.answered_at
    time.sleep(0.2)  # the body takes a while to read
    governor.release(slow_body)
    assert slow_body.answered_at == began
    following = _send(governor)
    assert began is not None and following.admitted_at >= began + WINDOW
    assert following.admitted_at < began + WINDOW + 0.15  # not held until the body's end + window
