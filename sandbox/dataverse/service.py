"""Dataverse Web API stand-in, HTTP side: picks the org by Host header, authenticates the bearer token,
finds the application user, resolves impersonation, applies service protection, then runs the operation.

Checks run in the order Dataverse reports them (protocol §1, §4): token (401 + bearer challenge naming the
org's tenant), application user (403 0x80072560), disabled user (403 0x80040225), impersonation privilege,
service protection (429 + Retry-After).

Writes go to the org's webhooks (sandbox.dataverse.webhooks.hub) through a journal per request: synchronous steps
run before the answer, asynchronous ones are queued once the answer is on the wire.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import jwt

from sandbox.dataverse import errors
from sandbox.dataverse.api import WebApi
from sandbox.dataverse.errors import DataverseError
from sandbox.dataverse.odata.batch import BatchFormatError, operation_count, parse_batch
from sandbox.dataverse.org import OrgStore, SystemUser
from sandbox.dataverse.provisioning.router import Provisioning
from sandbox.dataverse.throttle import DEFAULT_DOP_HINT
from sandbox.dataverse.webhooks.context import ContextUser
from sandbox.dataverse.wire import ApiRequest, ApiResponse, Caller, error_response, json_body
from sandbox.entra.tokens import TokenMinter
from sandbox.identifiers import is_guid
from sandbox.net.httpd import HttpRequest, HttpResponse

if TYPE_CHECKING:
    from sandbox.state import SandboxState

logger = logging.getLogger(__name__)

API_PREFIX = "/api/data/"
_API_VERSIONS = ("v9.0", "v9.1", "v9.2")
_CLOCK_SKEW_SECONDS = 300


def _disabled(user: SystemUser, store: OrgStore) -> DataverseError:
    # protocol §4: the message is documented (plug-in troubleshooting); the Web API status for a disabled
    # user is not (open item 1). The one wire observation found is a Web API call answered 'BadRequest' with
    # this message (microsoft/PowerPlatform-DataverseServiceClient#71), so 400. The code is the documented
    # 0x80040225 "The specified user is either disabled or is not a member of any business unit." The client
    # keys on code and message, not on the status.
    return DataverseError(
        400,
        errors.USER_DISABLED,
        f"The user with SystemUserId={user.systemuserid} in OrganizationContext={store.org.org_id} is disabled. "
        "Disabled users cannot access the system. Consider enabling this user. Also, users are disabled if "
        "they don't have a license assigned to them.",
    )


class DataverseService:
    """Serves every org in the state, each at its own host name (reached through the CONNECT proxy)."""

    def __init__(self, state: SandboxState, authority_host: str) -> None:
        self._state = state
        self._authority_host = authority_host.rstrip("/")
        self._minter = TokenMinter(state.signing_keys, self._authority_host)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = str(uuid.uuid4())
        headers = {"OData-Version": "4.0", "REQ_ID": request_id, "x-ms-service-request-id": request_id}
        if client_request_id := request.headers.get("x-ms-client-request-id"):
            headers["x-ms-client-request-id"] = client_request_id
        host = request.headers.get("host", "").split(":")[0].lower()
        store = self._state.find_org_store(host)
        if store is None:
            # Reached only by a client that bypasses the proxy (which answers 404 for such a host); not the
            # row-not-found code, so no client takes it for a missing row.
            payload = {"error": {"code": "", "message": f"No such organisation: no Dataverse org at {host!r}."}}
            return self._reply(json_body(404, payload), headers)
        limits = store.protection.limits
        headers["x-ms-dop-hint"] = str(limits.dop_hint or DEFAULT_DOP_HINT)
        injected = self._injected_fault(request, store)
        if injected is not None:
            return self._reply(error_response(injected), headers)
        after_sent: list[Callable[[], None]] = []
        try:
            response = self._handle(request, store, headers, after_sent)
        except DataverseError as err:
            response = error_response(err) if err.status != 401 else ApiResponse(401, err.headers)
        except Exception:
            for hook in after_sent:  # committed changes still get their webhooks (and wait_for_webhooks ends)
                hook()
            raise
        self._state.counters.bump("dataverse_request", org=store.org.url, status=response.status, method=request.method)
        logger.debug("dataverse %s %s %s -> %s", store.org.host, request.method, request.path, response.status)
        return self._reply(response, headers, after_sent[0] if after_sent else None)

    def _injected_fault(self, request: HttpRequest, store: OrgStore) -> DataverseError | None:
        """An armed Dataverse fault for this request (sandbox.faults): sleep, then its error; None to go on. It
        answers before anything is done, as a front end refusing the request would."""
        if not self._state.faults.has("dataverse"):
            return None
        resource = unquote(request.path).removeprefix(API_PREFIX).partition("/")[2]
        fault = self._state.faults.take("dataverse", org=store.org.host, endpoint=f"{request.method} {resource}")
        if fault is None:
            return None
        self._state.counters.bump("fault_injected", service="dataverse", status=fault.status or "delay")
        if fault.delay:
            time.sleep(fault.delay)
        if fault.status is None:
            return None  # a slow org: now answer normally
        extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
        # The Web API's error shape (protocol §4); 0x80040216 is Dataverse's "An unexpected error occurred."
        return DataverseError(
            fault.status, errors.UNEXPECTED, f"Injected fault: the service answered {fault.status}.", extra
        )

    @staticmethod
    def _reply(
        response: ApiResponse, headers: dict[str, str], after_sent: Callable[[], None] | None = None
    ) -> HttpResponse:
        return HttpResponse(response.status, response.body, {**headers, **response.headers}, after_sent)

    def _handle(
        self, request: HttpRequest, store: OrgStore, headers: dict[str, str], after_sent: list[Callable[[], None]]
    ) -> ApiResponse:
        caller = self._impersonate(request, store, self._authenticate(request, store))
        path = unquote(request.path)
        version, _, resource = path.removeprefix(API_PREFIX).partition("/")
        if not path.startswith(API_PREFIX) or version not in _API_VERSIONS:
            raise DataverseError(404, errors.BAD_QUERY, f"Resource not found for the segment '{path}'.")
        user = caller.app_user.systemuserid
        # The app user is what service protection counts (protocol §4: "the app user counts as one"), also
        # while it impersonates someone. A $batch counts each of its operations towards the window.
        admission = store.protection.admit(user, self._weight(request, resource))
        if admission.in_retry_after_window:
            self._state.counters.bump("dataverse_request_in_retry_after", org=store.org.url)
        if admission.refusal is not None:
            refusal = admission.refusal
            self._state.counters.bump("dataverse_throttled", org=store.org.url, code=refusal.code)
            raise DataverseError(429, refusal.code, refusal.message, {"Retry-After": str(refusal.retry_after)})
        started = time.monotonic()
        try:
            latency = store.protection.limits.latency_seconds
            if latency > 0:
                time.sleep(latency)  # no lock is held here, so concurrent requests overlap for real
            headers["x-ms-ratelimit-burst-remaining-xrm-requests"] = str(store.protection.remaining_requests(user))
            service_root = f"{store.org.url}/api/data/{version}"

            def count_operation(method: str) -> None:
                self._state.counters.bump("dataverse_operation", org=store.org.url, method=method)

            user_context = ContextUser(caller.user.systemuserid, caller.user.object_id)
            journal = self._state.webhooks.journal(store, user_context, str(uuid.uuid4()), headers["REQ_ID"])
            provisioning = Provisioning(store, service_root, caller, self._state.webhooks, self._application)
            api = WebApi(store, service_root, caller, count_operation, journal, provisioning=provisioning)
            query = dict(request.query)
            try:
                return api.execute(ApiRequest(request.method, resource, query, request.headers, request.body))
            finally:
                # Only committed changes are left in the journal, also when the request failed afterwards.
                after_sent.append(journal.hand_over())
        finally:
            store.protection.release(user, time.monotonic() - started)

    def _application(self, tenant_id: str, client_id: str) -> tuple[str, str | None] | None:
        """The app's display name and service principal object id in the tenant; None without a principal."""
        directory = self._state.directory
        principal = directory.find_service_principal(tenant_id, client_id)
        if principal is None:
            return None
        app = directory.find_application(client_id)
        return (app.display_name if app else client_id), principal.object_id

    @staticmethod
    def _weight(request: HttpRequest, resource: str) -> int:
        if resource != "$batch" or request.method != "POST":
            return 1
        try:
            return max(1, operation_count(parse_batch(request.body, request.headers.get("content-type", ""))))
        except BatchFormatError:
            return 1

    # -- authentication -------------------------------------------------------------------------

    def _challenge(self, store: OrgStore, reason: str) -> DataverseError:
        logger.debug("dataverse %s: 401 (%s)", store.org.host, reason)
        challenge = (
            f"Bearer authorization_uri={self._authority_host}/{store.org.tenant_id}/oauth2/authorize, "
            f"resource_id={store.org.url}/"
        )
        return DataverseError(401, "0x80072560", reason, {"WWW-Authenticate": challenge})

    def _authenticate(self, request: HttpRequest, store: OrgStore) -> SystemUser:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise self._challenge(store, "no bearer token")
        try:
            claims: dict[str, Any] = self._state.signing_keys.verify(token.strip(), leeway=_CLOCK_SKEW_SECONDS)
        except jwt.InvalidTokenError as exc:
            raise self._challenge(store, f"invalid token: {exc}") from None
        audience = str(claims.get("aud", ""))
        if audience.rstrip("/") != store.org.url:
            raise self._challenge(store, f"audience {audience!r} is not this org")
        tenant = str(claims.get("tid", ""))
        if tenant != store.org.tenant_id:
            raise self._challenge(store, f"token tenant {tenant!r} is not the org's tenant")
        if claims.get("iss") not in (self._minter.v1_issuer(tenant), self._minter.v2_issuer(tenant)):
            raise self._challenge(store, f"issuer {claims.get('iss')!r} is not the org tenant's")
        if "scp" in claims:
            return self._delegated_user(claims, store)
        client_id = str(claims.get("appid") or claims.get("azp") or "")
        user = store.find_application_user(client_id) if client_id else None
        if user is None:
            raise DataverseError(403, errors.NOT_MEMBER, "The user is not a member of the organization.")
        if not user.enabled:
            raise _disabled(user, store)
        return user

    def _delegated_user(self, claims: dict[str, Any], store: OrgStore) -> SystemUser:
        """A signed-in person's token (`scp` present): Dataverse acts as the org user with that Entra object id,
        with that user's own security roles (Dynamics CRM's delegated permission is `user_impersonation`)."""
        if "user_impersonation" not in str(claims.get("scp", "")).split():
            raise self._challenge(store, "the token's scp does not include user_impersonation")
        object_id = str(claims.get("oid", ""))
        user = store.find_user_by_object_id(object_id.lower()) if is_guid(object_id) else None
        if user is None or user.application_id:
            raise DataverseError(403, errors.NOT_MEMBER, "The user is not a member of the organization.")
        if not user.enabled:
            raise _disabled(user, store)
        return user

    def _impersonate(self, request: HttpRequest, store: OrgStore, app_user: SystemUser) -> Caller:
        """Resolve CallerObjectId (Entra object id, preferred) or legacy MSCRMCallerID (systemuserid)."""
        object_id = request.headers.get("callerobjectid", "").strip()
        caller_id = request.headers.get("mscrmcallerid", "").strip()
        if not object_id and not caller_id:
            return Caller(app_user, app_user)
        if not app_user.act_on_behalf:
            raise DataverseError(
                403,
                errors.MISSING_PRIVILEGE,
                f"Principal user (Id={app_user.systemuserid}, type=8, roleCount={len(app_user.roles)}, "
                "accessMode=4) is missing prvActOnBehalfOfAnotherUser privilege for entity 'systemuser'. "
                "Only a user holding it (it is part of the Delegate role) can impersonate another user.",
            )
        header, value = ("CallerObjectId", object_id) if object_id else ("MSCRMCallerID", caller_id)
        if not is_guid(value):
            raise errors.bad_query(f"The {header} header value '{value}' is not a valid GUID.")
        if object_id:
            target = store.find_user_by_object_id(value)
            if target is None:
                # The service's code for an unknown CallerObjectId is not verified; "does not exist" is.
                raise DataverseError(
                    404, errors.NOT_FOUND, f"systemuser With AzureActiveDirectoryObjectId = {value} Does Not Exist"
                )
        else:
            target = store.find_user(value)
            if target is None:
                raise errors.not_found("systemuser", value.lower())
        if not target.enabled:
            raise _disabled(target, store)
        return Caller(app_user, target)
