"""Local cloud-in-a-box for development and tests: HTTPS stand-ins for Entra ID, Key Vault, the App Service
managed identity endpoint and the Dataverse Web API that the real MSAL / azure-identity / azure-keyvault-secrets /
Dataverse clients accept. Never deployed.

Dataverse orgs keep real URLs (https://<org>.crm4.dynamics.com): `Sandbox.env()` sets HTTPS_PROXY to a loopback
CONNECT proxy that tunnels registered org hosts to the Dataverse stand-in and refuses every other host (403),
with NO_PROXY=127.0.0.1,localhost keeping the other stand-ins direct. Production code stays unchanged.
"""

from sandbox.server import Sandbox

__all__ = ["Sandbox"]
