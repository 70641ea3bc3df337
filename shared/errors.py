"""The app's error root and the errors raised at the auth boundary.

Adapters translate third-party failures (MSAL error dicts, azure-core exceptions) into these, chaining the
original. Messages are safe to log and to show: they never contain a token, an assertion or key material.
"""

from __future__ import annotations

import re

# A sentence ends at ., ! or ? followed by white space (Entra writes "... directory 'x'. This can happen ...").
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Lines Entra appends to error_description; TokenAcquisitionError carries them as fields of their own.
_ENTRA_TRAILER = ("Trace ID:", "Correlation ID:", "Timestamp:")
SUMMARY_LIMIT = 300


class S2SError(Exception):
    """Root of every error this app raises on purpose. ``code`` is stable and machine-readable."""

    code = "s2s_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(S2SError):
    """A setting is missing or malformed; ``setting`` names it."""

    code = "configuration_error"

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"Setting {setting} {problem}.")
        self.setting = setting


class CredentialError(S2SError):
    """The app's own credential (certificate or managed identity token) could not be obtained."""

    code = "credential_error"

    def __init__(self, message: str, *, source: str, is_transient: bool = False) -> None:
        super().__init__(message)
        self.source = source
        self.is_transient = is_transient


class CertificateError(CredentialError):
    """The client certificate could not be read or parsed (Key Vault, file, or content)."""

    code = "certificate_error"


class InvalidTenantError(S2SError):
    """A tenant id that is not a GUID: it is never put into an authority URL."""

    code = "invalid_tenant"


class TokenAcquisitionError(S2SError):
    """Entra ID (or the network on the way) refused to give the app a token for a tenant.

    ``aadsts_code`` is the first AADSTS code Entra returned (None for network failures); ``description`` is Entra's
    ``error_description`` whole (its trace/correlation/timestamp lines left out: they are fields), while the message
    quotes only as many whole sentences of it as fit ``SUMMARY_LIMIT``; ``error`` is Entra's OAuth
    ``error`` value, or for failures without an answer to read ``entra_unreachable`` / ``entra_unavailable``
    (shared.aadsts.CONDITIONS); ``meaning`` and ``fix`` are plain words for operators; ``category`` groups codes
    callers act on (see shared.aadsts). ``lookup_code`` is what ``python -m cli explain`` takes.
    """

    code = "token_acquisition_failed"

    def __init__(
        self,
        message: str,
        *,
        tenant_id: str,
        error: str | None = None,
        aadsts_code: int | None = None,
        category: str = "unknown",
        meaning: str = "",
        fix: str = "",
        correlation_id: str | None = None,
        trace_id: str | None = None,
        is_transient: bool = False,
        description: str = "",
    ) -> None:
        super().__init__(message)
        self.tenant_id = tenant_id
        self.description = description
        self.error = error
        self.aadsts_code = aadsts_code
        self.category = category
        self.meaning = meaning
        self.fix = fix
        self.correlation_id = correlation_id
        self.trace_id = trace_id
        self.is_transient = is_transient

    @property
    def lookup_code(self) -> str:
        """``AADSTS<n>`` when Entra gave a code, else the OAuth error or condition, else this class's code."""
        if self.aadsts_code is not None:
            return f"AADSTS{self.aadsts_code}"
        return self.error or self.code

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "tenant_id": self.tenant_id,
            "error": self.error,
            "aadsts_code": self.aadsts_code,
            "category": self.category,
            "meaning": self.meaning,
            "fix": self.fix,
            "correlation_id": self.correlation_id,
            "trace_id": self.trace_id,
            "is_transient": self.is_transient,
            "description": self.description,
        }


def entra_description(raw: str) -> str:
    """Entra's ``error_description`` without the trace id, correlation id and timestamp lines it appends, its
    remaining lines joined by a space: the whole explanation, nothing cut."""
    lines = [line.strip() for line in raw.splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(_ENTRA_TRAILER))


def summarize(text: str, limit: int = SUMMARY_LIMIT) -> str:
    """The leading whole sentences of ``text`` that fit in ``limit`` characters. When even the first sentence is
    longer, it is cut at the last word boundary that fits and ends with an ellipsis, so a reader sees it was cut."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    kept = ""
    for sentence in _SENTENCE_END.split(text):
        candidate = f"{kept} {sentence}" if kept else sentence
        if len(candidate) > limit:
            break
        kept = candidate
    if kept:
        return kept
    head = text[: limit - 1]
    cut = head.rsplit(" ", 1)[0] if " " in head else head
    return cut.rstrip(" ,;:") + "…"
