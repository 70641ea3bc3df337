"""The attack list against user-token validation, with locally made keys and a fake JWKS endpoint."""

from __future__ import annotations

import base64
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.signin.user_tokens import InvalidUserTokenError, JwksCache, UserTokenValidator

HOST = "https://login.example"
CLIENT = "11111111-2222-3333-4444-555555555555"
TID = "aaaaaaaa-0000-0000-0000-000000000001"
OTHER_TID = "bbbbbbbb-0000-0000-0000-000000000002"
OID = "cccccccc-0000-0000-0000-000000000003"
V2 = HOST + "/{tenantid}/v2.0"
V1 = HOST + "/sts/{tenantid}/"


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


class Keys:
    def __init__(self):
        self.private = {}
        self.issuers = {}
        self.fetches = 0

    def add(self, kid, issuer=V2):
        self.private[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.issuers[kid] = issuer

    def jwks(self):
        self.fetches += 1
        keys = []
        for kid, key in self.private.items():
            numbers = key.public_key().public_numbers()
            keys.append(
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": kid,
                    "n": _b64(numbers.n),
                    "e": _b64(numbers.e),
                    "issuer": self.issuers[kid],
                }
            )
        return {"keys": keys}


@pytest.fixture(scope="module")
def keys():
    k = Keys()
    k.add("good")
    k.add("tenant-key", issuer=f"{HOST}/{OTHER_TID}/v2.0")
    return k


def validator(keys, **kwargs):
    return UserTokenValidator(
        jwks=JwksCache(keys.jwks, min_refetch_seconds=kwargs.pop("min_refetch", 60)),
        v2_issuer_template=V2,
        v1_issuer_template=V1,
        audiences=(CLIENT, f"api://{CLIENT}"),
        required_scope="access_as_user",
        **kwargs,
    )


def claims(**overrides):
    now = int(time.time())
    base = {
        "iss": f"{HOST}/{TID}/v2.0",
        "aud": CLIENT,
        "tid": TID,
        "oid": OID,
        "ver": "2.0",
        "scp": "access_as_user",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "name": "Ada",
        "preferred_username": "ada@fabrikam.example",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(keys, payload, kid="good", alg="RS256"):
    return jwt.encode(payload, keys.private[kid], algorithm=alg, headers={"kid": kid})


def bearer(token):
    return f"Bearer {token}"


def test_a_valid_v2_token_is_accepted(keys):
    user = validator(keys).validate(bearer(sign(keys, claims())))
    assert (user.tenant_id, user.object_id, user.name, user.token_version) == (TID, OID, "Ada", "2.0")


def test_a_valid_v1_token_with_the_app_id_uri_is_accepted(keys):
    token = sign(keys, claims(ver="1.0", iss=f"{HOST}/sts/{TID}/", aud=f"api://{CLIENT}"))
    assert validator(keys).validate(bearer(token)).token_version == "1.0"


def reject(keys, token, message, **kwargs):
    with pytest.raises(InvalidUserTokenError, match=message):
        validator(keys, **kwargs).validate(token if token is None or token.startswith("Bearer") else bearer(token))


def test_alg_none_is_rejected(keys):
    reject(keys, jwt.encode(claims(), None, algorithm="none", headers={"kid": "good"}), "algorithm")


def test_hs256_signed_with_the_public_key_is_rejected(keys):
    public_pem = (
        keys.private["good"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    import hashlib
    import hmac
    import json

    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "good", "typ": "JWT"}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    signature = hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest()
    token = (header + b"." + body + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()
    reject(keys, token, "algorithm")


def test_unknown_kid_is_rejected_and_refetches_are_rate_limited(keys):
    v = validator(keys)
    before = keys.fetches
    for _ in range(20):
        with pytest.raises(InvalidUserTokenError, match="unknown key"):
            v.validate(bearer(_with_kid(keys, "made-up")))
    assert keys.fetches - before == 1


def _with_kid(keys, kid):
    return jwt.encode(claims(), keys.private["good"], algorithm="RS256", headers={"kid": kid})


def test_issuer_with_another_tenants_id_is_rejected(keys):
    reject(keys, sign(keys, claims(iss=f"{HOST}/{OTHER_TID}/v2.0")), "issuer")


def test_a_key_published_for_another_tenant_cannot_sign_for_this_one(keys):
    reject(keys, sign(keys, claims(), kid="tenant-key"), "does not belong")


def test_wrong_audience_expired_and_not_yet_valid_are_rejected(keys):
    reject(keys, sign(keys, claims(aud="api://someone-else")), "audience")
    reject(keys, sign(keys, claims(exp=int(time.time()) - 600)), "expired")
    reject(keys, sign(keys, claims(nbf=int(time.time()) + 600)), "not valid yet")


def test_small_clock_skew_is_tolerated(keys):
    assert validator(keys).validate(bearer(sign(keys, claims(nbf=int(time.time()) + 30))))


def test_missing_scope_is_rejected_unless_the_role_is_configured(keys):
    token = sign(keys, claims(scp="User.Read", roles=["Sync.Reader"]))
    reject(keys, token, "scope")
    assert validator(keys, required_role="Sync.Reader").validate(bearer(token)).roles == ("Sync.Reader",)


def test_bad_tid_and_missing_oid_are_rejected(keys):
    reject(keys, sign(keys, claims(tid="contoso.onmicrosoft.com")), "tenant id")
    reject(keys, sign(keys, claims(oid=None)), "object id")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic abc",
        "Bearer",
        "Bearer ",
        "Bearer not.a.jwt",
        "Bearer a.b",
        "Bearer " + "A" * 20000,
        "Bearer \x00\x01",
    ],
)
def test_garbage_and_oversized_headers_are_rejected(keys, header):
    with pytest.raises(InvalidUserTokenError):
        validator(keys).validate(header)


def test_rotation_new_key_is_found_without_restart(keys):
    v = validator(keys, min_refetch=0)
    assert v.validate(bearer(sign(keys, claims())))
    kid = f"rotated-{uuid.uuid4().hex[:6]}"
    keys.add(kid)
    assert v.validate(bearer(sign(keys, claims(), kid=kid))).object_id == OID
