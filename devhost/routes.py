"""Route templates of httpTrigger bindings, matched as ASP.NET Core routing (which the Functions host uses)
matches them: literal segments compare case-insensitively; `{name}`, `{name:constraint}`, `{name?}`,
`{name=default}` and a final `{*name}` catch-all become route parameters.

Constraints understood: int, long, bool, guid, alpha, decimal, double, float, datetime, min(n), max(n),
range(a,b), length(n), length(a,b), minlength(n), maxlength(n). Others (e.g. regex(...)) are refused when the
host starts rather than silently ignored.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_ALPHA = re.compile(r"[A-Za-z]+")
# Guid.TryParse formats D, N, B and P.
_GUID = re.compile(
    r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}"
    r"|\([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\)"
)
_TOKEN = re.compile(r"\{\{|\}\}|\{[^{}]*\}|[^{}]+|[{}]")
_CONSTRAINT = re.compile(r"(?P<name>[A-Za-z]+)(?:\((?P<args>[^()]*)\))?")

Check = Callable[[str], bool]

# ASP.NET RoutePrecedence: lower sorts first, so literal segments beat parameters and catch-alls come last.
_LITERAL, _COMPLEX, _CONSTRAINED, _PARAMETER, _CATCH_ALL = 1, 2, 3, 4, 5


def _in_range(bounds: tuple[int, int]) -> Check:
    return lambda value: bool(_INTEGER.fullmatch(value)) and bounds[0] <= int(value) <= bounds[1]


def _is_datetime(value: str) -> bool:
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


_SIMPLE: dict[str, Check] = {
    "int": _in_range(_INT32),
    "long": _in_range(_INT64),
    "bool": lambda value: value.lower() in ("true", "false"),
    "guid": lambda value: bool(_GUID.fullmatch(value)),
    "alpha": lambda value: bool(_ALPHA.fullmatch(value)),
    "decimal": lambda value: bool(_NUMBER.fullmatch(value)),
    "double": lambda value: bool(_NUMBER.fullmatch(value)),
    "float": lambda value: bool(_NUMBER.fullmatch(value)),
    "datetime": _is_datetime,
}


def _numbers(args: str, count: int, template: str) -> list[int]:
    parts = [part.strip() for part in args.split(",")] if args else []
    if len(parts) != count or not all(_INTEGER.fullmatch(part) for part in parts):
        raise ValueError(f"route {template!r}: constraint arguments {args!r} need {count} integer(s)")
    return [int(part) for part in parts]


def _constraint(spec: str, template: str) -> Check:
    found = _CONSTRAINT.fullmatch(spec)
    if found is None:
        raise ValueError(f"route {template!r}: unsupported constraint {spec!r}")
    name, args = found["name"].lower(), found["args"]
    if args is None and name in _SIMPLE:
        return _SIMPLE[name]
    if args is None:
        raise ValueError(f"route {template!r}: unsupported constraint {spec!r}")
    match name:
        case "min":
            (low,) = _numbers(args, 1, template)
            return _in_range((low, _INT64[1]))
        case "max":
            (high,) = _numbers(args, 1, template)
            return _in_range((_INT64[0], high))
        case "range":
            low, high = _numbers(args, 2, template)
            return _in_range((low, high))
        case "length" if "," in args:
            low, high = _numbers(args, 2, template)
            return lambda value: low <= len(value) <= high
        case "length":
            (exact,) = _numbers(args, 1, template)
            return lambda value: len(value) == exact
        case "minlength":
            (low,) = _numbers(args, 1, template)
            return lambda value: len(value) >= low
        case "maxlength":
            (high,) = _numbers(args, 1, template)
            return lambda value: len(value) <= high
    raise ValueError(f"route {template!r}: unsupported constraint {spec!r}")


@dataclass(frozen=True)
class _Parameter:
    name: str
    checks: tuple[Check, ...]
    optional: bool
    default: str | None
    catch_all: bool

    def accepts(self, value: str) -> bool:
        return all(check(value) for check in self.checks)


def _parameter(body: str, template: str) -> _Parameter:
    catch_all = body.startswith("*")
    body = body.lstrip("*")
    default: str | None = None
    if "=" in body:
        body, default = body.split("=", 1)
    optional = body.endswith("?")
    body = body.removesuffix("?")
    name, *constraints = body.split(":")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"route {template!r}: bad parameter name {name!r}")
    checks = tuple(_constraint(spec, template) for spec in constraints)
    return _Parameter(name, checks, optional or default is not None, default, catch_all)


@dataclass(frozen=True)
class _Segment:
    """One `/`-separated part: literal text and parameters; `pattern` matches complex segments like `{a}.{b}`."""

    literal: str | None  # set when the segment has no parameter
    parameters: tuple[_Parameter, ...]
    pattern: re.Pattern[str] | None

    @property
    def rank(self) -> int:
        if self.literal is not None:
            return _LITERAL
        if self.pattern is not None:
            return _COMPLEX
        parameter = self.parameters[0]
        if parameter.catch_all:
            return _CATCH_ALL
        return _CONSTRAINED if parameter.checks else _PARAMETER


def _is_parameter(piece: str) -> bool:
    return piece.startswith("{") and piece != "{{"


def _unescape(piece: str) -> str:
    return piece.replace("{{", "{").replace("}}", "}")


def _segment(text: str, template: str) -> _Segment:
    pieces = _TOKEN.findall(text)
    if any(piece in ("{", "}") for piece in pieces):
        raise ValueError(f"route {template!r}: unbalanced brace in {text!r}")
    parameters = [_parameter(piece[1:-1], template) for piece in pieces if _is_parameter(piece)]
    if not parameters:
        return _Segment(_unescape(text), (), None)
    if len(pieces) == 1:
        return _Segment(None, (parameters[0],), None)
    if any(p.catch_all or p.optional for p in parameters):
        raise ValueError(f"route {template!r}: optional and catch-all parameters must fill their whole segment")
    regex = "".join("(.+?)" if _is_parameter(piece) else re.escape(_unescape(piece)) for piece in pieces)
    return _Segment(None, tuple(parameters), re.compile(regex, re.IGNORECASE | re.DOTALL))


def _decode(segment: str) -> str:
    """Percent-decode a path segment except `%2F`, which stays encoded (as Kestrel leaves it) so that it can
    never split a segment in two.
    """
    return unquote(re.sub("%2[Ff]", "%252F", segment))


class RouteTemplate:
    """A compiled route template. `match` takes the part of the request path after the route prefix,
    still percent-encoded, and returns the route parameters (decoded) or None.
    """

    def __init__(self, template: str) -> None:
        self.text = template.strip().strip("/")
        self._segments = [_segment(part, template) for part in self.text.split("/")] if self.text else []
        names = [p.name.lower() for segment in self._segments for p in segment.parameters]
        if len(names) != len(set(names)):
            raise ValueError(f"route {template!r}: a parameter name is used twice")
        for segment in self._segments[:-1]:
            if segment.parameters and (segment.parameters[0].catch_all or segment.parameters[0].optional):
                raise ValueError(f"route {template!r}: only the last segment may be optional or catch-all")
        self.precedence = tuple(segment.rank for segment in self._segments)

    @property
    def parameter_names(self) -> list[str]:
        return [p.name for segment in self._segments for p in segment.parameters]

    def match(self, path: str) -> dict[str, str] | None:
        raw = path.strip("/")
        parts = raw.split("/") if raw else []
        values: dict[str, str] = {}
        for index, segment in enumerate(self._segments):
            last = segment.parameters[0] if segment.parameters and segment.pattern is None else None
            if last is not None and last.catch_all:
                rest = "/".join(_decode(part) for part in parts[index:])
                if rest:
                    if not last.accepts(rest):
                        return None
                    values[last.name] = rest
                elif last.default is not None:
                    values[last.name] = last.default
                return values
            if index >= len(parts):
                if last is not None and last.optional and index == len(self._segments) - 1:
                    if last.default is not None:
                        values[last.name] = last.default
                    return values
                return None
            part = _decode(parts[index])
            if not part or not self._match_segment(segment, part, values):
                return None
        return values if len(parts) == len(self._segments) else None

    @staticmethod
    def _match_segment(segment: _Segment, part: str, values: dict[str, str]) -> bool:
        if segment.literal is not None:
            return part.casefold() == segment.literal.casefold()
        if segment.pattern is None:
            parameter = segment.parameters[0]
            if not parameter.accepts(part):
                return False
            values[parameter.name] = part
            return True
        found = segment.pattern.fullmatch(part)
        if found is None:
            return False
        for parameter, value in zip(segment.parameters, found.groups(), strict=True):
            if not parameter.accepts(value):
                return False
            values[parameter.name] = value
        return True

    def __repr__(self) -> str:
        return f"RouteTemplate({self.text!r})"
