"""When a new certificate version may sign: the provider's decisions with a fake canary and a scripted source."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import threading

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from shared.auth.certificate_canary import HomeTenantCanary
from shared.auth.certificate_rotation import CanaryOutcome, CanaryVerdict
from shared.auth.certificate_sources import CertificateProvider
from shared.auth.certificates import ClientCertificate, parse_pem
from shared.auth.client_assertions import CertificateAssertionSource
from shared.errors import CertificateError
from tests.unit.conftest import TestCert as Cert

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
ACCEPTED = CanaryVerdict(CanaryOutcome.ACCEPTED)
NOT_REGISTERED = CanaryVerdict(CanaryOutcome.NOT_REGISTERED, "AADSTS700027", "Client assertion contains an invalid")
UNREACHABLE = CanaryVerdict(CanaryOutcome.UNPROVEN, "entra_unreachable", "ConnectionError", "check the network")


def version(cert: Cert, name: str) -> ClientCertificate:
    return parse_pem(cert.key_pem + cert.cert_pem, source="key_vault", version=name)


def expired_cert() -> Cert:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return Cert(key, cert)


class VaultSource:
    """Key Vault as the provider sees it: ``versions`` oldest first, the last one is the latest."""

    kind = "key_vault"

    def __init__(self, *versions: ClientCertificate) -> None:
        self.versions = list(versions)
        self.loads = 0
        self.fail: CertificateError | None = None

    def load(self) -> ClientCertificate:
        self.loads += 1
        if self.fail is not None:
            raise self.fail
        return self.versions[-1]

    def load_previous(self, certificate: ClientCertificate) -> ClientCertificate | None:
        names = [v.version for v in self.versions]
        index = names.index(certificate.version)
        return self.versions[index - 1] if index > 0 else None

    def export_hint(self, certificate: ClientCertificate) -> tuple[str, str]:
        file = f"s2s-{certificate.version}.pem"
        return f"az keyvault certificate download --name s2s --version {certificate.version} --file {file}", file


class FakeCanary:
    """Entra ID's verdict per certificate thumbprint; ``ACCEPTED`` for any it was not told about."""

    client_id = CLIENT_ID

    def __init__(self) -> None:
        self.verdicts: dict[str, CanaryVerdict] = {}
        self.checked: list[str | None] = []

    def say(self, certificate: ClientCertificate, verdict: CanaryVerdict) -> None:
        self.verdicts[certificate.sha256_thumbprint] = verdict

    def __call__(self, certificate: ClientCertificate) -> CanaryVerdict:
        self.checked.append(certificate.version)
        return self.verdicts.get(certificate.sha256_thumbprint, ACCEPTED)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def v1(cert_a):
    return version(cert_a, "v1")


@pytest.fixture
def v2(cert_b):
    return version(cert_b, "v2")


def provider_for(source, canary, clock, **kwargs):
    kwargs.setdefault("refresh_seconds", 300)
    kwargs.setdefault("retry_seconds", 30)
    return CertificateProvider(source, canary=canary, clock=clock, **kwargs)


def test_a_registered_new_version_is_proven_once_then_used_without_restart(v1, v2):
    source, canary, clock = VaultSource(v1), FakeCanary(), Clock()
    provider = provider_for(source, canary, clock)
    assert provider.current().version == "v1"
    source.versions.append(v2)
    clock.now += 301
    for _ in range(5):
        assert provider.current().version == "v2"
    assert canary.checked == ["v1", "v2"]
    assert provider.waiting is None
    assert provider.describe()["proven"] is True


def test_a_version_entra_refuses_waits_and_the_version_in_use_keeps_signing(v1, v2, caplog):
    source, canary, clock = VaultSource(v1), FakeCanary(), Clock()
    provider = provider_for(source, canary, clock)
    provider.current()
    source.versions.append(v2)
    canary.say(v2, NOT_REGISTERED)
    clock.now += 301
    with caplog.at_level(logging.ERROR, logger="shared.auth.certificate_sources"):
        assert provider.current().version == "v1"
    waiting = provider.describe()["waiting_version"]
    assert isinstance(waiting, dict)
    assert waiting["version"] == "v2"
    assert waiting["status"] == "not_registered"
    assert waiting["problem"] == "new version not registered on the app"
    assert waiting["code"] == "AADSTS700027"
    assert v1.sha1_thumbprint in str(waiting["why"])
    assert "az keyvault certificate download --name s2s --version v2" in str(waiting["fix"])
    assert f"az ad app credential reset --id {CLIENT_ID} --cert @s2s-v2.pem --append" in str(waiting["fix"])
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == 1
    assert v1.sha1_thumbprint in logged[0] and v2.sha1_thumbprint in logged[0]
    assert "--append" in logged[0]


def test_a_refused_version_is_checked_again_each_refresh_and_used_once_registered(v1, v2):
    source, canary, clock = VaultSource(v1, v2), FakeCanary(), Clock()
    canary.say(v2, NOT_REGISTERED)
    provider = provider_for(source, canary, clock)
    provider.current()
    checks = len(canary.checked)
    clock.now += 299
    assert provider.current().version == "v1"
    assert len(canary.checked) == checks  # not asked again before refresh_seconds
    canary.say(v2, ACCEPTED)  # the operator registered it
    clock.now += 2
    assert provider.current().version == "v2"
    assert provider.waiting is None


def test_a_check_that_proved_nothing_is_retried_with_bounded_backoff_and_switches_nothing(v1, v2):
    source, canary, clock = VaultSource(v1), FakeCanary(), Clock()
    provider = provider_for(source, canary, clock, refresh_seconds=300, retry_seconds=30)
    provider.current()
    source.versions.append(v2)
    canary.say(v2, UNREACHABLE)
    clock.now += 301
    checked_at = []
    for _ in range(2000):  # 2000 s in 1 s steps
        before = len(canary.checked)
        assert provider.current().version == "v1"
        if len(canary.checked) > before:
            checked_at.append(clock.now)
        clock.now += 1
    gaps = [round(b - a) for a, b in itertools.pairwise(checked_at)]
    assert gaps[:4] == [30, 60, 120, 240]
    assert set(gaps[4:]) == {300}  # the backoff stops at refresh_seconds
    waiting = provider.describe()["waiting_version"]
    assert isinstance(waiting, dict)
    assert waiting["status"] == "unproven" and waiting["code"] == "entra_unreachable"
    assert waiting["fix"] == "check the network"


def test_a_fresh_worker_whose_latest_version_is_refused_signs_with_the_older_accepted_one(v1, v2, cert_a):
    source, canary, clock = VaultSource(v1, v2), FakeCanary(), Clock()
    canary.say(v2, NOT_REGISTERED)
    provider = provider_for(source, canary, clock)
    assert provider.current().version == "v1"
    assert canary.checked == ["v2", "v1"]
    described = provider.describe()
    assert described["proven"] is True
    assert isinstance(described["waiting_version"], dict) and described["waiting_version"]["version"] == "v2"


def test_a_fresh_worker_that_cannot_prove_anything_signs_with_the_latest_and_falls_back_once_entra_answers(v1, v2):
    source, canary, clock = VaultSource(v1, v2), FakeCanary(), Clock()
    canary.say(v2, UNREACHABLE)
    provider = provider_for(source, canary, clock)
    assert provider.current().version == "v2"  # nothing better to sign with; Entra ID cannot be asked
    assert provider.describe()["proven"] is False
    canary.say(v2, NOT_REGISTERED)  # Entra ID is back and refuses it
    clock.now += 31
    assert provider.current().version == "v1"
    assert provider.describe()["proven"] is True


def test_an_expired_version_in_use_gives_way_to_one_that_could_not_be_proven(cert_b):
    old = version(expired_cert(), "v1")
    new = version(cert_b, "v2")
    source, canary, clock = VaultSource(old), FakeCanary(), Clock()
    provider = provider_for(source, canary, clock)
    provider.current()
    source.versions.append(new)
    canary.say(new, UNREACHABLE)
    clock.now += 301
    assert provider.current().version == "v2"


def test_a_rejection_of_the_version_in_use_checks_the_waiting_version_at_once(v1, v2):
    source, canary, clock = VaultSource(v1, v2), FakeCanary(), Clock()
    canary.say(v2, NOT_REGISTERED)
    provider = provider_for(source, canary, clock, refresh_seconds=3600)
    provider.current()
    canary.say(v2, ACCEPTED)  # v2 registered and v1 removed from the app at once
    assert provider.refresh_after_rejection().version == "v2"


def test_signers_do_not_wait_while_a_new_version_is_being_proven(v1, v2):
    source, clock = VaultSource(v1), Clock()
    started, release = threading.Event(), threading.Event()

    class SlowCanary(FakeCanary):
        def __call__(self, certificate):
            if certificate.version == "v2":
                started.set()
                release.wait(5)
            return super().__call__(certificate)

    provider = provider_for(source, SlowCanary(), clock)
    provider.current()
    source.versions.append(v2)
    clock.now += 301
    prover = threading.Thread(target=provider.current)
    prover.start()
    assert started.wait(5)
    got: list[str | None] = []
    signer = threading.Thread(target=lambda: got.append(provider.current().version))
    signer.start()
    signer.join(2)
    release.set()
    assert got == ["v1"]  # returned while the canary still ran
    prover.join(5)
    assert provider.current().version == "v2"


def test_without_a_canary_a_new_version_is_used_as_before(v1, v2):
    source, clock = VaultSource(v1), Clock()
    provider = CertificateProvider(source, refresh_seconds=300, clock=clock)
    provider.current()
    source.versions.append(v2)
    clock.now += 301
    assert provider.current().version == "v2"
    assert "proven" not in provider.describe()


# -- the canary itself, with a fake MSAL app -------------------------------------------------------------------


class FakeApp:
    def __init__(self, assertion, result=None, raises=None):
        self.assertion, self.result, self.raises = assertion, result, raises
        self.scopes: list[str] = []
        self.signed: list[str] = []

    def acquire_token_for_client(self, scopes):
        self.scopes = scopes
        self.signed.append(self.assertion({"client_id": CLIENT_ID, "token_endpoint": "https://login/home/token"}))
        if self.raises is not None:
            raise self.raises
        return self.result


def canary_with(result=None, raises=None):
    apps: list[FakeApp] = []

    def factory(assertion):
        apps.append(FakeApp(assertion, result, raises))
        return apps[-1]

    canary = HomeTenantCanary(
        client_id=CLIENT_ID, authority_host="https://login.example", home_tenant_id="home", app_factory=factory
    )
    return canary, apps


def test_the_canary_asks_for_the_apps_own_id_signed_with_the_candidate(v2):
    canary, apps = canary_with({"access_token": "t", "expires_in": 3599})
    assert canary(v2).outcome is CanaryOutcome.ACCEPTED
    assert apps[0].scopes == [f"{CLIENT_ID}/.default"]
    header = jwt.get_unverified_header(apps[0].signed[0])
    assert header["x5t#S256"] == v2.x5t_s256
    canary(v2)
    assert len(apps) == 2  # a fresh app (and cache) per check: the request always reaches Entra ID


@pytest.mark.parametrize(
    ("result", "outcome", "code", "fix_part"),
    [
        ({"error": "invalid_client", "error_codes": [700027], "error_description": "AADSTS700027: x"},
         CanaryOutcome.NOT_REGISTERED, "AADSTS700027", "Upload"),
        ({"error": "invalid_client", "error_codes": [7000229], "error_description": "AADSTS7000229: no sp"},
         CanaryOutcome.UNPROVEN, "AADSTS7000229", f"az ad sp create --id {CLIENT_ID}"),
        ({"error": "temporarily_unavailable", "error_codes": [90033], "error_description": "AADSTS90033: busy"},
         CanaryOutcome.UNPROVEN, "AADSTS90033", "Nothing to change"),
    ],
)  # fmt: skip
def test_the_canary_tells_a_refused_certificate_from_other_answers(v2, result, outcome, code, fix_part):
    canary, _ = canary_with(result)
    verdict = canary(v2)
    assert (verdict.outcome, verdict.code) == (outcome, code)
    assert fix_part in verdict.fix


def test_the_canary_reports_an_unreachable_entra_as_unproven(v2):
    canary, _ = canary_with(raises=requests.ConnectionError("refused"))
    verdict = canary(v2)
    assert (verdict.outcome, verdict.code) == (CanaryOutcome.UNPROVEN, "entra_unreachable")


def test_the_assertion_source_describes_the_version_waiting(v1, v2):
    source, canary, clock = VaultSource(v1, v2), FakeCanary(), Clock()
    canary.say(v2, NOT_REGISTERED)
    described = CertificateAssertionSource(provider_for(source, canary, clock)).describe()
    assert described["credential"] == "certificate"
    assert described["version"] == "v1"
    assert isinstance(described["waiting_version"], dict)
    assert described["waiting_version"]["sha1_thumbprint"] == v2.sha1_thumbprint
    assert "PRIVATE" not in str(described)
