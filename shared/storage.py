"""Azure Storage clients (tables, queues) for the app's own state, from one place.

Production reaches the account by name with the managed identity (identity-first storage, no shared keys);
local work and tests use a connection string (Azurite).
"""

from __future__ import annotations

from typing import Any

from shared.auth.azure_identity import azure_credential
from shared.errors import ConfigurationError
from shared.settings import Settings

# azure-core waits up to 300 s to connect and per read by default; a storage account that hangs instead of
# refusing would then hold a webhook acknowledgement past Dataverse's 60 s timeout, or a sweep past its budget.
# Table entities and queue messages are small, and blob transfers read in chunks, so these bound a hang, not work.
TRANSPORT_TIMEOUTS: dict[str, Any] = {"connection_timeout": 5, "read_timeout": 20}


class StorageClients:
    """Builds table and queue clients on first use; table and queue names are fixed by the app."""

    def __init__(self, settings: Settings, credential_factory: Any = None) -> None:
        if not settings.storage_connection_string and not settings.storage_account_name:
            raise ConfigurationError(
                "STORAGE_CONNECTION_STRING",
                "or STORAGE_ACCOUNT_NAME is required for the tenant registry and queues",
            )
        self._settings = settings
        self._credential_factory = credential_factory
        self._credential: Any = None

    def _get_credential(self) -> Any:
        if self._credential is None:
            if self._credential_factory is not None:
                self._credential = self._credential_factory()
            else:
                self._credential = azure_credential(self._settings)
        return self._credential

    def table(self, name: str) -> Any:
        from azure.data.tables import TableServiceClient

        settings = self._settings
        if settings.storage_connection_string:
            service = TableServiceClient.from_connection_string(
                settings.storage_connection_string, **TRANSPORT_TIMEOUTS
            )
        else:
            endpoint = f"https://{settings.storage_account_name}.table.{settings.storage_suffix}"
            service = TableServiceClient(endpoint, credential=self._get_credential(), **TRANSPORT_TIMEOUTS)
        return service.get_table_client(name)

    def queue(self, name: str) -> Any:
        from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

        settings = self._settings
        # The Functions queue trigger expects base64 message bodies.
        encode, decode = TextBase64EncodePolicy(), TextBase64DecodePolicy()
        if settings.storage_connection_string:
            return QueueClient.from_connection_string(
                settings.storage_connection_string,
                name,
                message_encode_policy=encode,
                message_decode_policy=decode,
                **TRANSPORT_TIMEOUTS,
            )
        endpoint = f"https://{settings.storage_account_name}.queue.{settings.storage_suffix}"
        return QueueClient(
            endpoint,
            name,
            credential=self._get_credential(),
            message_encode_policy=encode,
            message_decode_policy=decode,
            **TRANSPORT_TIMEOUTS,
        )

    def container(self, name: str) -> Any:
        from azure.storage.blob import ContainerClient

        settings = self._settings
        if settings.storage_connection_string:
            connection_string = settings.storage_connection_string
            return ContainerClient.from_connection_string(connection_string, name, **TRANSPORT_TIMEOUTS)
        endpoint = f"https://{settings.storage_account_name}.blob.{settings.storage_suffix}"
        return ContainerClient(endpoint, name, credential=self._get_credential(), **TRANSPORT_TIMEOUTS)
