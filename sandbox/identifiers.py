"""Ids every stand-in's admin operations share: GUID text and the error for something the sandbox does not hold."""

from __future__ import annotations

import uuid


class SandboxLookupError(LookupError):
    """An admin operation named a tenant, app, service principal or secret the sandbox does not hold."""


def normalize_guid(value: str) -> str:
    """Lower-case canonical GUID text. Raises ValueError for anything that is not a GUID."""
    return str(uuid.UUID(value))


def is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
