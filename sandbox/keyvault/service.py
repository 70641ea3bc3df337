"""Key Vault stand-in (secrets data plane): bearer challenge, RBAC check, get/list secrets and versions.

Follows the exchange the SDK expects (protocol §3, environment.md): an anonymous first request gets a 401
challenge naming the vault's tenant and resource; the retry carries a token for that resource.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import jwt

from sandbox.entra.tokens import TokenMinter
from sandbox.faults import key_vault_error
from sandbox.keyvault.vault import PEM_CONTENT_TYPE, PFX_CONTENT_TYPE, SecretVersion
from sandbox.net.httpd import HttpRequest, HttpResponse, json_response
from sandbox.net.pki import pem_to_pfx

logger = logging.getLogger(__name__)

VAULT_RESOURCE = "https://vault.azure.net"
_CLOCK_SKEW_SECONDS = 300
_NOT_FOUND_HINT = (
    "If you recently deleted this secret you may be able to recover it using the correct recovery "
    "command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
)

if TYPE_CHECKING:
    from sandbox.state import SandboxState
_DEFAULT_PAGE_SIZE = 25


class _VaultError(Exception):
    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner


class KeyVaultService:
    """One vault whose tenant is the sandbox's home tenant."""

    def __init__(self, state: SandboxState, vault_url: str, authority_host: str) -> None:
        self._state = state
        self._vault_url = vault_url if vault_url.endswith("/") else vault_url + "/"
        self._authority_host = authority_host.rstrip("/")
        self._minter = TokenMinter(state.signing_keys, self._authority_host)

    @property
    def challenge(self) -> str:
        tenant = self._state.home_tenant_id
        return f'Bearer authorization="{self._authority_host}/{tenant}", resource="{VAULT_RESOURCE}"'

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = str(uuid.uuid4())
        headers = {"x-ms-request-id": request_id, "x-ms-keyvault-service-version": "1.9.0.0"}
        try:
            self._injected_fault(headers)
            self._authorize(request)
            status, payload = self._route(request)
        except _VaultError as err:
            if err.status == 401:
                headers["WWW-Authenticate"] = self.challenge
            error: dict[str, Any] = {"code": err.code, "message": err.message}
            if err.inner:
                error["innererror"] = {"code": err.inner}
            status, payload = err.status, {"error": error}
        self._state.counters.bump("vault_request", status=status)
        logger.debug("vault %s %s -> %s", request.method, request.path, status)
        return json_response(status, payload, headers)

    def _injected_fault(self, headers: dict[str, str]) -> None:
        """An armed fault (sandbox.faults): sleep, then raise its error; returns to go on normally."""
        fault = self._state.faults.take("keyvault")
        if fault is None:
            return
        self._state.counters.bump("fault_injected", service="keyvault", status=fault.status or "delay")
        if fault.delay:
            time.sleep(fault.delay)
        if fault.status is None:
            return  # a slow vault: now answer normally
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        code, message = key_vault_error(fault.status)
        raise _VaultError(fault.status, code, message)

    # -- authentication and authorization ------------------------------------------------------

    def _authorize(self, request: HttpRequest) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _VaultError(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.")
        try:
            claims = self._state.signing_keys.verify(token.strip(), leeway=_CLOCK_SKEW_SECONDS)
        except jwt.ExpiredSignatureError as exc:
            raise _VaultError(401, "Unauthorized", "AKV10013: The access token has expired.") from exc
        except jwt.InvalidTokenError as exc:
            raise _VaultError(
                401, "Unauthorized", "AKV10001: The access token is not valid (signature or format)."
            ) from exc
        audience = claims.get("aud")
        if audience not in (VAULT_RESOURCE, VAULT_RESOURCE + "/"):
            raise _VaultError(
                401, "Unauthorized", f"AKV10022: Invalid audience. Expected {VAULT_RESOURCE}, found: {audience}."
            )
        # A real vault accepts only its own tenant's tokens. The sandbox accepts any tenant it knows, so
        # scenarios may put the app and its managed identity in a tenant of their own.
        tenant = str(claims.get("tid", ""))
        expected = (self._minter.v1_issuer(tenant), self._minter.v2_issuer(tenant))
        if self._state.find_tenant(tenant) is None or claims.get("iss") not in expected:
            raise _VaultError(
                401,
                "Unauthorized",
                f"AKV10032: Invalid issuer. Expected one of {', '.join(expected)}, found {claims.get('iss')}.",
            )
        object_id = str(claims.get("oid", ""))
        if not self._state.has_vault_secret_access(object_id):
            raise _VaultError(
                403,
                "Forbidden",
                "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny "
                "assignments or role definitions were changed recently, please observe propagation time.\r\n"
                f"Caller: appid={claims.get('appid') or claims.get('azp')};oid={object_id};"
                f"iss={claims.get('iss')}\r\n"
                "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\n"
                "Assignment: (not found)\r\n",
                inner="ForbiddenByRbac",
            )

    # -- routes ---------------------------------------------------------------------------------

    def _route(self, request: HttpRequest) -> tuple[int, dict[str, Any]]:
        if request.method != "GET":
            raise _VaultError(405, "BadParameter", f"The method {request.method} is not supported here.")
        match request.segments:
            case ["secrets"] | ["secrets", ""]:
                return 200, self._list_secrets(request)
            case ["secrets", name, "versions"]:
                return 200, self._list_versions(name, request)
            case ["secrets", name] | ["secrets", name, ""]:
                return 200, self._get_secret(name, "", request)
            case ["secrets", name, version]:
                return 200, self._get_secret(name, version, request)
        raise _VaultError(404, "NotFound", f"No operation at {request.path}.")

    def _secret_id(self, version: SecretVersion, *, with_version: bool = True) -> str:
        base = f"{self._vault_url}secrets/{version.name}"
        return f"{base}/{version.version}" if with_version else base

    @staticmethod
    def _attributes(version: SecretVersion) -> dict[str, Any]:
        attributes: dict[str, Any] = {"enabled": version.enabled}
        if version.not_before is not None:
            attributes["nbf"] = version.not_before
        if version.expires is not None:
            attributes["exp"] = version.expires
        attributes.update(
            created=version.created,
            updated=version.updated,
            recoveryLevel="Recoverable+Purgeable",
            recoverableDays=90,
        )
        return attributes

    def _properties(self, version: SecretVersion, *, with_version: bool) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": self._secret_id(version, with_version=with_version),
            "attributes": self._attributes(version),
            "tags": dict(version.tags),
        }
        if version.content_type:
            item["contentType"] = version.content_type
        if version.managed:
            item["managed"] = True
        return item

    def _get_secret(self, name: str, version_text: str, request: HttpRequest) -> dict[str, Any]:
        version = self._state.find_secret_version(name, version_text or None)
        if version is None:
            shown = f"{name}/{version_text}" if version_text else name
            raise _VaultError(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {shown} was not found in this key vault. {_NOT_FOUND_HINT}",
            )
        if not version.enabled:
            raise _VaultError(403, "Forbidden", "Operation get is not allowed on a disabled secret.")
        value, content_type = self._value(version, request.query.get("outContentType"))
        body: dict[str, Any] = {"value": value, "id": self._secret_id(version)}
        if content_type:
            body["contentType"] = content_type
        body["attributes"] = self._attributes(version)
        body["tags"] = dict(version.tags)
        if version.managed:
            body["kid"] = f"{self._vault_url}keys/{version.name}/{version.version}"
            body["managed"] = True
            if version.previous_version:
                body["previousVersion"] = version.previous_version
        self._state.counters.bump("vault_get", name=version.name, version=version.version)
        return body

    @staticmethod
    def _value(version: SecretVersion, out_content_type: str | None) -> tuple[str, str | None]:
        """The stored value, or for a certificate secret the value converted to `outContentType`."""
        if not out_content_type or version.certificate is None or out_content_type == version.content_type:
            return version.value, version.content_type
        if out_content_type == PEM_CONTENT_TYPE:
            return version.certificate.combined_pem, PEM_CONTENT_TYPE
        if out_content_type == PFX_CONTENT_TYPE:
            return base64.b64encode(pem_to_pfx(version.certificate)).decode("ascii"), PFX_CONTENT_TYPE
        raise _VaultError(400, "BadParameter", f"The outContentType '{out_content_type}' is not supported.")

    def _page(self, items: list[dict[str, Any]], request: HttpRequest, path: str) -> dict[str, Any]:
        try:
            size = int(request.query.get("maxresults") or _DEFAULT_PAGE_SIZE)
            start = int(request.query.get("$skiptoken") or 0)
        except ValueError as exc:
            raise _VaultError(400, "BadParameter", "maxresults and $skiptoken must be integers.") from exc
        page = items[start : start + size]
        next_link = None
        if start + size < len(items):
            api_version = request.query.get("api-version", "")
            next_link = f"{self._vault_url}{path}?api-version={api_version}&$skiptoken={start + size}&maxresults={size}"
        return {"value": page, "nextLink": next_link}

    def _list_secrets(self, request: HttpRequest) -> dict[str, Any]:
        self._state.counters.bump("vault_list")
        items = [self._properties(v, with_version=False) for v in self._state.list_latest_secrets()]
        return self._page(items, request, "secrets")

    def _list_versions(self, name: str, request: HttpRequest) -> dict[str, Any]:
        versions = self._state.list_secret_versions(name)
        if not versions:
            raise _VaultError(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {name} was not found in this key vault. {_NOT_FOUND_HINT}",
            )
        self._state.counters.bump("vault_list", name=versions[0].name)
        items = [self._properties(v, with_version=True) for v in versions]
        return self._page(items, request, f"secrets/{versions[0].name}/versions")
