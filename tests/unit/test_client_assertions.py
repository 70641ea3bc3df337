import base64
import inspect

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from shared.auth.certificate_sources import CertificateProvider
from shared.auth.certificates import parse_pem
from shared.auth.client_assertions import CertificateAssertionSource, ManagedIdentityAssertionSource
from shared.errors import CredentialError

CONTEXT = {
    "client_id": "11111111-2222-3333-4444-555555555555",
    "token_endpoint": "https://login.example/tenant-a/oauth2/v2.0/token",
}


class StaticSource:
    kind = "file"

    def __init__(self, certificate):
        self.certificate = certificate

    def load(self):
        return self.certificate


def make_source(cert, **kwargs):
    parsed = parse_pem(cert.key_pem + cert.cert_pem, source="file")
    return CertificateAssertionSource(CertificateProvider(StaticSource(parsed), refresh_seconds=60), **kwargs), parsed


def test_assertion_is_ps256_with_sha256_thumbprint_and_chain(cert_a):
    source, parsed = make_source(cert_a, clock=lambda: 1_700_000_000)
    token = source(CONTEXT)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "PS256"
    assert header["x5t#S256"] == parsed.x5t_s256
    assert "x5t" not in header
    assert header["x5c"] == [base64.b64encode(cert_a.cert.public_bytes(serialization.Encoding.DER)).decode()]
    claims = jwt.decode(
        token,
        cert_a.cert.public_key(),
        algorithms=["PS256"],
        audience=CONTEXT["token_endpoint"],
        options={"verify_exp": False, "verify_nbf": False},
    )
    assert claims["iss"] == claims["sub"] == CONTEXT["client_id"]
    assert claims["exp"] - claims["nbf"] == 600
    assert claims["iat"] == 1_700_000_000


def test_each_assertion_has_a_fresh_jti(cert_a):
    source, _ = make_source(cert_a)
    ids = {jwt.decode(source(CONTEXT), options={"verify_signature": False})["jti"] for _ in range(5)}
    assert len(ids) == 5


def test_chain_can_be_left_out(cert_a):
    source, _ = make_source(cert_a, send_certificate_chain=False)
    assert "x5c" not in jwt.get_unverified_header(source(CONTEXT))


def test_msal_passes_its_context_to_the_source(cert_a):
    # MSAL hands a context dict only to callables with one required positional parameter.
    source, _ = make_source(cert_a)
    params = list(inspect.signature(source).parameters.values())
    assert len(params) == 1 and params[0].default is inspect.Parameter.empty


class FakeManagedIdentity:
    def __init__(self):
        self.scopes = []

    def get_token(self, *scopes, **kwargs):
        self.scopes.append(scopes)

        class T:
            token = "mi-token"

        return T()


def test_managed_identity_assertion_asks_for_the_federation_audience():
    made = []

    def factory(client_id):
        made.append(client_id)
        return FakeManagedIdentity()

    source = ManagedIdentityAssertionSource("mi-client", "api://AzureADTokenExchange", factory)
    assert source(CONTEXT) == "mi-token"
    assert source(CONTEXT) == "mi-token"
    assert made == ["mi-client"]
    source.refresh_after_rejection()
    source(CONTEXT)
    assert made == ["mi-client", "mi-client"]
    assert source.describe()["audience"] == "api://AzureADTokenExchange"


def test_managed_identity_failure_becomes_a_credential_error():
    from azure.core.exceptions import ClientAuthenticationError

    class Broken:
        def get_token(self, *a, **k):
            raise ClientAuthenticationError("no identity")

    source = ManagedIdentityAssertionSource("mi", "api://AzureADTokenExchange", lambda _c: Broken())
    with pytest.raises(CredentialError, match="MANAGED_IDENTITY_CLIENT_ID"):
        source(CONTEXT)
