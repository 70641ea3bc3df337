"""The app's own Azure identity for Azure resources (Key Vault, Storage): the managed identity in Azure, developer
credentials (Azure CLI and friends) on a workstation. Built here so the composition root and the storage clients
both take it from one place without importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.settings import Settings

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential


def azure_credential(settings: Settings) -> TokenCredential:
    """DefaultAzureCredential with the user-assigned identity's client id when one is set; no browser prompts."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(
        managed_identity_client_id=settings.managed_identity_client_id,
        exclude_interactive_browser_credential=True,
    )
