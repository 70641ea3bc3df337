"""Where the client certificate comes from (Key Vault or a file), and how long a loaded one is trusted.

``CertificateProvider`` re-reads its source after a configured interval, so a new Key Vault version is picked up
by new token requests without a restart, while Key Vault is read once per worker per interval, not per token.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

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
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        where = f"Key Vault certificate '{self._name}'"
        try:
            secret = self._secret_client().get_secret(self._name)
        except ResourceNotFoundError as exc:
            raise CertificateError(
                f"{where} was not found: create it in {self._vault_url} or fix KEY_VAULT_CERTIFICATE_NAME.",
                source=self.kind,
            ) from exc
        except ClientAuthenticationError as exc:
            raise CertificateError(
                f"{where} could not be read: the app's identity could not authenticate to Key Vault.",
                source=self.kind,
                is_transient=True,
            ) from exc
        except HttpResponseError as exc:
            if exc.status_code == 403 and "disabled" in str(exc).lower():
                raise CertificateError(
                    f"{where} could not be read: its latest version is disabled in Key Vault; enable it or add a "
                    "new version.",
                    source=self.kind,
                ) from exc
            if exc.status_code == 403:
                raise CertificateError(
                    f"{where} could not be read: the app's identity needs the 'Key Vault Secrets User' role "
                    "on the vault (the private key lives in the certificate's backing secret).",
                    source=self.kind,
                ) from exc
            raise CertificateError(
                f"{where} could not be read: Key Vault answered {exc.status_code}.",
                source=self.kind,
                is_transient=exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429,
            ) from exc
        except ServiceRequestError as exc:
            raise CertificateError(
                f"{where} could not be read: Key Vault is unreachable ({type(exc).__name__}).",
                source=self.kind,
                is_transient=True,
            ) from exc
        except ServiceResponseError as exc:
            # The request left but no answer came back: a read timeout or a dropped connection.
            raise CertificateError(
                f"{where} could not be read: Key Vault did not answer in time or dropped the connection "
                f"({type(exc).__name__}).",
                source=self.kind,
                is_transient=True,
            ) from exc
        except AzureError as exc:
            raise CertificateError(
                f"{where} could not be read: {type(exc).__name__} from the Key Vault client.",
                source=self.kind,
                is_transient=True,
            ) from exc
        value = secret.value or ""
        version = secret.properties.version
        if secret.properties.content_type == PKCS12_CONTENT_TYPE:
            try:
                pfx = base64.b64decode(value, validate=True)
            except binascii.Error as exc:
                raise CertificateError(f"{where} is marked PKCS#12 but is not base64.", source=self.kind) from exc
            # Key Vault stores the PFX without a password (azdocs: how-to-export-certificate).
            return parse_pkcs12(pfx, source=self.kind, version=version)
        return parse_pem(value, source=self.kind, version=version)


class FileCertificateSource:
    """Reads a PEM (key + certificate) or PFX file, for local work."""

    kind = "file"

    def __init__(self, path: str | Path, password: str | None = None) -> None:
        self._path = Path(path)
        self._password = password.encode("utf-8") if password else None

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
    """Keeps the current certificate; re-reads the source after ``refresh_seconds`` or after a rejection.

    If a periodic re-read fails, the certificate already loaded stays in use (it is still registered on the
    app until someone removes it) and the re-read is tried again after ``retry_seconds``. If the first read fails
    there is nothing to sign with: callers within ``retry_seconds`` of that failure get the same error at once
    instead of each waiting out their own Key Vault timeouts and retries (a sweep over many tenants on a fresh
    worker would otherwise spend its whole time budget on one outage).
    """

    def __init__(
        self,
        source: CertificateSource,
        *,
        refresh_seconds: float,
        retry_seconds: float = 60.0,
        min_forced_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._refresh_seconds = refresh_seconds
        self._retry_seconds = min(retry_seconds, refresh_seconds)
        # A burst of rejected token requests (many tenants at once) must not become a burst of Key Vault reads.
        self._min_forced_interval = min_forced_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._certificate: ClientCertificate | None = None
        self._last_forced = float("-inf")
        self._next_refresh = float("-inf")
        self._first_failure: CertificateError | None = None
        self._first_failed_at = float("-inf")
        self.loads = 0

    @property
    def source_kind(self) -> str:
        return self._source.kind

    def current(self) -> ClientCertificate:
        """The certificate to sign with now. Raises CertificateError only if none was ever loaded."""
        certificate = self._certificate
        if certificate is not None and self._clock() < self._next_refresh:
            return certificate
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
            return self._reload_locked()

    def refresh_after_rejection(self) -> ClientCertificate:
        """Re-read now because Entra rejected the credential (it may have rotated), unless just re-read."""
        with self._lock:
            now = self._clock()
            if self._certificate is not None and now - self._last_forced < self._min_forced_interval:
                return self._certificate
            self._last_forced = now
            return self._reload_locked()

    def _reload_locked(self) -> ClientCertificate:
        previous = self._certificate
        now = self._clock()
        try:
            certificate = self._source.load()
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
        self._certificate = certificate
        self._next_refresh = now + self._refresh_seconds
        if previous is None or previous.sha256_thumbprint != certificate.sha256_thumbprint:
            logger.info(
                "Client certificate loaded from %s: version %s, SHA-1 %s, expires %s",
                certificate.source,
                certificate.version,
                certificate.sha1_thumbprint,
                certificate.not_after.isoformat(),
            )
        return certificate
