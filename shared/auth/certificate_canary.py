"""The canary: one client-credentials token request for the app's home tenant, signed with a certificate version
that is not in use yet, to prove Entra ID accepts it before any customer's token depends on it.

Why the home tenant: registering an app in the Microsoft Entra admin center creates its service principal in the
tenant it is registered in (entra: app-objects-and-service-principals — "If you register an application in the
portal, an application object and a service principal object are automatically created in your home tenant"),
and the client-credentials flow works in any tenant where the app has a service principal
(entra: v2-oauth2-client-creds-grant-flow). A customer tenant may offboard at any time; the home tenant stays.
Registering through Microsoft Graph or ``az ad app create`` creates no service principal: then the canary gets
AADSTS7000229, reports it, and ``az ad sp create --id <client id>`` fixes it.

Why the app's own id as the resource (``{client id}/.default``): the service principal that must exist for the
request is the app's own, so the check needs no other resource to be present in the home tenant, no permission
(the token carries no roles and is thrown away) and no per-cloud resource URL. ⚠ Whether Entra ID issues that
token for every app configuration can only be confirmed against the real service; any answer that is not an
acceptance or a refusal of the credential leaves the new version waiting and is reported, never used blindly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from shared.auth import aadsts
from shared.auth.certificate_rotation import CanaryOutcome, CanaryVerdict
from shared.auth.certificates import ClientCertificate
from shared.auth.client_assertions import sign_client_assertion
from shared.auth.token_provider import ConfidentialClient, MsalHttpClient

Assertion = Callable[[Mapping[str, str]], str]


# Answers that come back as ``invalid_client`` (which usually means a refused credential) but say the home tenant
# or the app is not set up, not that the certificate is unknown: the version stays waiting with this fix.
_SETUP_PROBLEMS = {
    7000229: "The app has no service principal in ENTRA_HOME_TENANT_ID (registered through Microsoft Graph or the "
    "CLI?): az ad sp create --id {client_id}",
    700016: "The app is not known in ENTRA_HOME_TENANT_ID: check that setting names the tenant the app is "
    "registered in.",
    90002: "ENTRA_HOME_TENANT_ID names no tenant in this cloud: check the setting and AZURE_CLOUD.",
    7000112: "The app is disabled in its home tenant: enable it (and its service principal) in Entra ID.",
}


class HomeTenantCanary:
    """Proves a certificate with one token request for the home tenant, through a throwaway MSAL app: nothing is
    cached, so the request always reaches Entra ID and no token of it is ever handed out."""

    def __init__(
        self,
        *,
        client_id: str,
        authority_host: str,
        home_tenant_id: str,
        http_timeout: float = 30.0,
        send_certificate_chain: bool = True,
        app_factory: Callable[[Assertion], ConfidentialClient] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self.home_tenant_id = home_tenant_id
        self._authority = f"{authority_host.rstrip('/')}/{home_tenant_id}"
        self._scope = f"{client_id}/.default"
        self._http_timeout = http_timeout
        self._send_chain = send_certificate_chain
        self._app_factory = app_factory or self._build_msal_app
        self._clock = clock
        self._http_client: MsalHttpClient | None = None

    def __call__(self, certificate: ClientCertificate) -> CanaryVerdict:
        def assertion(context: Mapping[str, str]) -> str:
            return sign_client_assertion(
                certificate, context, send_certificate_chain=self._send_chain, now=int(self._clock())
            )

        import requests
        from msal.exceptions import MsalServiceError

        if self._http_client is not None:
            self._http_client.take_server_error()  # forget a 5xx seen earlier on this thread
        try:
            result = self._app_factory(assertion).acquire_token_for_client([self._scope])
        except requests.RequestException as exc:
            return self._condition(aadsts.ENTRA_UNREACHABLE, f"{type(exc).__name__} on the way to Entra ID")
        except MsalServiceError as exc:
            # A 5xx: MSAL drops the body, the HTTP port kept it (token_provider.MsalHttpClient).
            seen = self._http_client.take_server_error() if self._http_client is not None else None
            body = _json_object(seen.body) if seen is not None else None
            if body is not None and body.get("error"):
                verdict = self._verdict(body)
                return replace(verdict, outcome=CanaryOutcome.UNPROVEN)  # a server error proves nothing
            return self._condition(aadsts.ENTRA_UNAVAILABLE, str(exc)[:200])
        except ValueError:
            # MSAL's constructor raises ValueError when the tenant's OpenID configuration answers 400.
            return self._setup_problem(90002, "the home tenant's OpenID configuration could not be read")
        return self._verdict(result)

    def _verdict(self, result: Mapping[str, Any]) -> CanaryVerdict:
        if "access_token" in result:
            return CanaryVerdict(CanaryOutcome.ACCEPTED)
        code = aadsts.code_of(result)
        description = str(result.get("error_description") or "")
        error = result.get("error")
        detail = (description.splitlines()[0] if description else str(error))[:300]
        if code in _SETUP_PROBLEMS:
            return self._setup_problem(code, detail, result.get("correlation_id"))
        info = aadsts.describe(code, error)
        outcome = (
            CanaryOutcome.NOT_REGISTERED
            if info.credential_rejected and not info.is_transient
            else CanaryOutcome.UNPROVEN
        )
        return CanaryVerdict(
            outcome,
            code=f"AADSTS{code}" if code is not None else str(error),
            detail=detail,
            fix=info.fix,
            correlation_id=result.get("correlation_id"),
        )

    def _setup_problem(self, code: int, detail: str, correlation_id: str | None = None) -> CanaryVerdict:
        fix = _SETUP_PROBLEMS[code].format(client_id=self.client_id)
        return CanaryVerdict(
            CanaryOutcome.UNPROVEN, code=f"AADSTS{code}", detail=detail, fix=fix, correlation_id=correlation_id
        )

    @staticmethod
    def _condition(condition: str, detail: str) -> CanaryVerdict:
        info = aadsts.CONDITIONS[condition]
        return CanaryVerdict(CanaryOutcome.UNPROVEN, code=condition, detail=detail, fix=info.fix)

    def _build_msal_app(self, assertion: Assertion) -> ConfidentialClient:
        import msal

        if self._http_client is None:
            self._http_client = MsalHttpClient(self._http_timeout)
        app: ConfidentialClient = msal.ConfidentialClientApplication(
            self.client_id,
            client_credential={"client_assertion": assertion},
            authority=self._authority,
            instance_discovery=False,  # a known authority host from settings (see token_provider)
            http_client=self._http_client,
            token_cache=msal.TokenCache(),  # its own, empty: the request must reach Entra ID
        )
        return app


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
