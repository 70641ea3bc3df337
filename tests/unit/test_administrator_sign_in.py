"""AdministratorSignIn with a fake MSAL client: what each MSAL outcome becomes, and that no delegated token stays
in MSAL's cache after the flow."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from msal.oauth2cli.oidc import IdTokenError

from shared.signin.administrators import AdministratorSignIn, SignInError, delegated_scope

TENANT = str(uuid.uuid4())
USER = str(uuid.uuid4())
ORG = "https://contoso.crm.dynamics.com"


class FakeMsal:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.accounts = [{"home_account_id": f"{USER}.{TENANT}"}, {"home_account_id": "someone.else"}]
        self.asked: list[Any] = []

    def initiate_auth_code_flow(self, scopes: list[str], redirect_uri: str | None = None, **kwargs: Any) -> dict:
        self.asked.append((scopes, redirect_uri, kwargs))
        return {"state": "s", "scope": ["openid", *scopes, "offline_access"], "auth_uri": "https://login/x"}

    def acquire_token_by_auth_code_flow(self, flow: dict, response: dict, **kwargs: Any) -> dict:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    def get_accounts(self, username: str | None = None) -> list[dict]:
        return list(self.accounts)

    def remove_account(self, account: dict) -> None:
        self.accounts.remove(account)


def sign_in(fake: FakeMsal) -> AdministratorSignIn:
    return AdministratorSignIn(
        client_id="c",
        authority_host="https://login.microsoftonline.com",
        authority="organizations",
        assertion_source=object(),  # type: ignore[arg-type]
        app_factory=lambda: fake,
        clock=lambda: 1000.0,
    )


def test_begin_asks_for_the_orgs_delegated_scope_and_an_account_picker():
    fake = FakeMsal({})
    flow = sign_in(fake).begin(ORG, "https://app.example/api/consent/callback")
    assert fake.asked == [
        ([f"{ORG}/user_impersonation"], "https://app.example/api/consent/callback", {"prompt": "select_account"})
    ]
    assert flow["state"] == "s" and delegated_scope(ORG + "/") == f"{ORG}/user_impersonation"


def test_a_redeemed_code_gives_the_person_and_their_org_token_and_msal_forgets_them():
    fake = FakeMsal(
        {
            "access_token": "delegated",
            "expires_in": 3599,
            "id_token_claims": {
                "tid": TENANT.upper(),
                "oid": USER,
                "preferred_username": "ada@contoso.example",
                "name": "Ada",
            },
        }
    )
    signin = sign_in(fake)
    admin = signin.finish(signin.begin(ORG, "https://app.example/cb"), {"code": "x", "state": "s"})
    assert (admin.tenant_id, admin.object_id, admin.username) == (TENANT, USER, "ada@contoso.example")
    assert admin.dataverse_token.resource == ORG and admin.dataverse_token.tenant_id == TENANT
    assert admin.dataverse_token.expires_on == 1000.0 + 3599
    assert "delegated" not in repr(admin)
    assert fake.accounts == []  # MSAL's cache keeps nobody's tokens after a flow


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        (ValueError("state mismatch: a vs b"), "sign_in_answer_invalid"),
        (IdTokenError("3. The nonce in id token does not match.", 0, {}), "id_token_invalid"),
        (
            {"error": "invalid_grant", "error_codes": [54005], "error_description": "AADSTS54005: redeemed"},
            "sign_in_refused",
        ),
        ({"error": "invalid_grant"}, "sign_in_refused"),
        ({"access_token": "t", "id_token_claims": {"tid": "not-a-guid", "oid": USER}}, "id_token_invalid"),
    ],
)
def test_each_msal_failure_is_a_sign_in_error_with_a_code_and_leaves_no_token_cached(outcome: Any, code: str):
    fake = FakeMsal(outcome)
    with pytest.raises(SignInError) as info:
        sign_in(fake).finish({"state": "s", "scope": [f"{ORG}/user_impersonation"]}, {"code": "x", "state": "s"})
    assert info.value.code == code
    # MSAL writes the answer to its cache before it checks the ID token: a refused sign-in leaves nothing either.
    assert fake.accounts == []
    if isinstance(outcome, dict) and outcome.get("error_codes"):
        assert "AADSTS54005" in info.value.message


def test_a_failure_to_read_the_authoritys_metadata_is_a_sign_in_error_not_a_crash():
    def unreachable() -> FakeMsal:
        raise ValueError("Unable to get authority configuration")

    signin = AdministratorSignIn(
        client_id="c",
        authority_host="https://login.microsoftonline.com",
        authority="organizations",
        assertion_source=object(),  # type: ignore[arg-type]
        app_factory=unreachable,  # type: ignore[arg-type]
    )
    with pytest.raises(SignInError) as info:
        signin.begin(ORG, "https://app.example/cb")
    assert info.value.code == "entra_unreachable"
