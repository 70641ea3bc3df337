"""Key Vault failures become CertificateErrors that name the fix, with a fake SecretClient."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ODataV4Format

from shared.auth.certificate_sources import CertificateProvider, KeyVaultCertificateSource
from shared.auth.certificates import parse_pem
from shared.errors import CertificateError
from tests.unit.conftest import make_cert

CHALLENGE_ERROR = ValueError(
    "The challenge resource 'vault.azure.net' does not match the requested domain. Pass "
    "`verify_challenge_resource=False` to your client's constructor to disable this verification."
)


class FakeSecretClient:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def get_secret(self, name: str, version: str | None = None) -> Any:
        self.calls += 1
        raise self.error


def source_with(error: Exception) -> tuple[KeyVaultCertificateSource, FakeSecretClient]:
    source = KeyVaultCertificateSource("https://contoso-kv.vault.azure.net/", "s2s", credential_factory=lambda: None)  # type: ignore[arg-type,return-value]
    client = FakeSecretClient(error)
    source._client = client
    return source, client


def forbidden(body: dict[str, Any]) -> HttpResponseError:
    error = HttpResponseError(message="Forbidden")
    error.status_code = 403
    error.error = ODataV4Format(body)
    return error


def test_a_challenge_for_another_resource_is_a_certificate_error_naming_the_setting():
    source, _ = source_with(CHALLENGE_ERROR)
    with pytest.raises(CertificateError) as info:
        source.load()
    assert "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE" in info.value.message
    assert "KEY_VAULT_URL" in info.value.message
    assert "verify_challenge_resource=False" not in info.value.message  # not the SDK's advice
    assert info.value.is_transient is False


def test_a_refused_challenge_is_not_asked_again_on_every_call():
    source, client = source_with(CHALLENGE_ERROR)
    clock = [1000.0]
    provider = CertificateProvider(source, refresh_seconds=300, retry_seconds=60, clock=lambda: clock[0])
    for _ in range(20):
        with pytest.raises(CertificateError, match="KEY_VAULT_VERIFY_CHALLENGE_RESOURCE"):
            provider.current()
    assert client.calls == 1
    clock[0] += 61
    with pytest.raises(CertificateError):
        provider.current()
    assert client.calls == 2


def test_403_from_an_rbac_vault_names_both_fixes_and_key_vaults_code():
    source, _ = source_with(
        forbidden(
            {
                "error": {
                    "code": "Forbidden",
                    "message": "Caller is not authorized",
                    "innererror": {"code": "ForbiddenByRbac"},
                }
            }
        )
    )
    with pytest.raises(CertificateError) as info:
        source.load()
    message = info.value.message
    assert "Forbidden/ForbiddenByRbac" in message
    assert "Key Vault Secrets User" in message
    assert "az keyvault set-policy --name contoso-kv" in message and "--secret-permissions get" in message


def test_403_from_an_access_policy_vault_carries_its_own_code():
    source, _ = source_with(
        forbidden({"error": {"code": "Forbidden", "message": "does not have secrets get permission on key vault"}})
    )
    with pytest.raises(CertificateError) as info:
        source.load()
    assert "(Forbidden)" in info.value.message


def test_the_export_hint_names_the_vault_the_certificate_and_the_version():
    source, _ = source_with(CHALLENGE_ERROR)
    cert = make_cert("hint")
    parsed = parse_pem(cert.key_pem + cert.cert_pem, source="key_vault", version="0123456789abcdef")
    command, file = source.export_hint(parsed)
    assert command == (
        "az keyvault certificate download --vault-name contoso-kv --name s2s --version 0123456789abcdef "
        "--file s2s-01234567.pem --encoding PEM"
    )
    assert file == "s2s-01234567.pem"


class VersionedClient:
    """Certificate-backed secret versions (oldest first) that do not say which came before them."""

    def __init__(self, versions: list[tuple[str, bytes, bool]]) -> None:
        self.versions = versions  # (version, PEM, enabled)

    def get_secret(self, name: str, version: str | None = None) -> Any:
        chosen = next(v for v in self.versions if v[0] == version) if version else self.versions[-1]
        properties = SimpleNamespace(version=chosen[0], content_type="application/x-pem-file", previous_version=None)
        return SimpleNamespace(value=chosen[1].decode("ascii"), properties=properties)

    def list_properties_of_secret_versions(self, name: str) -> list[Any]:
        start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        listed = [
            SimpleNamespace(version=v, enabled=enabled, created_on=start + dt.timedelta(days=i))
            for i, (v, _, enabled) in enumerate(self.versions)
        ]
        return listed[::-1]  # newest first: the service's order is not creation order


def test_the_version_before_is_found_by_creation_date_skipping_disabled_ones():
    pems = [make_cert(name) for name in ("v1", "v2", "v3")]
    client = VersionedClient([
        ("v1", pems[0].key_pem + pems[0].cert_pem, True),
        ("v2", pems[1].key_pem + pems[1].cert_pem, False),
        ("v3", pems[2].key_pem + pems[2].cert_pem, True),
    ])  # fmt: skip
    source, _ = source_with(CHALLENGE_ERROR)
    source._client = client
    latest = source.load()
    assert latest.version == "v3"
    previous = source.load_previous(latest)
    assert previous is not None and previous.version == "v1"
    assert source.load_previous(previous) is None
