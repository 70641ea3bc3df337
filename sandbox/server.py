"""The `Sandbox`: starts the Entra, Key Vault (both HTTPS) and managed identity (HTTP) stand-ins on loopback,
with a throw-away CA whose bundle clients trust through REQUESTS_CA_BUNDLE (environment.md, TLS).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import ssl
import tempfile
from pathlib import Path
from types import TracebackType

import certifi

from sandbox.entra import EntraService
from sandbox.httpd import LoopbackServer
from sandbox.keyvault import VAULT_RESOURCE, KeyVaultService
from sandbox.managed_identity import TOKEN_PATH, ManagedIdentityService
from sandbox.pki import make_certificate_authority, make_server_certificate
from sandbox.state import SandboxState

logger = logging.getLogger(__name__)

_CA_DAYS = 3


class Sandbox:
    """Local stand-ins for Entra ID, Key Vault and the App Service managed identity endpoint.

    `state` can be seeded before or after `start()`; the URL properties exist only while running.
    """

    def __init__(self, state_dir: Path | None = None, state: SandboxState | None = None) -> None:
        self.state = state or SandboxState()
        self._requested_dir = state_dir
        self._state_dir: Path | None = None
        self._owns_dir = False
        self._servers: dict[str, LoopbackServer] = {}
        self.identity_header = secrets.token_urlsafe(24)
        self.vault_resource = VAULT_RESOURCE

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Sandbox:
        if self._servers:
            raise RuntimeError("sandbox already started")
        if self._requested_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix="sandbox-"))
            self._owns_dir = True
        else:
            self._state_dir = self._requested_dir
            self._state_dir.mkdir(parents=True, exist_ok=True)
        tls = self._write_trust_material(self._state_dir)
        entra = LoopbackServer(tls)
        vault = LoopbackServer(tls)
        identity = LoopbackServer(None)  # App Service's endpoint is plain http on loopback
        self._servers = {"entra": entra, "vault": vault, "identity": identity}
        self.state.authority_host = self.authority_host
        entra.application = EntraService(self.state, self.authority_host)
        vault.application = KeyVaultService(self.state, self.vault_url, self.authority_host)
        identity.application = ManagedIdentityService(self.state, self.authority_host, self.identity_header)
        for server in self._servers.values():
            server.start()
        logger.info(
            "sandbox running: entra %s, vault %s, identity %s",
            self.authority_host,
            self.vault_url,
            self.identity_endpoint,
        )
        return self

    def stop(self) -> None:
        for server in self._servers.values():
            server.stop()
        self._servers = {}
        if self._owns_dir and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None
            self._owns_dir = False

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _write_trust_material(state_dir: Path) -> ssl.SSLContext:
        authority = make_certificate_authority("Sandbox Local CA", days=_CA_DAYS)
        server = make_server_certificate(authority, ("127.0.0.1", "localhost"), days=_CA_DAYS)
        (state_dir / "ca.pem").write_text(authority.cert_pem, encoding="ascii")
        public_roots = Path(certifi.where()).read_text(encoding="utf-8")
        (state_dir / "ca-bundle.pem").write_text(
            public_roots.rstrip("\n") + "\n\n# Sandbox Local CA\n" + authority.cert_pem, encoding="utf-8"
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # load_cert_chain reads files only; the key file lives just long enough to be loaded.
        key_file = state_dir / "server-key.pem"
        key_file.touch(mode=0o600)
        try:
            key_file.write_text(server.key_pem + server.cert_pem + authority.cert_pem, encoding="ascii")
            context.load_cert_chain(key_file)
        finally:
            key_file.unlink(missing_ok=True)
        return context

    # -- where clients find it ------------------------------------------------------------------

    def _port(self, name: str) -> int:
        server = self._servers.get(name)
        if server is None:
            raise RuntimeError("sandbox is not running; call start() first")
        return server.port

    @property
    def authority_host(self) -> str:
        return f"https://127.0.0.1:{self._port('entra')}"

    @property
    def vault_url(self) -> str:
        return f"https://127.0.0.1:{self._port('vault')}/"

    @property
    def identity_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._port('identity')}{TOKEN_PATH}"

    @property
    def state_dir(self) -> Path:
        if self._state_dir is None:
            raise RuntimeError("sandbox is not running; call start() first")
        return self._state_dir

    @property
    def ca_cert_path(self) -> Path:
        return self.state_dir / "ca.pem"

    @property
    def ca_bundle_path(self) -> Path:
        """certifi's public roots plus the sandbox CA, for REQUESTS_CA_BUNDLE / SSL_CERT_FILE."""
        return self.state_dir / "ca-bundle.pem"

    def env(self) -> dict[str, str]:
        """Environment variables that point unmodified clients at the sandbox."""
        bundle = str(self.ca_bundle_path)
        return {
            "REQUESTS_CA_BUNDLE": bundle,
            "SSL_CERT_FILE": bundle,
            "IDENTITY_ENDPOINT": self.identity_endpoint,
            "IDENTITY_HEADER": self.identity_header,
        }
