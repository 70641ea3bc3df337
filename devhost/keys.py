"""Access keys as the Functions host checks them: FUNCTION-level routes take the function's own key, the host
key or the master key; ADMIN-level routes take only the master key; ANONYMOUS routes take none.

A key arrives in the `x-functions-key` header or, when that header is absent, in the `code` query parameter.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

KEY_HEADER = "x-functions-key"
KEY_QUERY_PARAMETER = "code"
_KEY_BYTES = 40  # 54 URL-safe characters, about the length of the host's own keys


class AuthLevel(Enum):
    """The `authLevel` of an httpTrigger binding, as written in its function.json."""

    ANONYMOUS = "ANONYMOUS"
    FUNCTION = "FUNCTION"
    ADMIN = "ADMIN"

    @classmethod
    def parse(cls, value: object) -> AuthLevel:
        """Case-insensitive; raises ValueError for a level the host does not know (e.g. SYSTEM, USER)."""
        text = str(value).upper()
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"unsupported authLevel {value!r}") from None


def new_key() -> str:
    return secrets.token_urlsafe(_KEY_BYTES)


@dataclass(frozen=True, kw_only=True)
class HostKeys:
    """The keys a DevHost accepts (keyword arguments; each generated when not given). Treat them as secrets:
    they are kept out of the repr and never logged.
    """

    master_key: str = field(default_factory=new_key, repr=False)
    host_key: str = field(default_factory=new_key, repr=False)
    function_keys: dict[str, str] = field(default_factory=dict, repr=False)  # function name -> key

    def with_function_keys(self, names: Iterable[str]) -> HostKeys:
        """These keys plus a fresh key for every function in `names` that has none yet."""
        merged = dict(self.function_keys)
        for name in names:
            merged.setdefault(name, new_key())
        return HostKeys(master_key=self.master_key, host_key=self.host_key, function_keys=merged)

    def authorizes(self, level: AuthLevel, function_name: str, presented: str | None) -> bool:
        """Whether `presented` opens a route of `level` belonging to `function_name`."""
        if level is AuthLevel.ANONYMOUS:
            return True
        if not presented:
            return False
        accepted = [self.master_key]
        if level is AuthLevel.FUNCTION:
            accepted.append(self.host_key)
            if function_name in self.function_keys:
                accepted.append(self.function_keys[function_name])
        # Compare against every candidate, without short-circuit, in constant time per candidate.
        matches = [hmac.compare_digest(presented.encode(), key.encode()) for key in accepted if key]
        return any(matches)


def load_keys(path: Path) -> HostKeys:
    """The keys kept in `path` (JSON: master_key, host_key, function_keys), so URLs with keys survive a restart;
    a new set is written there (mode 0600) when the file does not exist."""
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        return HostKeys(
            master_key=saved["master_key"], host_key=saved["host_key"], function_keys=dict(saved["function_keys"])
        )
    keys = HostKeys()
    save_keys(path, keys)
    return keys


def save_keys(path: Path, keys: HostKeys) -> None:
    """Write `keys` to `path`, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    payload = {"master_key": keys.master_key, "host_key": keys.host_key, "function_keys": keys.function_keys}
    path.write_text(json.dumps(payload), encoding="utf-8")
