"""Dataverse org URLs: the one check every org URL passes before a token is requested for it.

A token for ``https://x/.default`` is a bearer credential for whatever answers at x, so an org URL taken from a
customer form, the registry or a webhook must be exactly ``https://<org>.<dataverse suffix>`` — nothing smuggled
in a path, query, port, or ``user@`` prefix.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from shared.errors import S2SError

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def is_host_name(text: str) -> bool:
    """A DNS host name of two or more labels (``contoso.crm.dynamics.com``), lower case, at most 253 characters."""
    labels = text.split(".")
    return len(text) <= 253 and len(labels) >= 2 and all(_LABEL.fullmatch(label) for label in labels)


class InvalidOrgUrlError(S2SError):
    """The text is not the URL of a Dataverse org in the configured cloud; ``message`` says why."""

    code = "invalid_org_url"


def validate_org_url(url: str, allowed_suffixes: tuple[str, ...]) -> str:
    """Return the canonical org URL (``https://host``, lower case, no slash) or raise InvalidOrgUrlError."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidOrgUrlError("The organisation URL is empty.")
    text = url.strip()
    if len(text) > 300:
        raise InvalidOrgUrlError("The organisation URL is too long.")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in text):
        raise InvalidOrgUrlError("The organisation URL contains spaces or control characters.")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidOrgUrlError("The organisation URL is malformed.") from exc
    if parts.scheme.lower() != "https":
        raise InvalidOrgUrlError("The organisation URL must start with https://.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidOrgUrlError("The organisation URL must not contain a user name or password.")
    if port not in (None, 443):
        raise InvalidOrgUrlError("The organisation URL must not name a port.")
    if parts.path not in ("", "/"):
        raise InvalidOrgUrlError(
            "The organisation URL must be just the address, e.g. https://contoso.crm.dynamics.com (no path)."
        )
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise InvalidOrgUrlError("The organisation URL must not have a query or fragment.")
    host = (parts.hostname or "").rstrip(".")
    for suffix in allowed_suffixes:
        if host.endswith("." + suffix):
            label = host[: -len(suffix) - 1]
            if _LABEL.fullmatch(label):
                return f"https://{host}"
            break
    examples = ", ".join(allowed_suffixes[:3])
    raise InvalidOrgUrlError(
        f"The organisation URL must be https://<your org>.<Dataverse domain> for this cloud (e.g. {examples})."
    )
