"""The customer administrator's sign-in during onboarding: OpenID Connect authorization code flow with PKCE and a
nonce, run by MSAL's ``initiate_auth_code_flow`` / ``acquire_token_by_auth_code_flow`` on the app's confidential
client (entra/v2-oauth2-auth-code-flow.md; protocol.md §1 "Walkthrough": consent happens through this sign-in).

Who signed in is known only from the ID token MSAL received from Entra's token endpoint in exchange for the code
(trust boundary 1 of the threat model), never from the redirect's parameters. The delegated Dataverse token the
same exchange returns is handed to the caller for this one flow; MSAL's cache forgets the account right after.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.auth import aadsts
from shared.auth.client_assertions import ClientAssertionSource
from shared.auth.token_provider import AccessToken, MsalHttpClient
from shared.errors import S2SError
from shared.settings import is_guid

logger = logging.getLogger(__name__)


class SignInError(S2SError):
    """The sign-in answer could not be turned into a signed-in person; ``message`` is safe to show."""

    code = "sign_in_failed"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


@dataclass(frozen=True)
class SignedInAdministrator:
    """Who signed in (from the ID token) and their delegated token for the org (``repr`` hides the token)."""

    tenant_id: str
    object_id: str
    username: str
    display_name: str
    dataverse_token: AccessToken = field(repr=False)

    @property
    def actor(self) -> str:
        """How the registry's history names this person: object id and UPN."""
        return f"signed-in administrator {self.object_id} ({self.username})"


class AuthCodeClient(Protocol):
    """The slice of msal.ConfidentialClientApplication the sign-in uses (fakes implement it in unit tests)."""

    def initiate_auth_code_flow(
        self, scopes: list[str], redirect_uri: str | None = None, **kwargs: Any
    ) -> dict[str, Any]: ...

    def acquire_token_by_auth_code_flow(
        self, auth_code_flow: dict[str, Any], auth_response: dict[str, Any], **kwargs: Any
    ) -> dict[str, Any]: ...

    def get_accounts(self, username: str | None = None) -> list[dict[str, Any]]: ...

    def remove_account(self, account: dict[str, Any]) -> None: ...


def delegated_scope(org_url: str) -> str:
    """Dynamics CRM's one delegated permission, for this org (protocol.md §1: ``user_impersonation``)."""
    return f"{org_url.rstrip('/')}/user_impersonation"


class AdministratorSignIn:
    """Starts and finishes one administrator's sign-in. ``authority`` is ``organizations`` in multi-tenant mode
    (any work or school tenant may onboard) and the home tenant in single-tenant mode."""

    def __init__(
        self,
        *,
        client_id: str,
        authority_host: str,
        authority: str,
        assertion_source: ClientAssertionSource,
        http_timeout: float = 30.0,
        app_factory: Callable[[], AuthCodeClient] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client_id = client_id
        self._authority = f"{authority_host.rstrip('/')}/{authority}"
        self._assertion_source = assertion_source
        self._http_timeout = http_timeout
        self._app_factory = app_factory or self._build_msal_app
        self._app: AuthCodeClient | None = None
        self._lock = threading.Lock()
        self._clock = clock

    def begin(self, org_url: str, redirect_uri: str) -> dict[str, Any]:
        """MSAL's auth code flow for the org's delegated scope: ``auth_uri`` to send the browser to, and the
        ``state``, ``nonce`` and PKCE ``code_verifier`` that must stay server-side until the answer comes back.
        Builds no network request of its own once MSAL has read the authority's metadata (once per worker)."""
        import warnings

        import requests

        try:
            app = self._client()
        except (requests.RequestException, ValueError) as exc:
            # MSAL reads the authority's OpenID metadata when the client is built (once per worker).
            raise SignInError(
                "Microsoft sign-in is unavailable right now; try again in a moment.", code="entra_unreachable"
            ) from exc
        with warnings.catch_warnings():
            # MSAL recommends response_mode=form_post (RFC 9700 §4.3.1, keeping the code out of the URL). The
            # answer comes back as a query instead so that the SameSite=Lax cookie binding the flow to this browser
            # is sent with it (a cross-site form post would not carry it); the code is single use, bound to this
            # flow's PKCE verifier, and the callback page sends no Referer.
            warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended")
            flow: dict[str, Any] = app.initiate_auth_code_flow(
                [delegated_scope(org_url)], redirect_uri=redirect_uri, prompt="select_account"
            )
        return flow

    def finish(self, flow: dict[str, Any], auth_response: Mapping[str, str]) -> SignedInAdministrator:
        """Redeem the code in ``auth_response`` for the flow (MSAL checks the state, sends the PKCE verifier,
        checks the ID token's nonce, audience and lifetime). Raises SignInError."""
        app = self._client()
        try:
            result = app.acquire_token_by_auth_code_flow(dict(flow), dict(auth_response))
        except ValueError as exc:  # MSAL: the answer's state differs from the flow's, or it carries no code
            raise SignInError(
                "The sign-in answer is incomplete or does not belong to this sign-in.", code="sign_in_answer_invalid"
            ) from exc
        except RuntimeError as exc:  # MSAL's IdTokenError: nonce, audience, issuer or time checks failed
            logger.warning("Sign-in refused: the ID token failed MSAL's checks (%s)", type(exc).__name__)
            raise SignInError("The sign-in could not be verified.", code="id_token_invalid") from exc
        except Exception as exc:
            import requests

            if isinstance(exc, requests.RequestException):
                raise SignInError(
                    "Entra ID could not be reached to finish the sign-in.", code="entra_unreachable"
                ) from exc
            raise
        finally:
            # MSAL caches what the token endpoint answered before it checks the ID token, so even a refused sign-in
            # may have left a refresh token behind: the cache keeps nothing of anyone after any flow.
            self._forget_everyone(app)
        claims = result.get("id_token_claims") or {}
        if "access_token" not in result:
            raise _refused(result)
        tenant_id = str(claims.get("tid", "")).lower()
        object_id = str(claims.get("oid", "")).lower()
        if not is_guid(tenant_id) or not is_guid(object_id):
            raise SignInError("The ID token names no tenant or user.", code="id_token_invalid")
        scopes = [str(s) for s in flow.get("scope") or [] if str(s).endswith("/user_impersonation")]
        resource = scopes[0].removesuffix("/user_impersonation") if scopes else ""
        token = AccessToken(
            result["access_token"],
            self._clock() + float(result.get("expires_in", 0)),
            tenant_id,
            resource,
            "identity_provider",
        )
        return SignedInAdministrator(
            tenant_id=tenant_id,
            object_id=object_id,
            username=str(claims.get("preferred_username") or claims.get("upn") or "")[:256],
            display_name=str(claims.get("name") or "")[:256],
            dataverse_token=token,
        )

    def _forget_everyone(self, app: AuthCodeClient) -> None:
        """Drop every account (refresh and access tokens) from MSAL's cache: nothing delegated outlives a flow.
        This client serves administrators' sign-ins only, so there is nothing in it worth keeping."""
        with self._lock:
            for account in app.get_accounts():
                app.remove_account(account)

    def _client(self) -> AuthCodeClient:
        with self._lock:
            if self._app is None:
                self._app = self._app_factory()
            return self._app

    def _build_msal_app(self) -> AuthCodeClient:
        import msal

        app: AuthCodeClient = msal.ConfidentialClientApplication(
            self._client_id,
            client_credential={"client_assertion": self._assertion_source},
            authority=self._authority,
            instance_discovery=False,  # the authority host is a known cloud (settings), as for app-only tokens
            http_client=MsalHttpClient(self._http_timeout),
        )
        return app


def _refused(result: Mapping[str, Any]) -> SignInError:
    codes = result.get("error_codes") or []
    code = int(codes[0]) if codes else None
    if code is not None:
        info = aadsts.describe(code, result.get("error"))
        logger.warning("Sign-in code redemption refused: AADSTS%s (%s)", code, info.category)
        return SignInError(
            f"Entra ID refused the sign-in (AADSTS{code}). {info.meaning}".strip(), code="sign_in_refused"
        )
    logger.warning("Sign-in code redemption refused: %s", str(result.get("error"))[:64])
    return SignInError("Entra ID refused the sign-in.", code="sign_in_refused")
