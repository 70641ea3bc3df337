"""Fixtures shared by every test folder."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator

import pytest

from sandbox.azurite import Azurite


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    emulator = Azurite()
    try:
        yield emulator
    finally:
        emulator.stop()


# -- no secret in any log record, across the whole suite ------------------------------------------------------------

_SECRET_PATTERNS = {
    "JWT (access token or client assertion)": re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"),
    "PEM block (key or certificate)": re.compile(r"-----BEGIN [A-Z ]+-----"),
    "DER certificate or key (base64)": re.compile(r"\bMII[A-Za-z0-9+/]{60,}"),
    "function key in a URL": re.compile(r"[?&]code=[A-Za-z0-9_\-]{20,}"),
}


class _SecretWatch(logging.Handler):
    """Sees every record at INFO or above from every logger while the suite runs."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.findings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is not a leak
            return
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r}"
        for what, pattern in _SECRET_PATTERNS.items():
            if pattern.search(text):
                self.findings.append(f"{what} in a {record.levelname} record of {record.name}: {text[:160]!r}")


_WATCH = _SecretWatch()


def pytest_sessionstart(session: pytest.Session) -> None:
    root = logging.getLogger()
    root.addHandler(_WATCH)
    root.setLevel(min(root.level or logging.WARNING, logging.INFO))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    logging.getLogger().removeHandler(_WATCH)
    if _WATCH.findings:
        session.exitstatus = 1
        sys.stderr.write("\nSecrets reached the logs (INFO or above):\n" + "\n".join(_WATCH.findings[:20]) + "\n")
