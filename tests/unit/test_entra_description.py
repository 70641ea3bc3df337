"""Entra's error_description in a TokenAcquisitionError: the message quotes whole sentences only, the whole
description is kept in a field of its own, and nothing is lost to a cut (issue 16, section 5)."""

from __future__ import annotations

import pytest

from shared.auth.token_provider import TenantTokenProvider
from shared.errors import SUMMARY_LIMIT, TokenAcquisitionError, entra_description, summarize
from tests.unit.conftest import FakeConfidentialClient

T1 = "11111111-1111-1111-1111-111111111111"
ORG = "https://contoso.crm.dynamics.com"
APP = "0d5b2a4c-6f1e-4b8a-9c3d-2e7f1a6b5c4d"

# The shape of Entra's AADSTS700016 answer (entra: reference-error-codes): three sentences, together longer than
# 300 characters once the identifiers are in.
LONG = (
    f"AADSTS700016: Application with identifier '{APP}' was not found in the directory 'Fabrikam Manufacturing "
    "Holdings (Europe) Limited'. This can happen if the application has not been installed by the administrator "
    "of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the "
    "wrong tenant."
)


class _NoAssertions:
    kind = "certificate"

    def __call__(self, context: object) -> str:
        return "assertion"

    def refresh_after_rejection(self) -> None:
        return None

    def describe(self) -> dict[str, str]:
        return {"credential": self.kind}


def _refusal(description: str) -> TokenAcquisitionError:
    answer = {
        "error": "unauthorized_client",
        "error_description": f"{description}\r\nTrace ID: t-1\r\nCorrelation ID: c-1\r\nTimestamp: 2026-01-01",
        "error_codes": [700016],
        "correlation_id": "c-1",
        "trace_id": "t-1",
    }
    assertions = _NoAssertions()
    provider = TenantTokenProvider(
        client_id="c",
        authority_host="https://login.example",
        assertion_source=assertions,
        app_factory=lambda tenant: FakeConfidentialClient(tenant, [answer], assertions, 0.0),
    )
    with pytest.raises(TokenAcquisitionError) as info:
        provider.get_token(T1, ORG)
    return info.value


def test_a_long_description_is_quoted_by_whole_sentences_and_kept_whole() -> None:
    assert len(LONG) > SUMMARY_LIMIT
    error = _refusal(LONG)
    quoted = error.message.split(f"{T1}: ", 1)[1]
    assert not LONG[:SUMMARY_LIMIT].endswith(".")  # a plain cut would end mid-sentence
    assert quoted == LONG.rsplit(" You may", 1)[0]  # the first two sentences: the third does not fit
    assert error.description == LONG  # whole, without Entra's trace/correlation/timestamp lines
    assert error.to_dict()["description"] == LONG
    assert (error.correlation_id, error.trace_id) == ("c-1", "t-1")


def test_a_short_description_is_quoted_whole() -> None:
    error = _refusal("AADSTS700016: Application not found.")
    assert error.message.endswith(f"{T1}: AADSTS700016: Application not found.")
    assert error.description == "AADSTS700016: Application not found."


def test_a_single_sentence_longer_than_the_limit_is_cut_at_a_word_and_marked() -> None:
    sentence = "AADSTS50000: " + " ".join(f"word{i}" for i in range(80))
    cut = summarize(sentence)
    assert len(cut) <= SUMMARY_LIMIT and cut.endswith("…")
    assert sentence.startswith(cut[:-1])
    assert cut[:-1].split(" ")[-1] in sentence.split(" ")  # the last word is whole


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("One. Two. Three.", 100, "One. Two. Three."),
        ("First sentence here. Second one.", 25, "First sentence here."),
        ("Is it? Yes! Done.", 12, "Is it? Yes!"),
        ("Version 1.2 is out. Next.", 22, "Version 1.2 is out."),
    ],
)
def test_summaries_end_at_a_sentence_end(text: str, limit: int, expected: str) -> None:
    assert summarize(text, limit) == expected


def test_description_drops_only_entra_trailer_lines() -> None:
    raw = "AADSTS1: first line.\r\nsecond line.\r\nTrace ID: x\r\nCorrelation ID: y\r\nTimestamp: z"
    assert entra_description(raw) == "AADSTS1: first line. second line."
