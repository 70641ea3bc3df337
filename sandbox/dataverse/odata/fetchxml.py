"""FetchXML queries on the Dataverse stand-in: `GET <entity set>?fetchXml=<url-encoded FetchXML>`
(pad/fetchxml/overview.md, pad/webapi/use-fetchxml-web-api.md) in the basic shapes an integration writes:

- `<fetch>` with `count` (page size, at most 5,000), `page`, `paging-cookie` and `top`;
- one `<entity name="…">` matching the entity set, `<attribute name="…"/>` or `<all-attributes/>`;
- `<filter type="and|or">` (nested) of `<condition attribute operator value>` with eq, ne, gt, ge, lt, le,
  null, not-null, like, not-like, begins-with, ends-with and in (`<value>` children);
- `<order attribute="…" descending="true|false"/>`.

Paging follows pad/fetchxml/page-results.md: when `Prefer: odata.include-annotations` asks for them the page
carries `@Microsoft.Dynamics.CRM.morerecords` and `@Microsoft.Dynamics.CRM.fetchxmlpagingcookie`, an outer
`<cookie pagenumber="N" pagingcookie="…" istracking="False" />` whose inner cookie is URL-encoded twice; the
client puts the decoded inner cookie into `paging-cookie` and `page` for the next page. Without a cookie, `page`
pages by position. link-entity, aggregates and other elements are refused by name (400 0x80060888).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote
from xml.etree import ElementTree

from sandbox.dataverse import errors
from sandbox.dataverse.odata.query import MAX_PAGE_SIZE, sort_key
from sandbox.dataverse.schema import Column, Table

Predicate = Callable[[Mapping[str, Any]], bool]
_OPERATORS = ("eq", "ne", "gt", "ge", "lt", "le", "null", "not-null", "like", "not-like", "begins-with")
_OPERATORS += ("ends-with", "in")


@dataclass(frozen=True)
class FetchQuery:
    table: Table
    columns: tuple[str, ...] | None  # Web API column names, None for all-attributes
    predicate: Predicate
    order: tuple[tuple[str, bool], ...]
    count: int
    page: int
    top: int | None
    cookie: dict[str, Any] | None  # column -> last value served, from paging-cookie


def _column(table: Table, attribute: str | None) -> Column:
    column = next((c for c in table.columns if c.attribute == attribute), None) if attribute else None
    if column is None:
        raise errors.bad_query(f"'{table.logical_name}' entity doesn't contain attribute with Name = '{attribute}'.")
    return column


def _typed(column: Column, text: str) -> Any:
    if column.kind in ("int", "bigint", "choice", "state"):
        try:
            return int(text)
        except ValueError:
            raise errors.bad_query(f"The value '{text}' is not valid for attribute {column.attribute}.") from None
    if column.kind == "money":
        try:
            return float(text)
        except ValueError:
            raise errors.bad_query(f"The value '{text}' is not valid for attribute {column.attribute}.") from None
    if column.kind == "bool":
        return text.strip().lower() in ("1", "true")
    if column.kind in ("guid", "lookup"):
        return text.strip("{}").lower()
    return text


def _fold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _like(pattern: str) -> re.Pattern[str]:
    parts = [".*" if part == "%" else "." if part == "_" else re.escape(part) for part in re.split(r"([%_])", pattern)]
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _condition(table: Table, element: ElementTree.Element) -> Predicate:
    column = _column(table, element.get("attribute"))
    name = column.name
    operator = element.get("operator", "")
    if operator not in _OPERATORS:
        raise errors.bad_query(f"The condition operator '{operator}' is not supported by the sandbox.")
    if operator == "null":
        return lambda row: row.get(name) is None
    if operator == "not-null":
        return lambda row: row.get(name) is not None
    if operator == "in":
        values = {_fold(_typed(column, value.text or "")) for value in element.findall("value")}
        return lambda row: _fold(row.get(name)) in values
    raw = element.get("value")
    if raw is None:
        raise errors.bad_query(f"The condition on '{column.attribute}' with operator '{operator}' needs a value.")
    if operator in ("like", "not-like", "begins-with", "ends-with"):
        pattern = {"begins-with": f"{raw}%", "ends-with": f"%{raw}"}.get(operator, raw)
        regex, negate = _like(pattern), operator == "not-like"
        return lambda row: isinstance(row.get(name), str) and bool(regex.fullmatch(row[name])) != negate
    expected = _fold(_typed(column, raw))
    tests: dict[str, Callable[[Any, Any], bool]] = {
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
    }
    test = tests[operator]
    if operator == "ne":
        return lambda row: row.get(name) is None or test(_fold(row.get(name)), expected)
    return lambda row: row.get(name) is not None and test(_fold(row.get(name)), expected)


def _filter(table: Table, element: ElementTree.Element) -> Predicate:
    kind = element.get("type", "and")
    if kind not in ("and", "or"):
        raise errors.bad_query(f"The filter type '{kind}' is not valid; use 'and' or 'or'.")
    parts: list[Predicate] = []
    for child in element:
        if child.tag == "condition":
            parts.append(_condition(table, child))
        elif child.tag == "filter":
            parts.append(_filter(table, child))
        else:
            raise errors.bad_query(f"The element '{child.tag}' inside a filter is not supported by the sandbox.")
    if kind == "and":
        return lambda row: all(part(row) for part in parts)
    return lambda row: any(part(row) for part in parts)


def _number(element: ElementTree.Element, name: str, default: int | None) -> int | None:
    text = element.get(name)
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise errors.bad_query(f"The fetch attribute '{name}' must be a positive integer, not '{text}'.")
    return int(text)


def decode_cookie(text: str, table: Table) -> dict[str, Any]:
    """The last values an inner paging cookie names: `<cookie page="1"><accountid last="{…}" first="{…}" />…`."""
    if not re.fullmatch(r'\s*<cookie page="\d+"[^>]*>.*</cookie>\s*', text, re.DOTALL):
        raise errors.bad_query("The paging-cookie is not a paging cookie the sandbox issued.")
    last: dict[str, Any] = {}
    for name, value in re.findall(r'<(\w+) last="([^"]*)"', text):
        if name == table.primary_id:
            last[name] = value.strip("{}").lower()
        else:
            try:
                last[name] = json.loads(unquote(value))
            except ValueError:
                raise errors.bad_query("The paging-cookie is not a paging cookie the sandbox issued.") from None
    if table.primary_id not in last:
        raise errors.bad_query("The paging-cookie does not name the last row of a page.")
    return last


def encode_cookie(page: int, last: dict[str, Any], first_id: str, primary_id: str) -> str:
    """The `@Microsoft.Dynamics.CRM.fetchxmlpagingcookie` value leading to page `page`."""
    elements = []
    for name, value in last.items():
        if name == primary_id:
            elements.append(f'<{name} last="{{{str(value).upper()}}}" first="{{{first_id.upper()}}}" />')
        else:
            elements.append(f'<{name} last="{quote(json.dumps(value), safe="")}" />')
    inner = f'<cookie page="{page - 1}">{"".join(elements)}</cookie>'
    return f'<cookie pagenumber="{page}" pagingcookie="{quote(quote(inner, safe=""), safe="")}" istracking="False" />'


def parse_fetch(text: str, table: Table) -> FetchQuery:
    """Raises DataverseError 400 for FetchXML that is malformed, names another table or uses what the sandbox
    does not support."""
    try:
        fetch = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise errors.bad_query(f"The FetchXML is not well-formed XML: {exc}.") from None
    if fetch.tag != "fetch":
        raise errors.bad_query("The FetchXML must have a <fetch> root element.")
    for unsupported in ("aggregate", "distinct"):
        if fetch.get(unsupported, "false").lower() == "true":
            raise errors.bad_query(f"The fetch attribute '{unsupported}' is not supported by the sandbox.")
    entities = fetch.findall("entity")
    if len(entities) != 1 or entities[0].get("name") != table.logical_name:
        raise errors.bad_query(
            f"The FetchXML entity must be '{table.logical_name}', the table of the entity set {table.entity_set}."
        )
    columns: list[str] | None = []
    predicates: list[Predicate] = []
    order: list[tuple[str, bool]] = []
    for element in entities[0]:
        if element.tag == "attribute":
            if columns is not None:
                columns.append(_column(table, element.get("name")).name)
        elif element.tag == "all-attributes":
            columns = None
        elif element.tag == "filter":
            predicates.append(_filter(table, element))
        elif element.tag == "order":
            descending = element.get("descending", "false").lower() == "true"
            order.append((_column(table, element.get("attribute")).name, descending))
        else:
            raise errors.bad_query(f"The FetchXML element '{element.tag}' is not supported by the sandbox.")
    count = _number(fetch, "count", MAX_PAGE_SIZE) or MAX_PAGE_SIZE
    if count > MAX_PAGE_SIZE:
        raise errors.bad_query(f"The fetch count {count} exceeds the maximum page size of {MAX_PAGE_SIZE}.")
    cookie_text = fetch.get("paging-cookie")
    return FetchQuery(
        table=table,
        columns=tuple(dict.fromkeys(columns)) if columns is not None else None,
        predicate=lambda row: all(predicate(row) for predicate in predicates),
        order=tuple(order),
        count=count,
        page=_number(fetch, "page", 1) or 1,
        top=_number(fetch, "top", None),
        cookie=decode_cookie(cookie_text, table) if cookie_text else None,
    )


@dataclass(frozen=True)
class FetchPage:
    rows: list[Any]
    more: bool
    cookie: str | None


def fetch_page(query: FetchQuery, rows: list[Any]) -> FetchPage:
    """One page of `rows` (every row the caller may read) for the query: filtered, ordered, then by cookie or
    page number."""
    table = query.table
    key = sort_key(query.order, table.primary_id)
    matching = sorted((row for row in rows if query.predicate(row)), key=key)
    if query.top is not None:
        return FetchPage(matching[: query.top], False, None)
    if query.cookie is not None:
        start = bisect.bisect_right(matching, key(query.cookie), key=key)
    else:
        start = (query.page - 1) * query.count
    page = matching[start : start + query.count]
    more = start + query.count < len(matching)
    if not more or not page:
        return FetchPage(page, more, None)
    last = {name: page[-1].get(name) for name, _ in query.order} | {table.primary_id: page[-1][table.primary_id]}
    return FetchPage(page, True, encode_cookie(query.page + 1, last, page[0][table.primary_id], table.primary_id))
