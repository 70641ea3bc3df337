"""Stored text made safe for a terminal: what a customer typed (a contact), what Entra or Dataverse said (a
reason), who signed in (a UPN) reaches the operator's screen, and none of it may move the cursor, change colours,
set the window title, erase a line or reorder what follows.

Every character Python does not call printable — control (C0, DEL, C1: ESC, CR, BEL, …), format (bidi overrides
and isolates, zero-width characters), line and paragraph separators, surrogates, private-use and unassigned code
points, and separators other than the ASCII space — is shown as its escape (``\\x1b``, ``\\u202e``), as ``repr``
would. Everything else, accented letters and other scripts included, is shown as it is; a backslash too, so an
escape on screen may be the stored text's own characters — ``--json`` is the unambiguous form.
"""

from __future__ import annotations


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def terminal_safe(text: str) -> str:
    """``text`` with every non-printable character replaced by its backslash escape (see the module docstring)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
