"""Entra ID stand-in: OIDC discovery (v1 and v2), JWKS, the client-credentials token endpoint, and the
admin-consent page (sandbox.entra.consent). Injected faults (sandbox.faults) are answered before any of it.

Checks run in the order the project relies on (protocol §1-2): tenant, scope, app, service principal,
consent, app enabled, credential form, then the assertion itself.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Any

from sandbox.entra import errors as entra_errors
from sandbox.entra.authorize import OIDC_SCOPES, AuthorizationCodes, AuthorizeEndpoint
from sandbox.entra.client_assertion import JWT_BEARER, ClientAssertionValidator
from sandbox.entra.consent import AdminConsentEndpoint
from sandbox.entra.directory import Application, ServicePrincipal, Tenant
from sandbox.entra.errors import EntraError
from sandbox.entra.issuers import TENANT_TEMPLATE, v1_issuer, v2_issuer
from sandbox.entra.tokens import TokenMinter
from sandbox.faults import entra_error
from sandbox.net.httpd import HttpRequest, HttpResponse, json_response
from sandbox.net.pki import base64url

if TYPE_CHECKING:
    from sandbox.state import SandboxState

logger = logging.getLogger(__name__)

# Authority aliases that name no tenant; metadata for them carries the `{tenantid}` template (protocol §6).
_MULTI_TENANT_ALIASES = frozenset({"common", "organizations"})
_SHARED_CLAIMS = [
    "sub",
    "iss",
    "cloud_instance_name",
    "cloud_instance_host_name",
    "cloud_graph_host_name",
    "msgraph_host",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "acr",
    "nonce",
]
_V2_CLAIMS = (*_SHARED_CLAIMS, "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email")
_V1_CLAIMS = (*_SHARED_CLAIMS, "amr", "email", "given_name", "family_name", "nickname")
_NO_STORE = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}


class EntraService:
    """Serves one authority host; call it with a request."""

    def __init__(self, state: SandboxState, authority_host: str) -> None:
        self._state = state
        self._host = authority_host.rstrip("/")
        self._minter = TokenMinter(state.signing_keys, self._host)
        self._assertions = ClientAssertionValidator(state.signing_keys)
        self._admin_consent = AdminConsentEndpoint(state)
        self._codes = AuthorizationCodes()
        self._authorize = AuthorizeEndpoint(state, self._codes)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        trace_id = str(uuid.uuid4())
        correlation_id = request.headers.get("client-request-id")
        faulted = self._injected_fault(request, trace_id, correlation_id)
        if faulted is not None:
            return faulted
        try:
            return self._route(request, trace_id)
        except EntraError as err:
            logger.debug("entra %s %s -> AADSTS%s", request.method, request.path, err.code)
            headers = {**_NO_STORE, "x-ms-request-id": trace_id}
            if correlation_id:
                headers["client-request-id"] = correlation_id
            return json_response(err.status, err.body(self._host, trace_id, correlation_id), headers)

    def _injected_fault(self, request: HttpRequest, trace_id: str, correlation_id: str | None) -> HttpResponse | None:
        """An armed fault for this request (sandbox.faults): sleep, then answer its error, or None to go on."""
        if not self._state.faults.has("entra"):
            return None
        segments = request.segments
        endpoint = None
        if request.method == "POST" and segments[1:] in (["oauth2", "v2.0", "token"], ["oauth2", "token"]):
            endpoint = "token"
        elif request.method == "GET" and (
            segments[-2:] == [".well-known", "openid-configuration"] or segments[1:2] == ["discovery"]
        ):
            endpoint = "discovery"
        segment = segments[0] if segments else ""
        known = self._state.find_tenant(segment) if segment else None
        tenant_label = known.tenant_id if known else segment.lower()
        fault = self._state.faults.take("entra", tenant=tenant_label, endpoint=endpoint)
        if fault is None:
            return None
        self._state.counters.bump(
            "fault_injected",
            service="entra",
            endpoint=endpoint or "other",
            tenant=tenant_label,
            status=fault.status or "delay",
        )
        if fault.delay:
            time.sleep(fault.delay)
        if fault.status is None:
            return None  # a slow service: now answer normally
        error, code, message = entra_error(fault.status)
        if endpoint == "token":
            client_id = request.form().get("client_id") or None
            self._state.counters.bump("token", tenant=tenant_label, client_id=client_id)
            self._state.counters.bump("token_error", tenant=tenant_label, code=code)
        headers = {**_NO_STORE, "x-ms-request-id": trace_id}
        if correlation_id:
            headers["client-request-id"] = correlation_id
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        body = EntraError(fault.status, error, code, message).body(self._host, trace_id, correlation_id)
        logger.debug("entra %s %s -> injected %s AADSTS%s", request.method, request.path, fault.status, code)
        return json_response(fault.status, body, headers)

    def _route(self, request: HttpRequest, trace_id: str) -> HttpResponse:
        match (request.method, request.segments):
            case ("GET", [tenant, "v2.0", ".well-known", "openid-configuration"]):
                return json_response(200, self._openid_configuration(tenant, v2=True))
            case ("GET", [tenant, ".well-known", "openid-configuration"]):
                return json_response(200, self._openid_configuration(tenant, v2=False))
            case ("GET", [tenant, "discovery", "v2.0", "keys"] | [tenant, "discovery", "keys"]):
                return json_response(200, self._jwks(tenant))
            case ("POST", [tenant, "oauth2", "v2.0", "token"]):
                return self._token(request, tenant, v2=True, trace_id=trace_id)
            case ("POST", [tenant, "oauth2", "token"]):
                return self._token(request, tenant, v2=False, trace_id=trace_id)
            case ("GET" | "POST", [tenant, "oauth2", "v2.0", "authorize"]):
                return self._authorize(request, tenant)
            case ("GET" | "POST", [tenant, "v2.0", "adminconsent"]):
                return self._admin_consent(request, tenant, v2=True)
            case ("GET" | "POST", [tenant, "adminconsent"]):
                return self._admin_consent(request, tenant, v2=False)
        return json_response(404, {"error": "not_found", "error_description": f"No route for {request.path}"})

    # -- discovery ------------------------------------------------------------------------------

    def _resolve(self, segment: str) -> Tenant | None:
        """The tenant an authority path names; None for a multi-tenant alias. Raises AADSTS90002."""
        if segment.lower() in _MULTI_TENANT_ALIASES:
            return None
        tenant = self._state.find_tenant(segment)
        if tenant is None:
            raise entra_errors.tenant_not_found(segment)
        return tenant

    def _openid_configuration(self, segment: str, *, v2: bool) -> dict[str, Any]:
        tenant = self._resolve(segment)
        self._state.counters.bump(
            "openid_configuration",
            tenant=tenant.tenant_id if tenant else segment.lower(),
            version="2.0" if v2 else "1.0",
        )
        # For a real tenant every URL carries its GUID, even when it was addressed by domain.
        path = tenant.tenant_id if tenant else segment.lower()
        issuer_tenant = tenant.tenant_id if tenant else TENANT_TEMPLATE
        base = f"{self._host}/{path}"
        common: dict[str, Any] = {
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "request_uri_parameter_supported": False,
            "tenant_region_scope": "NA" if tenant else None,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }
        if v2:
            return {
                **common,
                "issuer": v2_issuer(self._host, issuer_tenant),
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                # Entra points userinfo at Graph; the sandbox keeps every URL on its own host.
                "userinfo_endpoint": f"{self._host}/oidc/userinfo",
                "kerberos_endpoint": f"{base}/kerberos",
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "claims_supported": list(_V2_CLAIMS),
            }
        return {
            **common,
            "issuer": v1_issuer(self._host, issuer_tenant),
            "authorization_endpoint": f"{base}/oauth2/authorize",
            "token_endpoint": f"{base}/oauth2/token",
            "end_session_endpoint": f"{base}/oauth2/logout",
            "jwks_uri": f"{self._host}/common/discovery/keys",
            "userinfo_endpoint": f"{base}/openid/userinfo",
            "kerberos_endpoint": f"{base}/kerberos",
            "scopes_supported": ["openid"],
            "claims_supported": list(_V1_CLAIMS),
        }

    def _jwks(self, segment: str) -> dict[str, Any]:
        tenant = self._resolve(segment)
        self._state.counters.bump("jwks", tenant=tenant.tenant_id if tenant else segment.lower())
        # Shared keys from a tenant's endpoint name that tenant; from common they carry the template. A tenant's
        # own key always carries its GUID issuer and is published at common and at that tenant only.
        keys = []
        for key in self._state.signing_keys.published():
            if key.tenant_id is None:
                keys.append(key.jwk(v2_issuer(self._host, tenant.tenant_id if tenant else TENANT_TEMPLATE)))
            elif tenant is None or tenant.tenant_id == key.tenant_id:
                keys.append(key.jwk(v2_issuer(self._host, key.tenant_id)))
        return {"keys": keys}

    # -- token endpoint -------------------------------------------------------------------------

    def _token(self, request: HttpRequest, segment: str, *, v2: bool, trace_id: str) -> HttpResponse:
        form = request.form()
        known = self._state.find_tenant(segment)
        tenant_label = known.tenant_id if known else segment.lower()
        client_id = form.get("client_id", "")
        self._state.counters.bump("token", tenant=tenant_label, client_id=client_id or None)
        try:
            if v2 and form.get("grant_type") == "authorization_code":
                response = self._authorization_code(form, segment)
            else:
                response = self._client_credentials(form, segment, v2=v2)
        except EntraError as err:
            self._state.counters.bump("token_error", tenant=tenant_label, code=err.code)
            raise
        headers = {**_NO_STORE, "x-ms-request-id": trace_id}
        if correlation_id := request.headers.get("client-request-id"):
            headers["client-request-id"] = correlation_id
        return json_response(200, response, headers)

    def _client_credentials(self, form: dict[str, str], segment: str, *, v2: bool) -> dict[str, Any]:
        grant_type = form.get("grant_type", "")
        if not grant_type:
            raise entra_errors.missing_parameter("grant_type")
        if grant_type != "client_credentials":
            raise entra_errors.unsupported_grant_type(grant_type)
        client_id = form.get("client_id", "").strip()
        if not client_id:
            raise entra_errors.missing_parameter("client_id")
        tenant = self._resolve(segment)
        if tenant is None:
            raise entra_errors.no_tenant_in_request()
        resource = self._resource(form, v2=v2)

        app, principal = self._authenticate_client(form, segment, tenant, resource)
        issued = self._minter.app_token(
            tenant_id=tenant.tenant_id, client_id=app.client_id, object_id=principal.object_id, resource=resource
        )
        self._state.counters.bump("token_issued", tenant=tenant.tenant_id, client_id=app.client_id, resource=resource)
        logger.debug("issued app token for %s in tenant %s", app.client_id, tenant.tenant_id)
        if v2:
            return {
                "token_type": "Bearer",
                "expires_in": issued.expires_in,
                "ext_expires_in": issued.expires_in,
                "access_token": issued.access_token,
            }
        # The v1 endpoint answers with strings and adds expires_on/not_before/resource.
        return {
            "token_type": "Bearer",
            "expires_in": str(issued.expires_in),
            "ext_expires_in": str(issued.expires_in),
            "expires_on": str(issued.expires_on),
            "not_before": str(issued.not_before),
            "resource": resource,
            "access_token": issued.access_token,
        }

    def _authenticate_client(
        self, form: dict[str, str], segment: str, tenant: Tenant, replay_scope: str
    ) -> tuple[Application, ServicePrincipal]:
        """The app, its consented service principal in `tenant`, and its client assertion, in Entra's order. A
        certificate assertion's jti may buy one answer per `replay_scope` (the resource, for client credentials)."""
        client_id = form.get("client_id", "").strip()
        app = self._state.find_application(client_id)
        if app is None:
            raise entra_errors.application_not_found(client_id, tenant.display_name)
        principal = self._state.find_service_principal(tenant.tenant_id, app.client_id)
        if principal is None:
            raise entra_errors.application_not_found(client_id, tenant.display_name)
        if not principal.consented:
            raise entra_errors.consent_required(app.client_id, app.display_name)
        if not app.enabled:
            raise entra_errors.application_disabled(app.client_id, app.display_name)

        if form.get("client_secret"):
            raise entra_errors.client_secret_not_accepted(app.client_id)
        assertion = form.get("client_assertion", "")
        if not assertion:
            raise entra_errors.credential_missing()
        assertion_type = form.get("client_assertion_type", "")
        if assertion_type != JWT_BEARER:
            raise entra_errors.wrong_assertion_type(assertion_type)
        endpoints = [
            f"{self._host}/{name}/oauth2/{path}"
            for name in {segment, tenant.tenant_id}
            for path in ("v2.0/token", "token")
        ]
        validated = self._assertions.validate(assertion, app, endpoints)
        self._state.counters.bump(
            "client_assertion",
            client_id=app.client_id,
            kind=validated.kind,
            alg=validated.algorithm,
            thumbprint=validated.thumbprint_header,
        )
        if (
            validated.kind == "certificate"
            and validated.jti
            and not self._state.redeem_assertion(validated.jti, tenant.tenant_id, replay_scope, validated.expires)
        ):
            raise entra_errors.assertion_replayed(validated.jti)

        return app, principal

    def _authorization_code(self, form: dict[str, str], segment: str) -> dict[str, Any]:
        """Redeem a code from the sign-in page (entra/v2-oauth2-auth-code-flow.md, "Redeem a code for an access
        token"): the client proves itself as for client credentials, the code must be this client's, for this
        redirect URI, with the PKCE verifier of its challenge; the answer carries a delegated access token for the
        one resource asked for, a v2 ID token with the request's nonce, and client_info.
        """
        client_id = form.get("client_id", "").strip()
        if not client_id:
            raise entra_errors.missing_parameter("client_id")
        code = form.get("code", "")
        if not code:
            raise entra_errors.missing_parameter("code")
        issued = self._codes.redeem(
            code, client_id=client_id, redirect_uri=form.get("redirect_uri", ""), verifier=form.get("code_verifier")
        )
        user = issued.user
        tenant = self._state.find_tenant(user.tenant_id)
        if tenant is None:
            raise entra_errors.tenant_not_found(user.tenant_id)
        asked = form.get("scope", "") or " ".join(issued.request.scopes)
        resources = [s for s in asked.split() if s not in OIDC_SCOPES]
        if len(resources) > 1:
            raise entra_errors.multiple_resources(asked)
        resource, _, scope = resources[0].rpartition("/") if resources else ("", "", "")
        if resources and (not resource.startswith("https://") or not scope):
            raise entra_errors.invalid_scope(resources[0])
        # MSAL may reuse one assertion for minutes (protocol §2): each code is its own replay scope.
        app, _ = self._authenticate_client(form, segment, tenant, f"authorization_code {code}")
        audience = resource or app.client_id
        access, id_token = self._state.directory.issue_sign_in_tokens(
            user, client_id=app.client_id, resource=audience, scope=scope or "openid", nonce=issued.request.nonce
        )
        self._state.counters.bump("code_redeemed", tenant=tenant.tenant_id, client_id=app.client_id)
        client_info = {"uid": user.object_id, "utid": user.tenant_id}
        return {
            "token_type": "Bearer",
            "scope": " ".join(resources) or "openid",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": access,
            "refresh_token": base64url(secrets.token_bytes(64)),  # never redeemable in the sandbox
            "id_token": id_token,
            "client_info": base64url(json.dumps(client_info).encode()),
        }

    @staticmethod
    def _resource(form: dict[str, str], *, v2: bool) -> str:
        """The resource a client-credentials request names: v1 `resource`, or v2 `{resource}/.default`.

        Only the final `/.default` is removed, so `https://x//.default` names `https://x/` (protocol §2).
        """
        if not v2:
            resource = form.get("resource", "")
            if not resource:
                raise entra_errors.missing_parameter("resource")
            return resource
        scope = form.get("scope", "").strip()
        if not scope:
            raise entra_errors.missing_parameter("scope")
        if " " in scope or not scope.endswith("/.default") or scope == "/.default":
            raise entra_errors.invalid_scope(scope)
        return scope[: -len("/.default")]
