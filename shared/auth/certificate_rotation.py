"""Whether a new certificate version may sign yet: the canary's verdict on it, and the version left waiting.

Key Vault renews a certificate by adding a version with a new certificate (the default policy: 12 months,
AutoRenew 90 days before expiry; azure-cli keyvault ``_default_certificate_profile``). Entra ID accepts an
assertion only from a certificate registered on the app (AADSTS700027 otherwise), and nobody registers a version
Key Vault made on its own. So a new version is first proven by one token request signed with it (the canary, see
``shared.auth.certificate_canary``); until then the worker keeps signing with the version in use.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from shared.auth.certificates import ClientCertificate


class CanaryOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    # Entra ID refused the credential itself (AADSTS700027 class): the public part is not on the app.
    NOT_REGISTERED = "not_registered"
    # No answer, or an answer that says nothing about the certificate (Entra down, app without a service
    # principal in its home tenant, ...): prove it again later.
    UNPROVEN = "unproven"


@dataclass(frozen=True)
class CanaryVerdict:
    outcome: CanaryOutcome
    code: str | None = None  # "AADSTS700027", "entra_unreachable", ...: what ``python -m cli explain`` takes
    detail: str = ""  # what Entra ID said; safe to log (no token, assertion or key)
    fix: str = ""  # what an operator does, when it is not "register the version"
    correlation_id: str | None = None


class CertificateCanary(Protocol):
    """Proves a certificate with one token request. Never raises: every failure is a verdict."""

    client_id: str

    def __call__(self, certificate: ClientCertificate) -> CanaryVerdict: ...


class ExportHint(Protocol):
    def __call__(self, certificate: ClientCertificate) -> tuple[str, str]: ...


NOT_REGISTERED_PROBLEM = "new version not registered on the app"
UNPROVEN_PROBLEM = "new version not proven yet"


def upload_command(client_id: str, pem_file: str) -> str:
    """Adds a public certificate to the app registration's keyCredentials. ``--append`` keeps the certificates
    already registered (without it the command replaces every credential of the app), ``@file`` reads a PEM or
    DER public certificate from a file (learn.microsoft.com/cli/azure/ad/app/credential, ``reset``)."""
    return f"az ad app credential reset --id {client_id} --cert @{pem_file} --append"


def registration_fix(certificate: ClientCertificate, client_id: str, export: ExportHint | None) -> str:
    """What an operator runs so Entra ID accepts ``certificate``: export its public part, then register it."""
    if export is None:
        first, pem_file = "write the new certificate's public part to new-cert.pem", "new-cert.pem"
    else:
        first, pem_file = export(certificate)
    return (
        f"Register the new version on the app registration, keeping the one in use: {first} && "
        f"{upload_command(client_id, pem_file)}. Workers switch to it at their next check, without a restart."
    )


@dataclass(frozen=True)
class WaitingVersion:
    """A newer version the worker does not sign with yet, and why."""

    certificate: ClientCertificate
    verdict: CanaryVerdict
    fix: str
    checked_at: str  # ISO 8601 UTC of the last canary
    attempts: int
    next_check: float  # on the provider's clock

    @property
    def problem(self) -> str:
        return NOT_REGISTERED_PROBLEM if self.verdict.outcome is CanaryOutcome.NOT_REGISTERED else UNPROVEN_PROBLEM

    def why(self, in_use: ClientCertificate) -> str:
        code = self.verdict.code or "no code"
        if self.verdict.outcome is CanaryOutcome.NOT_REGISTERED:
            return (
                f"Entra ID refused a token for the app's home tenant signed with it ({code}): its public part is not "
                f"registered on the app. Still signing with version {in_use.version} (SHA-1 {in_use.sha1_thumbprint})."
            )
        return (
            f"Its test token request for the app's home tenant proved nothing ({code}: {self.verdict.detail}). "
            f"Still signing with version {in_use.version} (SHA-1 {in_use.sha1_thumbprint}) until it is proven."
        )

    def describe(self, in_use: ClientCertificate, now: float) -> dict[str, object]:
        """Non-secret facts for operators (the CLI and the certificate job)."""
        return {
            "version": self.certificate.version,
            "sha1_thumbprint": self.certificate.sha1_thumbprint,
            "not_before": self.certificate.not_before.isoformat(),
            "not_after": self.certificate.not_after.isoformat(),
            "status": str(self.verdict.outcome),
            "problem": self.problem,
            "code": self.verdict.code,
            "why": self.why(in_use),
            "fix": self.fix,
            "correlation_id": self.verdict.correlation_id,
            "checked_at": self.checked_at,
            "checks": self.attempts,
            "next_check_in_seconds": max(0, round(self.next_check - now)),
        }
