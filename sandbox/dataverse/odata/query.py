"""OData query options as the Dataverse stand-in understands them: Prefer, $select, $orderby, a simple
$filter, sort keys and the paging cookie carried in `$skiptoken` (pad/webapi/query/page-results.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from sandbox.dataverse import errors
from sandbox.dataverse.schema import Table

MAX_PAGE_SIZE = 5000  # protocol §4: default and maximum page size
_LINK_SAFE = ",'()="

Predicate = Callable[[Mapping[str, Any]], bool]
_FILTER_KINDS = {
    "guid": "guid",
    "lookup": "guid",
    "string": "string",
    "memo": "string",
    "choice": "number",
    "bool": "bool",
    "money": "number",
    "int": "number",
    "state": "number",
    "bigint": "number",
    "datetime": "datetime",
}
_EDM_NAMES = {
    "guid": "Edm.Guid",
    "string": "Edm.String",
    "number": "Edm.Decimal",
    "datetime": "Edm.DateTimeOffset",
    "bool": "Edm.Boolean",
    "null": "null",
}
_OPERATOR_KINDS = {"eq": "Equal", "ne": "NotEqual", "gt": "GreaterThan", "ge": "GreaterThanOrEqual"}
_OPERATOR_KINDS |= {"lt": "LessThan", "le": "LessThanOrEqual"}
_STRING_FUNCTIONS: dict[str, Callable[[str, str], bool]] = {
    "contains": lambda value, text: text in value,
    "startswith": lambda value, text: value.startswith(text),
    "endswith": lambda value, text: value.endswith(text),
}


# -- Prefer --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preferences:
    max_page_size: int | None = None
    track_changes: bool = False
    return_representation: bool = False
    continue_on_error: bool = False
    include_annotations: str | None = None  # the odata.include-annotations value, quotes removed


def parse_prefer(header: str) -> Preferences:
    """The `Prefer` header's preferences the stand-in acts on; others are ignored."""
    values: dict[str, str] = {}
    for item in re.findall(r'(?:[^,"]|"[^"]*")+', header or ""):
        name, _, value = item.strip().partition("=")
        values[name.strip().lower()] = value.strip()
    size: int | None = None
    if "odata.maxpagesize" in values:
        try:
            size = int(values["odata.maxpagesize"])
        except ValueError:
            raise errors.bad_query("The odata.maxpagesize preference must be a positive integer.") from None
        if size < 1:
            raise errors.bad_query("The odata.maxpagesize preference must be a positive integer.")
        # page-results.md: "You can't request a page size larger than 5,000"; the sandbox clamps.
        size = min(size, MAX_PAGE_SIZE)
    return Preferences(
        max_page_size=size,
        track_changes="odata.track-changes" in values,
        return_representation=values.get("return") == "representation",
        continue_on_error="odata.continue-on-error" in values,
        include_annotations=values["odata.include-annotations"].strip('"')
        if "odata.include-annotations" in values
        else None,
    )


# -- $select / $orderby / $top -----------------------------------------------------------------------


def parse_select(text: str | None, table: Table) -> tuple[str, ...] | None:
    """The selected columns, or None for all. Raises 0x80060888 for a column the table lacks."""
    if text is None:
        return None
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    for name in names:
        if table.column(name) is None:
            raise errors.unknown_property(name, table.logical_name)
    return names


def parse_orderby(text: str | None, table: Table) -> tuple[tuple[str, bool], ...]:
    """(column, descending) pairs."""
    if not text:
        return ()
    order = []
    for item in text.split(","):
        words = item.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise errors.bad_query(f"The $orderby expression '{item.strip()}' is not valid.")
        if table.column(words[0]) is None:
            raise errors.unknown_property(words[0], table.logical_name)
        order.append((words[0], len(words) == 2 and words[1].lower() == "desc"))
    return tuple(order)


def parse_top(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise errors.bad_query(f"Invalid value '{text}' for $top query option; a positive integer is expected.")
    return int(text)


def table_filter_kinds(table: Table) -> dict[str, str]:
    return {column.name: _FILTER_KINDS[column.kind] for column in table.columns}


# -- sort keys -----------------------------------------------------------------------------------------


class _Descending:
    """Inverts the order of a sort-key part."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __lt__(self, other: _Descending) -> bool:
        return bool(other.key < self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


def _value_key(value: Any) -> tuple[Any, ...]:
    # SQL sorts NULL first ascending; string comparison follows the case-insensitive default collation.
    if value is None:
        return (0,)
    return (1, value.casefold() if isinstance(value, str) else value)


def sort_key(order: tuple[tuple[str, bool], ...], primary_id: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A key function: the $orderby columns, then the primary id so every order is total (paging relies on it)."""

    def key(row: Mapping[str, Any]) -> tuple[Any, ...]:
        parts: list[Any] = []
        for name, descending in order:
            part = _value_key(row.get(name))
            parts.append(_Descending(part) if descending else part)
        parts.append(str(row.get(primary_id) or ""))
        return tuple(parts)

    return key


# -- $filter -------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'(?:[^']|'')*')
    | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(?![\w-])
    | (?P<datetime>\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?)(?![\w-])
    | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?![\w])
    | (?P<name>[A-Za-z_][\w.]*)
    | (?P<punct>[(),/=])
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str


@dataclass(frozen=True)
class _Literal:
    kind: str  # string, guid, number, datetime, bool, null
    value: Any


def _tokenize(text: str) -> list[_Token]:
    tokens = []
    position = 0
    while position < len(text):
        if not text[position:].strip():
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise errors.bad_query(f"Syntax error at position {position} in '{text}'.")
        kind = match.lastgroup or ""
        tokens.append(_Token(kind, match.group(kind)))
        position = match.end()
    return tokens


@dataclass
class _FilterParser:
    """Recursive descent over: or / and / not / ( ) / <property> <op> <literal> / contains|startswith|endswith."""

    text: str
    kinds: Mapping[str, str]
    type_name: str
    tokens: list[_Token] = field(default_factory=list)
    position: int = 0

    def parse(self) -> Predicate:
        self.tokens = _tokenize(self.text)
        if not self.tokens:
            raise errors.bad_query("The $filter expression is empty.")
        predicate = self._or()
        if self.position != len(self.tokens):
            raise errors.bad_query(f"Syntax error: unexpected '{self.tokens[self.position].text}' in '{self.text}'.")
        return predicate

    def _peek(self) -> _Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> _Token:
        token = self._peek()
        if token is None:
            raise errors.bad_query(f"Syntax error: the $filter expression '{self.text}' ends too early.")
        self.position += 1
        return token

    def _expect(self, text: str) -> None:
        token = self._take()
        if token.text != text:
            raise errors.bad_query(f"Syntax error: expected '{text}' but found '{token.text}' in '{self.text}'.")

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token is not None and token.kind == "name" and token.text == word:
            self.position += 1
            return True
        return False

    def _or(self) -> Predicate:
        left = self._and()
        while self._keyword("or"):
            right = self._and()
            left = _either(left, right)
        return left

    def _and(self) -> Predicate:
        left = self._unary()
        while self._keyword("and"):
            right = self._unary()
            left = _both(left, right)
        return left

    def _unary(self) -> Predicate:
        if self._keyword("not"):
            inner = self._unary()
            return lambda row: not inner(row)
        token = self._peek()
        if token is not None and token.text == "(":
            self.position += 1
            inner = self._or()
            self._expect(")")
            return inner
        return self._comparison()

    def _property(self, token: _Token) -> str:
        if token.kind != "name":
            raise errors.bad_query(f"Syntax error: expected a property name but found '{token.text}'.")
        following = self._peek()
        if following is not None and following.text == "/":
            raise errors.bad_query(f"Navigation paths such as '{token.text}/…' are not supported by the sandbox.")
        if token.text not in self.kinds:
            if "." in token.text:
                raise errors.bad_query(f"The query function '{token.text}' is not supported by the sandbox.")
            raise errors.bad_query(
                f"Could not find a property named '{token.text}' on type 'Microsoft.Dynamics.CRM.{self.type_name}'."
            )
        return token.text

    def _literal(self) -> _Literal:
        token = self._take()
        if token.kind == "string":
            return _Literal("string", token.text[1:-1].replace("''", "'"))
        if token.kind == "guid":
            return _Literal("guid", token.text.lower())
        if token.kind == "number":
            number = float(token.text) if any(c in token.text for c in ".eE") else int(token.text)
            return _Literal("number", number)
        if token.kind == "datetime":
            return _Literal("datetime", token.text)
        if token.kind == "name" and token.text in ("true", "false"):
            return _Literal("bool", token.text == "true")
        if token.kind == "name" and token.text == "null":
            return _Literal("null", None)
        raise errors.bad_query(f"Syntax error: expected a literal value but found '{token.text}'.")

    def _comparison(self) -> Predicate:
        token = self._take()
        following = self._peek()
        if token.kind == "name" and token.text.lower() in _STRING_FUNCTIONS:
            return self._function(token.text.lower())
        if token.kind == "name" and following is not None and following.text == "(":
            raise errors.bad_query(f"The query function '{token.text}' is not supported by the sandbox.")
        name = self._property(token)
        operator = self._take()
        if operator.kind != "name" or operator.text not in _OPERATOR_KINDS:
            raise errors.bad_query(f"The operator '{operator.text}' is not supported by the sandbox.")
        literal = self._literal()
        kind = self.kinds[name]
        if literal.kind not in (kind, "null"):
            raise errors.bad_query(
                "A binary operator with incompatible types was detected. Found operand types "
                f"'{_EDM_NAMES.get(kind, kind)}' and '{_EDM_NAMES[literal.kind]}' for operator kind "
                f"'{_OPERATOR_KINDS[operator.text]}'."
            )
        return _compare(name, operator.text, literal)

    def _function(self, function: str) -> Predicate:
        self._expect("(")
        name = self._property(self._take())
        self._expect(",")
        literal = self._literal()
        self._expect(")")
        if self.kinds[name] != "string" or literal.kind != "string":
            raise errors.bad_query(f"The function '{function}' takes a string property and a string literal.")
        test = _STRING_FUNCTIONS[function]
        text = str(literal.value).casefold()

        def predicate(row: Mapping[str, Any]) -> bool:
            value = row.get(name)
            return isinstance(value, str) and test(value.casefold(), text)

        return predicate


def _either(left: Predicate, right: Predicate) -> Predicate:
    return lambda row: left(row) or right(row)


def _both(left: Predicate, right: Predicate) -> Predicate:
    return lambda row: left(row) and right(row)


def _normalize(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _compare(name: str, operator: str, literal: _Literal) -> Predicate:
    expected = _normalize(literal.value)
    if operator in ("eq", "ne"):
        negate = operator == "ne"

        def equality(row: Mapping[str, Any]) -> bool:
            return bool(_normalize(row.get(name)) == expected) != negate

        return equality
    if expected is None:
        return lambda row: False
    ordering: dict[str, Callable[[Any, Any], bool]] = {
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
    }
    test = ordering[operator]

    def compare(row: Mapping[str, Any]) -> bool:
        value = row.get(name)
        return value is not None and test(_normalize(value), expected)

    return compare


def parse_filter(text: str | None, kinds: Mapping[str, str], type_name: str) -> Predicate:
    """A row predicate for `$filter`. String comparisons ignore case, as Dataverse's collation does.

    Raises 0x80060888 for syntax the sandbox does not support, naming it.
    """
    if text is None:
        return lambda row: True
    return _FilterParser(text, kinds, type_name).parse()


# -- paging cookie -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PagingCookie:
    """Where the next page starts, in the shape Dataverse uses (page-results.md):

    `<cookie pagenumber="2" pagingcookie="<url-encoded inner cookie>" istracking="False" />`, whose inner cookie
    names the last (and first) row of the page served: `<cookie page="1"><accountid last="{…}" first="{…}" />`.
    The sandbox adds `$orderby` column values, and for change tracking the versions it pages between.
    """

    page: int  # the page this cookie leads to
    last: dict[str, Any]  # column -> value of the last row served: $orderby columns, then the primary id
    first_id: str | None = None
    tracking: bool = False
    since: int | None = None  # change tracking: the version a full sync or delta started from
    upto: int | None = None  # delta paging: the newest version the delta includes

    def encode(self, primary_id: str) -> str:
        attributes = f' page="{self.page - 1}"'
        if self.since is not None:
            attributes += f' since="{self.since}"'
        if self.upto is not None:
            attributes += f' upto="{self.upto}"'
        elements = []
        for name, value in self.last.items():
            if name == primary_id:
                first = f' first="{{{self.first_id.upper()}}}"' if self.first_id else ""
                elements.append(f'<{name} last="{{{str(value).upper()}}}"{first} />')
            else:
                elements.append(f'<{name} last="{quote(json.dumps(value), safe="")}" />')
        inner = f"<cookie{attributes}>{''.join(elements)}</cookie>"
        return (
            f'<cookie pagenumber="{self.page}" pagingcookie="{quote(inner, safe="")}" '
            f'istracking="{"True" if self.tracking else "False"}" />'
        )

    @classmethod
    def decode(cls, text: str, primary_id: str) -> PagingCookie:
        """Raises 0x80060888 when `text` is not a cookie this sandbox issued."""
        outer = re.fullmatch(
            r'\s*<cookie pagenumber="(\d+)" pagingcookie="([^"]*)" istracking="(True|False)"\s*/>\s*', text
        )
        if outer is None:
            raise errors.bad_query("The $skiptoken value is not a valid paging cookie.")
        inner = unquote(outer.group(2))
        head = re.match(r'<cookie page="\d+"(?: since="(\d+)")?(?: upto="(\d+)")?>', inner)
        if head is None or not inner.endswith("</cookie>"):
            raise errors.bad_query("The $skiptoken value is not a valid paging cookie.")
        last: dict[str, Any] = {}
        first_id = None
        body = inner[head.end() : -len("</cookie>")]
        for name, value, first in re.findall(r'<(\w+) last="([^"]*)"(?: first="([^"]*)")? />', body):
            try:
                if name == primary_id:
                    last[name] = value.strip("{}").lower()
                    first_id = first.strip("{}").lower() or None
                else:
                    last[name] = json.loads(unquote(value))
            except ValueError:
                raise errors.bad_query("The $skiptoken value is not a valid paging cookie.") from None
        return cls(
            page=int(outer.group(1)),
            last=last,
            first_id=first_id,
            tracking=outer.group(3) == "True",
            since=int(head.group(1)) if head.group(1) else None,
            upto=int(head.group(2)) if head.group(2) else None,
        )


def build_link(collection_url: str, params: list[tuple[str, str]]) -> str:
    """`collection_url?k=v&…` with values percent-encoded the way Dataverse's links are (spaces as %20)."""
    if not params:
        return collection_url
    return collection_url + "?" + "&".join(f"{name}={quote(value, safe=_LINK_SAFE)}" for name, value in params)
