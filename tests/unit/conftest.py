"""Unit-test fixtures: throwaway certificates and a scripted fake of MSAL's confidential client."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class TestCert:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def pfx(self, password: bytes | None = None) -> bytes:
        enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        return pkcs12.serialize_key_and_certificates(b"t", self.key, self.cert, None, enc)


def make_cert(cn: str = "unit", days: int = 30) -> TestCert:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return TestCert(key, cert)


@pytest.fixture(scope="session")
def cert_a() -> TestCert:
    return make_cert("cert-a")


@pytest.fixture(scope="session")
def cert_b() -> TestCert:
    return make_cert("cert-b")


class FakeConfidentialClient:
    """Scripted stand-in for msal.ConfidentialClientApplication: pops results, counts identity-provider calls,
    and serves from its own cache like MSAL does."""

    def __init__(
        self,
        tenant_id: str,
        script: list[dict[str, Any]] | None = None,
        assertion: Callable[[dict[str, str]], str] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.tenant_id = tenant_id
        self.script = list(script or [])
        self.assertion = assertion
        self.delay = delay
        self.requests = 0
        self.cache: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def acquire_token_for_client(self, scopes: list[str]) -> dict[str, Any]:
        scope = scopes[0]
        with self.lock:
            if scope in self.cache:
                return {**self.cache[scope], "token_source": "cache"}
            self.requests += 1
        if self.assertion is not None:
            self.assertion({"client_id": "c", "token_endpoint": f"https://login/{self.tenant_id}/oauth2/v2.0/token"})
        if self.delay:
            time.sleep(self.delay)
        result = (
            self.script.pop(0)
            if self.script
            else {"access_token": f"token-{self.tenant_id}-{scope}-{self.requests}", "expires_in": 3599}
        )
        if "access_token" in result:
            with self.lock:
                self.cache[scope] = result
            return {**result, "token_source": "identity_provider"}
        return result
