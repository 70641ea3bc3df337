"""App Service managed identity endpoint stand-in (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`, api 2019-08-01).

MSAL (which azure-identity delegates to) sends `GET ?api-version=2019-08-01&resource=R[&client_id|object_id|
mi_res_id=…]` with `X-IDENTITY-HEADER` and reads `access_token` and `expires_on` (epoch seconds, a string).
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from sandbox.entra.directory import ManagedIdentity
from sandbox.entra.tokens import TokenMinter
from sandbox.net.httpd import HttpRequest, HttpResponse, json_response

if TYPE_CHECKING:
    from sandbox.state import SandboxState

logger = logging.getLogger(__name__)

TOKEN_PATH = "/msi/token"
# Query parameters that pick a user-assigned identity (MSAL sends client_id, object_id or mi_res_id).
_SELECTORS = {
    "client_id": "client_id",
    "principal_id": "principal_id",
    "object_id": "principal_id",
    "mi_res_id": "resource_id",
}


class _IdentityError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ManagedIdentityService:
    """Hands out tokens for the managed identities registered in the state."""

    def __init__(self, state: SandboxState, authority_host: str, identity_header: str) -> None:
        self._state = state
        self._minter = TokenMinter(state.signing_keys, authority_host)
        self._identity_header = identity_header

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            payload = self._token(request)
        except _IdentityError as err:
            logger.debug("managed identity request refused: %s", err.message)
            return json_response(
                err.status,
                {"statusCode": err.status, "message": err.message, "correlationId": str(uuid.uuid4())},
            )
        return json_response(200, payload)

    def _token(self, request: HttpRequest) -> dict[str, Any]:
        if request.method != "GET" or request.path != TOKEN_PATH:
            raise _IdentityError(404, f"No endpoint at {request.method} {request.path}.")
        self._state.counters.bump("msi_request")
        if request.headers.get("x-identity-header") != self._identity_header:
            raise _IdentityError(401, "The X-IDENTITY-HEADER header is missing or does not match IDENTITY_HEADER.")
        if not request.query.get("api-version"):
            raise _IdentityError(400, "Required query variable 'api-version' is missing.")
        resource = request.query.get("resource", "")
        if not resource:
            raise _IdentityError(400, "Required query variable 'resource' is missing.")
        identity = self._select(request.query)
        issued = self._minter.managed_identity_token(identity, resource)
        self._state.counters.bump("msi_token", client_id=identity.client_id, resource=resource)
        return {
            "access_token": issued.access_token,
            "expires_on": str(issued.expires_on),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }

    def _select(self, query: dict[str, str]) -> ManagedIdentity:
        """The identity the query names; with no identifier, the first one registered stands in for the
        app's system-assigned identity.
        """
        identities = self._state.managed_identities()
        for parameter, attribute in _SELECTORS.items():
            wanted = query.get(parameter)
            if wanted:
                found = next((mi for mi in identities if getattr(mi, attribute).lower() == wanted.lower()), None)
                if found is None:
                    raise _IdentityError(400, f"No managed identity found for {parameter} '{wanted}'.")
                return found
        if not identities:
            raise _IdentityError(400, "No managed identity is assigned to this app.")
        return identities[0]
