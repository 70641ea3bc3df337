"""Evaluates the few Bicep expressions the infra tests need to run, such as main.bicep's deployment guard, with
given parameters and a given cloud and tenant (no Bicep CLI or ARM exists here).

Only a small subset is understood, and anything else raises ``Unsupported`` rather than guessing: string, integer and
boolean literals, strings with ``${...}`` interpolation, multi-line array literals, ``!``, ``&&``, ``||``, ``==``,
``!=``, ``? :``, parentheses, member access, parameters and variables, and the functions in FUNCTIONS plus
``environment()`` and ``tenant()``. Semantics follow the Bicep documentation: ``==`` on strings is case-sensitive
(learn.microsoft.com/azure/azure-resource-manager/bicep/operators-comparison), ``union`` of arrays keeps the first
occurrence of each value, ``contains`` on an array is an exact match.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.infra import bicep_source


class Unsupported(Exception):
    """The expression uses syntax or a function this evaluator does not know."""


def _union(*arrays: list[Any]) -> list[Any]:
    merged: list[Any] = []
    for array in arrays:
        merged += [item for item in array if item not in merged]
    return merged


def _concat(*parts: Any) -> Any:
    if all(isinstance(part, str) for part in parts):
        return "".join(parts)
    return [item for part in parts for item in part]


def _contains(container: Any, item: Any) -> bool:
    return item in container


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "concat": _concat,
    "contains": _contains,
    "empty": lambda value: len(value) == 0,
    "join": lambda array, separator: separator.join(array),
    "replace": lambda text, old, new: text.replace(old, new),
    "toLower": lambda text: text.lower(),
    "toUpper": lambda text: text.upper(),
    "trim": lambda text: text.strip(),
    "union": _union,
}

_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^'\\]|\\.)*')|(?P<int>\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>==|!=|&&|\|\||[?:!().,\[\]]))"
)
_ESCAPES = {"'": "'", "\\": "\\", "n": "\n", "r": "\r", "t": "\t", "$": "$"}


@dataclass
class Scope:
    """What names mean: parameters (given, else their default), variables (read from the file) and the deployment."""

    text: str
    parameters: Mapping[str, Any]
    cloud: str = "AzureCloud"
    tenant_id: str = "00000000-0000-0000-0000-000000000000"
    _cache: dict[str, Any] = field(default_factory=dict)

    def lookup(self, name: str) -> Any:
        if name in self._cache:
            return self._cache[name]
        value = self.parameters[name] if name in self.parameters else self._declared(name)
        self._cache[name] = value
        return value

    def _declared(self, name: str) -> Any:
        declared = bicep_source.params_in(self.text, "bicep")
        if name in declared:
            default = declared[name].default
            if default is None:
                raise Unsupported(f"parameter {name} has no default and was not given")
            return evaluate(default, self)
        lines = self.text.splitlines()
        for index, line in enumerate(lines):
            match = re.match(rf"^var {name} = (.+)$", line)
            if not match:
                continue
            if match.group(1) == "[":
                items = bicep_source.array_items_in(lines, index)
                return [evaluate(item, self) for item in items]
            return evaluate(match.group(1), self)
        raise Unsupported(f"unknown name {name}")


def evaluate(expression: str, scope: Scope) -> Any:
    """The value of one single-line Bicep expression in ``scope``."""
    parser = _Parser(_tokens(expression), scope)
    value = parser.expression()
    if parser.position != len(parser.tokens):
        raise Unsupported(f"unexpected {parser.tokens[parser.position][1]!r} in {expression!r}")
    return value


def _tokens(expression: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    text = expression.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise Unsupported(f"cannot read {text[position:]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    """Recursive descent over the tokens, evaluating as it parses (both branches of a ``? :``, then picking one)."""

    def __init__(self, tokens: list[tuple[str, str]], scope: Scope) -> None:
        self.tokens = tokens
        self.position = 0
        self.scope = scope

    def peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise Unsupported("the expression ends too early")
        token = self.tokens[self.position]
        if expected is not None and token[1] != expected:
            raise Unsupported(f"expected {expected!r}, found {token[1]!r}")
        self.position += 1
        return token

    def expression(self) -> Any:
        condition = self.logical_or()
        if self.peek() != "?":
            return condition
        self.take("?")
        when_true = self.expression()
        self.take(":")
        when_false = self.expression()
        return when_true if condition else when_false

    def logical_or(self) -> Any:
        value = self.logical_and()
        while self.peek() == "||":
            self.take()
            right = self.logical_and()
            value = bool(value) or bool(right)
        return value

    def logical_and(self) -> Any:
        value = self.equality()
        while self.peek() == "&&":
            self.take()
            right = self.equality()
            value = bool(value) and bool(right)
        return value

    def equality(self) -> Any:
        value = self.unary()
        while self.peek() in ("==", "!="):
            operator = self.take()[1]
            right = self.unary()
            value = (value == right) if operator == "==" else (value != right)
        return value

    def unary(self) -> Any:
        if self.peek() == "!":
            self.take()
            return not self.unary()
        return self.postfix()

    def postfix(self) -> Any:
        value = self.primary()
        while self.peek() == ".":
            self.take()
            member = self.take()[1]
            if not isinstance(value, Mapping) or member not in value:
                raise Unsupported(f"no member {member}")
            value = value[member]
        return value

    def primary(self) -> Any:
        kind, text = self.take()
        if kind == "string":
            return _interpolate(text[1:-1], self.scope)
        if kind == "int":
            return int(text)
        if kind == "op" and text == "(":
            value = self.expression()
            self.take(")")
            return value
        if kind == "op" and text == "[":
            items = []
            while self.peek() != "]":
                items.append(self.expression())
                if self.peek() == ",":
                    self.take()
            self.take("]")
            return items
        if kind == "name":
            if text in ("true", "false"):
                return text == "true"
            if self.peek() == "(":
                return self.call(text)
            return self.scope.lookup(text)
        raise Unsupported(f"unexpected {text!r}")

    def call(self, name: str) -> Any:
        self.take("(")
        arguments = []
        while self.peek() != ")":
            arguments.append(self.expression())
            if self.peek() == ",":
                self.take()
        self.take(")")
        if name == "environment" and not arguments:
            return {"name": self.scope.cloud}
        if name == "tenant" and not arguments:
            return {"tenantId": self.scope.tenant_id}
        if name not in FUNCTIONS:
            raise Unsupported(f"function {name}() is not known to this evaluator")
        return FUNCTIONS[name](*arguments)


def _interpolate(body: str, scope: Scope) -> str:
    """A single-quoted string's value: escapes resolved, ``${expression}`` replaced by the expression's value."""
    out = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body):
            escaped = body[index + 1]
            if escaped not in _ESCAPES:
                raise Unsupported(f"unknown escape \\{escaped}")
            out.append(_ESCAPES[escaped])
            index += 2
        elif body.startswith("${", index):
            depth = 0
            end = index + 2
            while end < len(body) and (body[end] != "}" or depth):
                depth += {"{": 1, "}": -1}.get(body[end], 0)
                end += 1
            value = evaluate(body[index + 2 : end], scope)
            out.append(
                value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
            )
            index = end + 1
        else:
            out.append(char)
            index += 1
    return "".join(out)
