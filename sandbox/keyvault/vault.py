"""The Key Vault stand-in's vault: versions of secrets and of the certificates they back (protocol §3), and who
may read them (the "Key Vault Secrets User" grants). Every method takes the vault's one lock.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import secrets
import threading
import time
from dataclasses import dataclass, field

from sandbox.net.pki import CertificateBundle, pem_to_pfx

PEM_CONTENT_TYPE = "application/x-pem-file"
PFX_CONTENT_TYPE = "application/x-pkcs12"
_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")


def _epoch(moment: dt.datetime) -> int:
    return int(moment.timestamp())


@dataclass(frozen=True)
class SecretVersion:
    """One version of a secret; `certificate` is set when the version backs a Key Vault certificate."""

    name: str
    version: str
    value: str
    content_type: str | None
    created: int
    updated: int
    enabled: bool = True
    not_before: int | None = None
    expires: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    certificate: CertificateBundle | None = None
    previous_version: str | None = None

    @property
    def managed(self) -> bool:
        return self.certificate is not None


class Vault:
    """The one vault the sandbox serves: secret versions by name (case-insensitive) and the readers' object ids."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._vault_readers: set[str] = set()
        self._secrets: dict[str, list[SecretVersion]] = {}

    def grant_vault_secret_access(self, principal_id: str) -> None:
        """Like assigning "Key Vault Secrets User" on the vault to this object id (protocol §3)."""
        with self._lock:
            self._vault_readers.add(principal_id.lower())

    def revoke_vault_secret_access(self, principal_id: str) -> None:
        with self._lock:
            self._vault_readers.discard(principal_id.lower())

    def has_vault_secret_access(self, principal_id: str) -> bool:
        with self._lock:
            return principal_id.lower() in self._vault_readers

    def set_secret(self, name: str, value: str, content_type: str | None = None) -> str:
        """Add a new version of a plain secret; returns the version."""
        return self._add_secret_version(name, value, content_type, certificate=None)

    def create_certificate(self, name: str, bundle: CertificateBundle, content_type: str = PEM_CONTENT_TYPE) -> str:
        """Add a certificate version and its addressable secret (protocol §3); returns the version.

        The secret value is PEM (key then certificate) or base64 of a password-less PFX.
        """
        if content_type == PEM_CONTENT_TYPE:
            value = bundle.combined_pem
        elif content_type == PFX_CONTENT_TYPE:
            value = base64.b64encode(pem_to_pfx(bundle)).decode("ascii")
        else:
            raise ValueError(f"certificate content type must be {PEM_CONTENT_TYPE} or {PFX_CONTENT_TYPE}")
        return self._add_secret_version(name, value, content_type, certificate=bundle)

    def _add_secret_version(
        self, name: str, value: str, content_type: str | None, certificate: CertificateBundle | None
    ) -> str:
        if not _SECRET_NAME.match(name):
            raise ValueError(f"invalid secret name {name!r}")
        now = int(time.time())
        version = secrets.token_hex(16)
        with self._lock:
            history = self._secrets.setdefault(name.lower(), [])
            previous = history[-1].version if history and certificate is not None else None
            history.append(
                SecretVersion(
                    name=name,
                    version=version,
                    value=value,
                    content_type=content_type,
                    created=now,
                    updated=now,
                    not_before=_epoch(certificate.not_before) if certificate else None,
                    expires=_epoch(certificate.not_after) if certificate else None,
                    certificate=certificate,
                    previous_version=previous,
                )
            )
        return version

    def find_secret_version(self, name: str, version: str | None = None) -> SecretVersion | None:
        """The given version, or the latest when `version` is empty; None when there is no such secret."""
        with self._lock:
            history = self._secrets.get(name.lower(), [])
            if not version:
                return history[-1] if history else None
            return next((v for v in history if v.version == version.lower()), None)

    def list_secret_versions(self, name: str) -> list[SecretVersion]:
        with self._lock:
            return list(self._secrets.get(name.lower(), []))

    def list_latest_secrets(self) -> list[SecretVersion]:
        with self._lock:
            return [history[-1] for _, history in sorted(self._secrets.items()) if history]
