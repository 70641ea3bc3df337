import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from shared.auth.certificate_sources import CertificateProvider, FileCertificateSource
from shared.auth.certificates import parse_pem, parse_pkcs12
from shared.errors import CertificateError


def test_key_first_pem_as_key_vault_stores_it(cert_a):
    parsed = parse_pem(cert_a.key_pem + cert_a.cert_pem, source="key_vault", version="v1")
    der = cert_a.cert.public_bytes(serialization.Encoding.DER)
    assert parsed.sha1_thumbprint == hashlib.sha1(der).hexdigest().upper()
    assert parsed.x5t_s256 == base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert parsed.x5c == [base64.b64encode(der).decode()]
    assert parsed.version == "v1"


def test_certificate_first_pem_with_extra_certificate_puts_leaf_first(cert_a, cert_b):
    parsed = parse_pem(cert_b.cert_pem + cert_a.cert_pem + cert_a.key_pem, source="file")
    assert parsed.certificate == cert_a.cert
    assert parsed.chain[0] == cert_a.cert and len(parsed.chain) == 2


def test_pem_without_key_is_rejected_with_a_clear_message(cert_a):
    with pytest.raises(CertificateError, match="no private key"):
        parse_pem(cert_a.cert_pem, source="key_vault")


def test_pem_whose_key_matches_no_certificate_is_rejected(cert_a, cert_b):
    with pytest.raises(CertificateError, match="no certificate matching"):
        parse_pem(cert_a.key_pem + cert_b.cert_pem, source="file")


def test_passwordless_and_protected_pfx(cert_a):
    assert parse_pkcs12(cert_a.pfx(), source="key_vault").certificate == cert_a.cert
    assert parse_pkcs12(cert_a.pfx(b"pw"), source="file", password=b"pw").certificate == cert_a.cert
    with pytest.raises(CertificateError, match="password"):
        parse_pkcs12(cert_a.pfx(b"pw"), source="file", password=b"wrong")


def test_repr_and_describe_reveal_no_key_material(cert_a):
    parsed = parse_pem(cert_a.key_pem + cert_a.cert_pem, source="file")
    key_body = cert_a.key_pem.decode().splitlines()[1]
    assert key_body not in repr(parsed)
    described = parsed.describe()
    assert key_body not in str(described)
    assert described["sha1_thumbprint"] == parsed.sha1_thumbprint
    assert 29 < described["days_left"] <= 30


def test_file_source_reads_pem_and_pfx(tmp_path, cert_a):
    pem = tmp_path / "c.pem"
    pem.write_bytes(cert_a.key_pem + cert_a.cert_pem)
    pfx = tmp_path / "c.pfx"
    pfx.write_bytes(cert_a.pfx(b"secret"))
    assert FileCertificateSource(pem).load().certificate == cert_a.cert
    assert FileCertificateSource(pfx, "secret").load().certificate == cert_a.cert
    with pytest.raises(CertificateError, match="cannot be read"):
        FileCertificateSource(tmp_path / "missing.pem").load()


class ScriptedSource:
    kind = "key_vault"

    def __init__(self, *results):
        self.results = list(results)
        self.loads = 0

    def load(self):
        self.loads += 1
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, Exception):
            raise result
        return result


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_provider_reads_once_per_interval_then_picks_up_a_new_version(cert_a, cert_b):
    first = parse_pem(cert_a.key_pem + cert_a.cert_pem, source="key_vault", version="1")
    second = parse_pem(cert_b.key_pem + cert_b.cert_pem, source="key_vault", version="2")
    source, clock = ScriptedSource(first, second), Clock()
    provider = CertificateProvider(source, refresh_seconds=300, clock=clock)
    for _ in range(100):
        assert provider.current().version == "1"
    assert source.loads == 1
    clock.now += 301
    assert provider.current().version == "2"
    assert source.loads == 2


def test_provider_keeps_the_loaded_certificate_when_a_reread_fails(cert_a):
    first = parse_pem(cert_a.key_pem + cert_a.cert_pem, source="key_vault", version="1")
    source = ScriptedSource(first, CertificateError("vault down", source="key_vault", is_transient=True))
    clock = Clock()
    provider = CertificateProvider(source, refresh_seconds=300, retry_seconds=30, clock=clock)
    provider.current()
    clock.now += 400
    assert provider.current().version == "1"
    loads = source.loads
    clock.now += 10
    provider.current()
    assert source.loads == loads  # waits retry_seconds before trying the vault again


def test_provider_raises_when_nothing_was_ever_loaded():
    provider = CertificateProvider(ScriptedSource(CertificateError("missing", source="key_vault")), refresh_seconds=300)
    with pytest.raises(CertificateError, match="missing"):
        provider.current()


def test_forced_refresh_after_rejection_is_rate_limited(cert_a):
    first = parse_pem(cert_a.key_pem + cert_a.cert_pem, source="key_vault", version="1")
    source, clock = ScriptedSource(first), Clock()
    provider = CertificateProvider(source, refresh_seconds=3600, min_forced_interval=10, clock=clock)
    provider.current()
    for _ in range(20):
        provider.refresh_after_rejection()
    assert source.loads == 2  # the first rejection re-reads even right after the initial load
    clock.now += 11
    provider.refresh_after_rejection()
    assert source.loads == 3
