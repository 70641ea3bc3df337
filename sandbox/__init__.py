"""Local cloud-in-a-box for development and tests: HTTPS stand-ins for Entra ID, Key Vault and the App Service
managed identity endpoint that the real MSAL / azure-identity / azure-keyvault-secrets clients accept. Never deployed.
"""

from sandbox.server import Sandbox

__all__ = ["Sandbox"]
