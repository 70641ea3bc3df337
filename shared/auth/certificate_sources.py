"""Where the client certificate comes from (Key Vault or a file), and how long a loaded one is trusted.

``CertificateProvider`` re-reads its source after a configured interval, so a new Key Vault version is picked up
by new token requests without a restart, while Key Vault is read once per worker per interval, not per token. With
a canary it signs with a new version only once Entra ID accepted it (shared.auth.certificate_rotation).
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from shared.auth.certificate_rotation import (
    CanaryOutcome,
    CanaryVerdict,
    CertificateCanary,
    WaitingVersion,
    registration_fix,
)
from shared.auth.certificates import PKCS12_CONTENT_TYPE, ClientCertificate, parse_pem, parse_pkcs12
from shared.errors import CertificateError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

logger = logging.getLogger(__name__)


class CertificateSource(Protocol):
    """Reads the current client certificate. Raises CertificateError."""

    kind: str

    def load(self) -> ClientCertificate: ...


class KeyVaultCertificateSource:
    """Reads a Key Vault certificate through its backing secret (latest version), PEM or PFX.

    Reads are bounded: ``timeout`` per connection and per read, at most ``max_retries`` retries (5xx, 429,
    connection and read failures) with backoff capped at ``retry_backoff_max``. azure-core's defaults (300 s
    timeouts, 10 retries backing off up to 2 minutes) would hold a token request, and every signer waiting on
    the certificate, for many minutes while Key Vault is down.
    """

    kind = "key_vault"

    def __init__(
        self,
        vault_url: str,
        certificate_name: str,
        credential_factory: Callable[[], TokenCredential],
        *,
        verify_challenge_resource: bool = True,
        timeout: float = 10.0,
        max_retries: int = 2,
        retry_backoff_max: float = 4.0,
    ) -> None:
        self._vault_url = vault_url
        self._name = certificate_name
        self._credential_factory = credential_factory
        self._verify_challenge_resource = verify_challenge_resource
        self._timeout = timeout
        self._max_retries = max_retries
        self._retry_backoff_max = retry_backoff_max
        self._client: Any = None
        self._client_lock = threading.Lock()
        # version -> the version Key Vault says came before it (SecretProperties.previous_version, protocol.md §3)
        self._previous_of: dict[str, str | None] = {}

    @property
    def _vault_name(self) -> str:
        return (urlsplit(self._vault_url).hostname or "<vault>").split(".")[0]

    def _secret_client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                from azure.keyvault.secrets import SecretClient

                self._client = SecretClient(
                    self._vault_url,
                    self._credential_factory(),
                    verify_challenge_resource=self._verify_challenge_resource,
                    connection_timeout=self._timeout,
                    read_timeout=self._timeout,
                    retry_total=self._max_retries,
                    retry_backoff_factor=0.5,
                    retry_backoff_max=self._retry_backoff_max,
                )
            return self._client

    def load(self) -> ClientCertificate:
        """The latest version. Raises CertificateError."""
        return self._load(None)

    def load_previous(self, certificate: ClientCertificate) -> ClientCertificate | None:
        """The version created before ``certificate``'s, or None when there is none. Raises CertificateError."""
        if certificate.version is None:
            return None
        if certificate.version in self._previous_of:
            previous = self._previous_of[certificate.version]
        else:
            previous = self._previous_by_listing(certificate.version)
        return self._load(previous) if previous else None

    def export_hint(self, certificate: ClientCertificate) -> tuple[str, str]:
        """(command writing the version's public certificate to a PEM file, that file's name).

        ``az keyvault certificate download`` writes the public part only (azure-cli: keyvault certificate).
        """
        file = f"{self._name}-{(certificate.version or 'latest')[:8]}.pem"
        version = f" --version {certificate.version}" if certificate.version else ""
        command = (
            f"az keyvault certificate download --vault-name {self._vault_name} --name {self._name}{version} "
            f"--file {file} --encoding PEM"
        )
        return command, file

    def _load(self, version: str | None) -> ClientCertificate:
        from azure.core.exceptions import AzureError

        try:
            secret = self._secret_client().get_secret(self._name, version)
        except ValueError as exc:
            raise self._client_refused(exc) from exc
        except AzureError as exc:
            raise self._failure(exc) from exc
        value = secret.value or ""
        loaded_version = secret.properties.version
        previous_version = getattr(secret.properties, "previous_version", None)
        if loaded_version and previous_version:  # when Key Vault does not say, the listing answers
            self._previous_of[loaded_version] = previous_version
        where = f"Key Vault certificate '{self._name}'"
        if secret.properties.content_type == PKCS12_CONTENT_TYPE:
            try:
                pfx = base64.b64decode(value, validate=True)
            except binascii.Error as exc:
                raise CertificateError(f"{where} is marked PKCS#12 but is not base64.", source=self.kind) from exc
            # Key Vault stores the PFX without a password (azdocs: how-to-export-certificate).
            return parse_pkcs12(pfx, source=self.kind, version=loaded_version)
        return parse_pem(value, source=self.kind, version=loaded_version)

    def _previous_by_listing(self, version: str) -> str | None:
        """When Key Vault did not say which version came before: the enabled versions ordered by creation."""
        from azure.core.exceptions import AzureError

        try:
            listed = list(self._secret_client().list_properties_of_secret_versions(self._name))
        except ValueError as exc:
            raise self._client_refused(exc) from exc
        except AzureError as exc:
            raise self._failure(exc) from exc
        earliest = datetime.min.replace(tzinfo=UTC)
        ordered = sorted((p for p in listed if p.enabled is not False), key=lambda p: p.created_on or earliest)
        versions = [p.version for p in ordered]
        if version not in versions:
            return None
        index = versions.index(version)
        return versions[index - 1] if index > 0 else None

    def _client_refused(self, exc: ValueError) -> CertificateError:
        """The Key Vault client raises ValueError (not an AzureError) when the vault's bearer challenge is not
        acceptable, most often because it names a resource the vault's host does not belong to."""
        where = f"Key Vault certificate '{self._name}'"
        host = urlsplit(self._vault_url).hostname or self._vault_url
        if "challenge" in str(exc).lower():
            return CertificateError(
                f"{where} could not be read: the authentication challenge answered by {host} names a resource this "
                "host does not belong to, so the Key Vault client sent it no token. KEY_VAULT_URL must be the "
                "vault's own URL (https://<vault>.vault.azure.net/, or the sovereign cloud's vault domain). "
                "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE=false turns the check off: only a local stand-in on another "
                "host (the sandbox) needs that, never a real vault (python -m cli explain key_vault_challenge).",
                source=self.kind,
            )
        return CertificateError(
            f"{where} could not be read: the Key Vault client refused the request ({str(exc)[:200]}). "
            "Check KEY_VAULT_URL.",
            source=self.kind,
        )

    def _failure(self, exc: Exception) -> CertificateError:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        where = f"Key Vault certificate '{self._name}'"
        if isinstance(exc, ResourceNotFoundError):
            return CertificateError(
                f"{where} was not found: create it in {self._vault_url} or fix KEY_VAULT_CERTIFICATE_NAME.",
                source=self.kind,
            )
        if isinstance(exc, ClientAuthenticationError):
            return CertificateError(
                f"{where} could not be read: the app's identity could not authenticate to Key Vault.",
                source=self.kind,
                is_transient=True,
            )
        if isinstance(exc, HttpResponseError):
            status = exc.status_code
            if status == 403 and "disabled" in str(exc).lower():
                return CertificateError(
                    f"{where} could not be read: this version is disabled in Key Vault; enable it or add a new "
                    "version.",
                    source=self.kind,
                )
            if status == 403:
                return CertificateError(self._forbidden_message(where, _service_error_code(exc)), source=self.kind)
            return CertificateError(
                f"{where} could not be read: Key Vault answered {status} ({_service_error_code(exc)}).",
                source=self.kind,
                is_transient=status is None or status >= 500 or status == 429,
            )
        if isinstance(exc, ServiceRequestError):
            return CertificateError(
                f"{where} could not be read: Key Vault is unreachable ({type(exc).__name__}).",
                source=self.kind,
                is_transient=True,
            )
        if isinstance(exc, ServiceResponseError):
            # The request left but no answer came back: a read timeout or a dropped connection.
            return CertificateError(
                f"{where} could not be read: Key Vault did not answer in time or dropped the connection "
                f"({type(exc).__name__}).",
                source=self.kind,
                is_transient=True,
            )
        return CertificateError(
            f"{where} could not be read: {type(exc).__name__} from the Key Vault client.",
            source=self.kind,
            is_transient=True,
        )

    def _forbidden_message(self, where: str, service_code: str) -> str:
        """A vault authorizes data-plane calls with Azure RBAC or with access policies, whichever its
        enableRbacAuthorization property selects (azdocs: key-vault/general/rbac-access-policy); the fix differs."""
        vault = self._vault_name
        return (
            f"{where} could not be read: Key Vault answered 403 ({service_code}); the app's identity may not read "
            "the certificate's backing secret, where the private key lives. A vault using Azure RBAC needs the "
            "'Key Vault Secrets User' role for the identity on the vault; a vault using access policies needs "
            f"one granting it the secret get permission: az keyvault set-policy --name {vault} --object-id "
            "<the identity's principal id> --secret-permissions get. `az keyvault show --name "
            f"{vault} --query properties.enableRbacAuthorization` tells which the vault uses. A 403 about the "
            "client address comes from the vault's firewall instead."
        )


def _service_error_code(exc: Exception) -> str:
    """Key Vault's own error code and inner code (``Forbidden/ForbiddenByRbac``), from the answer's error body."""
    error = getattr(exc, "error", None)
    inner = getattr(error, "innererror", None)
    codes = [getattr(error, "code", None), inner.get("code") if isinstance(inner, Mapping) else None]
    return "/".join(str(c) for c in codes if c) or "no error code"


class FileCertificateSource:
    """Reads a PEM (key + certificate) or PFX file, for local work."""

    kind = "file"

    def __init__(self, path: str | Path, password: str | None = None) -> None:
        self._path = Path(path)
        self._password = password.encode("utf-8") if password else None

    def export_hint(self, certificate: ClientCertificate) -> tuple[str, str]:
        """(command writing the file's public certificate, without its key, to a PEM file; that file's name)."""
        pfx = self._path.suffix.lower() in {".pfx", ".p12"}
        command = f"openssl {'pkcs12 -nokeys' if pfx else 'x509'} -in {self._path} -out client-cert.pem"
        return command, "client-cert.pem"

    def load(self) -> ClientCertificate:
        try:
            data = self._path.read_bytes()
        except OSError as exc:
            raise CertificateError(
                f"Certificate file {self._path} cannot be read ({exc.strerror}).", source=self.kind
            ) from exc
        if self._path.suffix.lower() in {".pfx", ".p12"} or not data.lstrip().startswith(b"-----"):
            return parse_pkcs12(data, source=self.kind, password=self._password)
        return parse_pem(data, source=self.kind, password=self._password)


class CertificateProvider:
    """Keeps the certificate to sign with; re-reads the source after ``refresh_seconds`` or after a rejection.

    If a periodic re-read fails, the certificate already loaded stays in use (it is still registered on the
    app until someone removes it) and the re-read is tried again after ``retry_seconds``. If the first read fails
    there is nothing to sign with: callers within ``retry_seconds`` of that failure get the same error at once
    instead of each waiting out their own Key Vault timeouts and retries (a sweep over many tenants on a fresh
    worker would otherwise spend its whole time budget on one outage).

    With a ``canary``, a version is used only once one token request signed with it succeeded
    (shared.auth.certificate_rotation). A version Entra ID refuses waits, checked again every ``refresh_seconds``;
    one whose check proved nothing (Entra unreachable, ...) is checked again after ``retry_seconds``, doubling up
    to ``refresh_seconds``. A fresh worker whose latest version is refused signs with the newest older version
    that is accepted (at most ``fallback_depth`` back), so a new instance does not start into the outage either.
    """

    def __init__(
        self,
        source: CertificateSource,
        *,
        refresh_seconds: float,
        retry_seconds: float = 60.0,
        min_forced_interval: float = 10.0,
        canary: CertificateCanary | None = None,
        fallback_depth: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._refresh_seconds = refresh_seconds
        self._retry_seconds = min(retry_seconds, refresh_seconds)
        # A burst of rejected token requests (many tenants at once) must not become a burst of Key Vault reads.
        self._min_forced_interval = min_forced_interval
        self._canary = canary
        self._fallback_depth = fallback_depth
        self._clock = clock
        self._lock = threading.Lock()
        self._certificate: ClientCertificate | None = None
        self._proven = False
        self._unproven_verdict: CanaryVerdict | None = None
        self._unproven_checks = 0
        self._waiting: WaitingVersion | None = None
        self._last_forced = float("-inf")
        self._next_refresh = float("-inf")
        self._first_failure: CertificateError | None = None
        self._first_failed_at = float("-inf")
        self.loads = 0
        self.canary_checks = 0

    @property
    def source_kind(self) -> str:
        return self._source.kind

    @property
    def waiting(self) -> WaitingVersion | None:
        """The newer version not used yet, if any."""
        return self._waiting

    def current(self) -> ClientCertificate:
        """The certificate to sign with now. Raises CertificateError only if none was ever loaded."""
        certificate = self._certificate
        if certificate is not None:
            if self._clock() < self._next_refresh:
                return certificate
            # Another thread is re-reading (perhaps proving a new version with a token request): sign with the
            # version in use rather than wait for it.
            if not self._lock.acquire(blocking=False):
                return certificate
            try:
                if self._clock() < self._next_refresh:
                    return certificate
                return self._reload_locked(forced=False)
            finally:
                self._lock.release()
        with self._lock:
            if self._certificate is not None and self._clock() < self._next_refresh:
                return self._certificate
            failure, since = self._first_failure, self._clock() - self._first_failed_at
            if self._certificate is None and failure is not None and since < self._retry_seconds:
                raise CertificateError(
                    f"{failure.message} (failed {since:.0f} s ago; read again after {self._retry_seconds:.0f} s)",
                    source=failure.source,
                    is_transient=failure.is_transient,
                )
            return self._reload_locked(forced=False)

    def refresh_after_rejection(self) -> ClientCertificate:
        """Re-read now because Entra rejected the credential (it may have rotated), unless just re-read."""
        with self._lock:
            now = self._clock()
            if self._certificate is not None and now - self._last_forced < self._min_forced_interval:
                return self._certificate
            self._last_forced = now
            return self._reload_locked(forced=True)

    def describe(self) -> dict[str, object]:
        """The version in use and the version waiting, if any: non-secret facts for operators."""
        certificate = self.current()
        described = certificate.describe()
        if self._canary is not None:
            described["proven"] = self._proven
            if not self._proven and self._unproven_verdict is not None:
                verdict = self._unproven_verdict
                described["unproven_because"] = f"{verdict.code}: {verdict.detail}"
        waiting = self._waiting
        described["waiting_version"] = waiting.describe(certificate, self._clock()) if waiting else None
        return described

    def _reload_locked(self, *, forced: bool) -> ClientCertificate:
        previous = self._certificate
        now = self._clock()
        try:
            latest = self._source.load()
        except CertificateError as exc:
            if previous is None:
                self._first_failure, self._first_failed_at = exc, now
                raise
            self._next_refresh = now + self._retry_seconds
            logger.warning(
                "Certificate re-read failed; keeping version %s until the next try: %s", previous.version, exc
            )
            return previous
        self.loads += 1
        self._first_failure = None
        self._next_refresh = now + self._refresh_seconds
        if previous is not None and previous.sha256_thumbprint == latest.sha256_thumbprint:
            self._waiting = None  # nothing newer (a waiting version was deleted or disabled)
            if self._canary is None or self._proven:
                return previous
            # In use without proof (chosen while Entra ID could not answer): prove it now, or fall back.
            return self._choose_locked(latest, None, now, forced)
        return self._choose_locked(latest, previous, now, forced)

    def _choose_locked(
        self, latest: ClientCertificate, previous: ClientCertificate | None, now: float, forced: bool
    ) -> ClientCertificate:
        canary = self._canary
        if canary is None:
            return self._use_locked(latest, proven=False)
        waiting = self._waiting
        same = waiting is not None and waiting.certificate.sha256_thumbprint == latest.sha256_thumbprint
        if previous is not None and waiting is not None and same and not forced and now < waiting.next_check:
            self._next_refresh = min(self._next_refresh, waiting.next_check)
            return previous
        verdict = self._prove(latest)
        if verdict.outcome is CanaryOutcome.ACCEPTED:
            self._waiting = None
            return self._use_locked(latest, proven=True)
        if waiting is not None and same:
            attempts = waiting.attempts + 1
        else:
            attempts = self._unproven_checks + 1 if previous is None else 1
        if verdict.outcome is CanaryOutcome.NOT_REGISTERED:
            delay = self._refresh_seconds
            fix = registration_fix(latest, canary.client_id, getattr(self._source, "export_hint", None))
        else:
            delay = min(self._retry_seconds * 2 ** (attempts - 1), self._refresh_seconds)
            fix = verdict.fix
        self._next_refresh = min(self._next_refresh, now + delay)
        checked_at = datetime.now(UTC).isoformat(timespec="seconds")
        self._waiting = WaitingVersion(latest, verdict, fix, checked_at, attempts, now + delay)
        if previous is None:
            return self._first_choice_locked(latest, verdict)
        if verdict.outcome is CanaryOutcome.UNPROVEN and previous.days_left() <= 0:
            logger.warning(
                "Certificate version %s in use has expired; switching to version %s although its check proved "
                "nothing (%s)",
                previous.version,
                latest.version,
                verdict.code,
            )
            self._waiting = None
            self._unproven_verdict = verdict
            return self._use_locked(latest, proven=False)
        self._log_waiting(previous)
        return previous

    def _first_choice_locked(self, latest: ClientCertificate, verdict: CanaryVerdict) -> ClientCertificate:
        """Nothing proven is in use: sign with the newest older version Entra ID accepts, else with the latest."""
        if verdict.outcome is CanaryOutcome.NOT_REGISTERED:
            older = self._older_accepted_locked(latest)
            if older is not None:
                self._log_waiting(older)
                return self._use_locked(older, proven=True)
        self._unproven_checks = self._waiting.attempts if self._waiting is not None else 1
        self._waiting = None
        self._unproven_verdict = verdict
        log = logger.error if verdict.outcome is CanaryOutcome.NOT_REGISTERED else logger.warning
        log(
            "Certificate version %s (SHA-1 %s) is used without proof: no version Entra ID accepts was found (%s: %s)",
            latest.version,
            latest.sha1_thumbprint,
            verdict.code,
            verdict.detail,
        )
        return self._use_locked(latest, proven=False)

    def _older_accepted_locked(self, latest: ClientCertificate) -> ClientCertificate | None:
        load_previous = getattr(self._source, "load_previous", None)
        if not callable(load_previous):
            return None
        candidate = latest
        for _ in range(self._fallback_depth):
            try:
                older: ClientCertificate | None = load_previous(candidate)
            except CertificateError as exc:
                logger.warning("Could not read the version before %s: %s", candidate.version, exc)
                return None
            if older is None or older.days_left() <= 0:
                return None
            if self._prove(older).outcome is CanaryOutcome.ACCEPTED:
                return older
            candidate = older
        return None

    def _prove(self, certificate: ClientCertificate) -> CanaryVerdict:
        assert self._canary is not None
        self.canary_checks += 1
        verdict = self._canary(certificate)
        logger.info(
            "Certificate version %s (SHA-1 %s) checked with a token request for the home tenant: %s %s",
            certificate.version,
            certificate.sha1_thumbprint,
            verdict.outcome,
            verdict.code or "",
        )
        return verdict

    def _log_waiting(self, in_use: ClientCertificate) -> None:
        waiting = self._waiting
        if waiting is None:
            return
        new = waiting.certificate
        if waiting.verdict.outcome is CanaryOutcome.NOT_REGISTERED:
            logger.error(
                "Certificate version %s (SHA-1 %s) is not registered on the app: %s (%s). Still signing with "
                "version %s (SHA-1 %s). Fix: %s",
                new.version,
                new.sha1_thumbprint,
                waiting.verdict.detail,
                waiting.verdict.code,
                in_use.version,
                in_use.sha1_thumbprint,
                waiting.fix,
            )
            return
        logger.warning(
            "Certificate version %s (SHA-1 %s) could not be proven (%s: %s); still signing with version %s "
            "(SHA-1 %s); next check in %d s",
            new.version,
            new.sha1_thumbprint,
            waiting.verdict.code,
            waiting.verdict.detail,
            in_use.version,
            in_use.sha1_thumbprint,
            max(0, round(waiting.next_check - self._clock())),
        )

    def _use_locked(self, certificate: ClientCertificate, *, proven: bool) -> ClientCertificate:
        previous = self._certificate
        self._certificate = certificate
        self._proven = proven
        if proven:
            self._unproven_verdict = None
            self._unproven_checks = 0
        if previous is None or previous.sha256_thumbprint != certificate.sha256_thumbprint:
            logger.info(
                "Client certificate loaded from %s: version %s, SHA-1 %s, expires %s%s",
                certificate.source,
                certificate.version,
                certificate.sha1_thumbprint,
                certificate.not_after.isoformat(),
                "" if previous is None else f" (was version {previous.version}, SHA-1 {previous.sha1_thumbprint})",
            )
        return certificate
