"""The Authorization scheme is case-insensitive (RFC 7235 section 2.1), and a token signed with a known key never
waits on a JWKS fetch, not even one that hangs (issue 16, section 5)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from shared.signin.user_tokens import InvalidUserTokenError, JwksCache, bearer_token
from tests.unit.test_user_auth import OID, Keys, claims, sign, validator


@pytest.fixture(scope="module")
def keys() -> Keys:
    k = Keys()
    k.add("good")
    return k


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_scheme_is_matched_case_insensitively(keys: Keys, scheme: str) -> None:
    token = sign(keys, claims())
    assert validator(keys).validate(f"{scheme} {token}").object_id == OID


def test_several_spaces_may_separate_scheme_and_token() -> None:
    assert bearer_token("Bearer   abc.def.ghi") == "abc.def.ghi"


@pytest.mark.parametrize("header", [None, "", "Bearer", "bearer ", "Bearerabc", "Basic abc", "Beare abc", " Bearer x"])
def test_other_schemes_and_empty_credentials_are_refused(header: str | None) -> None:
    with pytest.raises(InvalidUserTokenError, match="bearer token is required"):
        bearer_token(header)


class BlockingFetch:
    """A JWKS fetch that answers the first time and then hangs until released, like a stalled network call."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.calls > 1:
            self.started.set()
            assert self.release.wait(10), "the test never released the fetch"
        return self.keys.jwks()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _timed_lookup(cache: JwksCache, kid: str) -> tuple[object, float]:
    """Look `kid` up on another thread; (result, seconds it took), or (None, inf) when still blocked after 2 s."""
    box: dict[str, object] = {}

    def run() -> None:
        start = time.monotonic()
        box["result"] = cache.key(kid)
        box["took"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(2)
    if thread.is_alive():
        return None, float("inf")
    return box["result"], float(box["took"])  # type: ignore[arg-type]


def test_a_known_key_is_served_while_an_unknown_kid_fetch_hangs(keys: Keys) -> None:
    fetch = BlockingFetch(keys)
    clock = Clock()
    cache = JwksCache(fetch, min_refetch_seconds=60, clock=clock)
    assert cache.key("good") is not None  # first fetch: answers
    clock.now += 61  # an unknown kid may refetch now
    stalled = threading.Thread(target=cache.key, args=("made-up-kid",), daemon=True)
    stalled.start()
    assert fetch.started.wait(5)  # the refetch is under way and hanging
    try:
        result, took = _timed_lookup(cache, "good")
        assert result is not None and result is cache.key("good")
        assert took < 0.5, f"a known key waited {took:.2f} s on a fetch"
        assert stalled.is_alive()  # the fetch really is still hanging
    finally:
        fetch.release.set()
        stalled.join(5)
    assert fetch.calls == 2


def test_a_due_refresh_runs_in_the_background_and_known_keys_keep_answering(keys: Keys) -> None:
    fetch = BlockingFetch(keys)
    clock = Clock()
    cache = JwksCache(fetch, refresh_seconds=3600, clock=clock)
    known = cache.key("good")
    clock.now += 3601  # the periodic refresh is due
    try:
        result, took = _timed_lookup(cache, "good")
        assert result is known and took < 0.5
        assert fetch.started.wait(5)  # the refresh did start, on another thread
        again, took_again = _timed_lookup(cache, "good")  # still hanging: the old keys answer
        assert again is known and took_again < 0.5
        assert fetch.calls == 2  # one refresh, not one per lookup
    finally:
        fetch.release.set()
    deadline = time.monotonic() + 5
    while cache.fetches < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.fetches == 2


def test_an_unknown_kid_waits_for_the_fetch_that_brings_it(keys: Keys) -> None:
    fetch = BlockingFetch(keys)
    clock = Clock()
    cache = JwksCache(fetch, min_refetch_seconds=0, clock=clock)
    assert cache.key("good") is not None
    keys.add("rotated-in")
    fetch.release.set()
    assert cache.key("rotated-in") is not None
    assert fetch.calls == 2
