"""Client assertions the app proves its identity with: a certificate-signed JWT, or a managed identity token.

Both are MSAL assertion callables taking MSAL's context (``client_id``, ``token_endpoint``), so one source serves
every tenant: the assertion's ``aud`` is that tenant's token endpoint. MSAL calls them only on a cache miss.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import jwt

from shared.auth.certificate_sources import CertificateProvider
from shared.auth.certificates import ClientCertificate

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

# entra: certificate-credentials says keep exp "5-10 minutes after nbf"; MSAL's own default is 10 minutes.
ASSERTION_LIFETIME_SECONDS = 600


class ClientAssertionSource(Protocol):
    kind: str

    def __call__(self, context: Mapping[str, str]) -> str:
        """Return an assertion for ``context['token_endpoint']``. Raises S2SError subclasses."""
        ...

    def refresh_after_rejection(self) -> None:
        """Entra rejected the credential: re-read it before the one retry."""
        ...

    def describe(self) -> dict[str, object]:
        """Non-secret facts about the credential in use, for operators."""
        ...


def sign_client_assertion(
    certificate: ClientCertificate, context: Mapping[str, str], *, send_certificate_chain: bool, now: int
) -> str:
    """The modern client assertion for ``context`` (MSAL's ``client_id`` and ``token_endpoint``): PS256,
    ``x5t#S256``, and ``x5c`` when asked for subject-name/issuer setups (entra: certificate-credentials)."""
    headers: dict[str, Any] = {"typ": "JWT", "x5t#S256": certificate.x5t_s256}
    if send_certificate_chain:
        headers["x5c"] = certificate.x5c
    claims = {
        "aud": context["token_endpoint"],
        "iss": context["client_id"],
        "sub": context["client_id"],
        "jti": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + ASSERTION_LIFETIME_SECONDS,
    }
    return jwt.encode(claims, certificate.private_key, algorithm="PS256", headers=headers)


class CertificateAssertionSource:
    """Signs the modern assertion: PS256, ``x5t#S256``, and ``x5c`` for subject-name/issuer setups."""

    kind = "certificate"

    def __init__(
        self,
        provider: CertificateProvider,
        *,
        send_certificate_chain: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self._send_chain = send_certificate_chain
        self._clock = clock

    def __call__(self, context: Mapping[str, str]) -> str:
        return sign_client_assertion(
            self.provider.current(), context, send_certificate_chain=self._send_chain, now=int(self._clock())
        )

    def refresh_after_rejection(self) -> None:
        self.provider.refresh_after_rejection()

    def describe(self) -> dict[str, object]:
        """The version in use and any newer version waiting (shared.auth.certificate_rotation)."""
        return {"credential": self.kind, **self.provider.describe()}


class ManagedIdentityAssertionSource:
    """Secretless: a user-assigned managed identity's token for the federation audience is the assertion.

    The app registration carries a federated identity credential whose subject is the identity's principal id;
    this works for every tenant where the multi-tenant app is provisioned (entra: workload-identity-federation-
    config-app-trust-managed-identity).
    """

    kind = "managed_identity_federation"

    def __init__(
        self,
        managed_identity_client_id: str,
        audience: str,
        credential_factory: Callable[[str], TokenCredential] | None = None,
    ) -> None:
        self._client_id = managed_identity_client_id
        self._scope = f"{audience}/.default"
        self._factory = credential_factory or _managed_identity_credential
        self._credential: TokenCredential | None = None
        self._lock = threading.Lock()

    def _get_credential(self) -> TokenCredential:
        with self._lock:
            if self._credential is None:
                self._credential = self._factory(self._client_id)
            return self._credential

    def __call__(self, context: Mapping[str, str]) -> str:
        from azure.core.exceptions import ClientAuthenticationError

        from shared.errors import CredentialError

        try:
            return self._get_credential().get_token(self._scope).token
        except ClientAuthenticationError as exc:
            raise CredentialError(
                "The managed identity could not get its federation token: check MANAGED_IDENTITY_CLIENT_ID and "
                "that the identity is assigned to this Function app.",
                source=self.kind,
                is_transient=True,
            ) from exc

    def refresh_after_rejection(self) -> None:
        # Drop the credential (and the token it cached) so the retry presents a fresh identity token.
        with self._lock:
            self._credential = None

    def describe(self) -> dict[str, object]:
        return {
            "credential": self.kind,
            "managed_identity_client_id": self._client_id,
            "audience": self._scope.removesuffix("/.default"),
            "note": "Secretless: no certificate to expire or rotate.",
        }


def _managed_identity_credential(client_id: str) -> TokenCredential:
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=client_id)
