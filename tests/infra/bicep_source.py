"""Reads the Bicep under infra/ as text, for the infra tests (no Bicep CLI exists here; checkov's parser lives in
its own venv). Only the simple, documented shapes our files keep are understood: one declaration per line,
decorators on the lines above, multi-line object and array literals closed by a line holding only ``}``/``]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
MODULES = INFRA / "modules"
FUNCTION_APP = MODULES / "function-app.bicep"

_PARAM = re.compile(r"^param (\w+) (\w+)(?: = (.+))?$")
_OUTPUT = re.compile(r"^output (\w+) (\w+) = (.+)$")
_DECORATOR = re.compile(r"^@(?:sys\.)?(\w+)\((.*)\)$")
_STRING = re.compile(r"^'((?:[^'\\]|\\.)*)'$")


@dataclass
class Param:
    name: str
    type: str
    default: str | None
    decorators: dict[str, str] = field(default_factory=dict)
    line: int = 0

    @property
    def description(self) -> str | None:
        raw = self.decorators.get("description")
        return None if raw is None else literal(raw)


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


def module_files() -> list[Path]:
    return sorted(MODULES.glob("*.bicep"))


def literal(expression: str) -> str:
    """The value of a single-quoted Bicep string literal."""
    match = _STRING.match(expression.strip())
    if not match:
        raise ValueError(f"not a string literal: {expression}")
    return match.group(1).replace("\\'", "'").replace("\\\\", "\\")


def params(path: Path) -> dict[str, Param]:
    """Parameters with their decorators (single-line decorators and multi-line @allowed([...]))."""
    return params_in(path.read_text(), path.name)


def params_in(text: str, name: str) -> dict[str, Param]:
    """:func:`params` of Bicep text; ``name`` names it in errors."""
    found: dict[str, Param] = {}
    pending: dict[str, str] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].rstrip()
        if line.startswith("@"):
            if line.endswith("(["):
                decorator_name = line[1:].split("(")[0]
                items = []
                index += 1
                while lines[index].strip() != "])":
                    items.append(lines[index].strip())
                    index += 1
                pending[decorator_name] = "\n".join(items)
            else:
                decorator = _DECORATOR.match(line)
                if not decorator:
                    raise ValueError(f"{name}:{index + 1}: unreadable decorator {line!r}")
                pending[decorator.group(1)] = decorator.group(2)
        elif line.startswith("param "):
            match = _PARAM.match(line)
            if not match:
                raise ValueError(f"{name}:{index + 1}: unreadable param {line!r}")
            symbol, type_, default = match.groups()
            found[symbol] = Param(symbol, type_, default, pending, index + 1)
            pending = {}
        elif line.strip() and not line.startswith("//"):
            pending = {}
        index += 1
    return found


def outputs(path: Path) -> dict[str, str]:
    """Output name → value expression."""
    result = {}
    for line in path.read_text().splitlines():
        match = _OUTPUT.match(line)
        if match:
            result[match.group(1)] = match.group(3)
    return result


def block(path: Path, opening: str) -> list[str]:
    """The lines between a line equal to ``opening`` (e.g. ``var appSettings = {``) and its closing line."""
    lines = path.read_text().splitlines()
    if opening not in lines:
        raise ValueError(f"{path.name}: no line {opening!r}")
    start = lines.index(opening)
    closing = "}" if opening.endswith("{") else "]"
    end = lines.index(closing, start)
    return lines[start + 1 : end]


def object_entries(path: Path, opening: str) -> dict[str, str]:
    """``NAME: value`` lines of a one-level object literal; comments and blank lines are skipped."""
    entries: dict[str, str] = {}
    for line in block(path, opening):
        text = line.strip()
        if not text or text.startswith("//"):
            continue
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*): (.+)", text)
        if not match:
            raise ValueError(f"{path.name}: {opening} holds a line that is not `NAME: value`: {text!r}")
        name, value = match.groups()
        if name in entries:
            raise ValueError(f"{path.name}: {name} is set twice in {opening}")
        entries[name] = value
    return entries


def array_items_in(lines: list[str], start: int) -> list[str]:
    """Items of the multi-line array literal opened at the end of ``lines[start]`` and closed by a line ``]``."""
    end = lines.index("]", start)
    return [line.strip() for line in lines[start + 1 : end] if line.strip() and not line.strip().startswith("//")]


def array_items(path: Path, opening: str) -> list[str]:
    """Items of a multi-line array literal, one per line."""
    return [line.strip() for line in block(path, opening) if line.strip() and not line.strip().startswith("//")]


def resources(path: Path) -> list[tuple[str, str, list[str], list[str]]]:
    """(symbol, type@version, comment lines right above, body lines) of every resource declaration."""
    return resources_in(path.read_text())


def resources_in(text: str) -> list[tuple[str, str, list[str], list[str]]]:
    """:func:`resources` of Bicep text (a file's, or a test's edited copy)."""
    lines = text.splitlines()
    found = []
    for index, line in enumerate(lines):
        match = re.match(r"^resource (\w+) '([^']+)'", line)
        if not match:
            continue
        comments = []
        above = index - 1
        while above >= 0 and lines[above].startswith("//"):
            comments.insert(0, lines[above])
            above -= 1
        # Top-level declarations close at column 0: `}`, or `}]` for a loop.
        end = next(i for i in range(index, len(lines)) if lines[i] in ("}", "}]"))
        found.append((match.group(1), match.group(2), comments, lines[index : end + 1]))
    return found


def nested_object_keys(lines: list[str], start: int) -> list[str]:
    """The property names of the object literal opened at the end of ``lines[start]`` (e.g. ``siteConfig: {``), one
    level deep: keys of nested objects and arrays are not included. Raises ValueError when the object never closes.
    """
    keys: list[str] = []
    depth = 0
    for index in range(start, len(lines)):
        code = _without_strings(lines[index])
        if index > start and depth == 1:
            match = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:", code)
            if match:
                keys.append(match.group(1))
        depth += code.count("{") + code.count("[") - code.count("}") - code.count("]")
        if depth <= 0:
            return keys
    raise ValueError(f"the object opened on line {start + 1} is never closed")


def _without_strings(line: str) -> str:
    """A line with its single-quoted strings and its // comment removed, so braces inside them are not counted."""
    code = re.sub(r"'(?:[^'\\]|\\.)*'", "''", line)
    return code.split("//", 1)[0]
