"""Hypothesis strategies for hostile HTTP input: text, headers, query strings, form and JSON bodies, bearer tokens
and Dataverse webhook bodies, each shaped to get past the first check and reach the parser behind it.

Query strings, header values and form fields reach the worker as valid Unicode (the host decodes them and gRPC
strings are UTF-8), so lone surrogates are generated only where they can really arrive: inside JSON (``\\ud800``
escapes). Invalid UTF-8 arrives as raw bodies and as percent-escapes in form bodies.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any
from urllib.parse import quote, urlencode

from hypothesis import strategies as st

from tests.unit import webhook_samples as samples

# Replaces escaped input when a page is checked for reflected input; never generated (see excluded_characters).
SENTINEL = "\U0010fffd"

_chars = st.characters(exclude_categories=("Cs",), exclude_characters=(SENTINEL,))

SPICY = (
    "<",
    ">",
    '"',
    "'",
    "&",
    "`",
    "\r\n",
    "\n",
    "\r",
    "\x00",
    "\x0b",
    "\x1b",
    "\x7f",
    "\x85",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\u202e",
    "\u200b",
    "\ufffd",
    "\ufffe",
    "\uffff",
    "\U0001f600",
    "\U000e0041",
    "\u0130",
    "\u212a",
    "\uff1c",
    "\uff02",
    "%",
    "%0d%0a",
    "%00",
    "%ED%A0%80",
    "%C0%BC",
    "%zz",
    "+",
    ";",
    "=",
    "&&",
    "..",
    "../",
    "/",
    "\\",
    "#",
    "?",
    "@",
    ":",
    "[",
    "]",
    "{",
    "}",
    "${jndi:x}",
    "{{7*7}}",
    "%s%n",
    "\t",
    " ",
)

PAYLOADS = (
    '"><script>alert(1)</script>',
    "'><img src=x onerror=alert(2)>",
    "' onmouseover='alert(3)",
    '" autofocus onfocus="alert(4)',
    "</textarea></title><svg/onload=alert(5)>",
    "<!--",
    "]]>",
    "javascript:alert(6)",
    "\r\nSet-Cookie: evil=1",
    "x\r\nLocation: https://evil.example",
    "%0d%0aX-Injected:%201",
    "https://evil.example/",
    "//evil.example",
    'Traceback (most recent call last):\n  File "x.py", line 1',
    "\u202egnp.exe",
    "A" * 300,
    "é" * 100,
    "\U0001f600" * 50,
)

_short = st.text(_chars, max_size=12)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked with the given weights (st.one_of merges identical branches, so repeating a
    branch there does not weigh it)."""
    indices = [index for index, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(indices).flatmap(lambda index: choices[index][1])


def _repeat(piece: str, times: int) -> str:
    return piece * times


hostile_text: st.SearchStrategy[str] = st.one_of(
    st.text(_chars, max_size=40),
    st.sampled_from(PAYLOADS),
    st.lists(st.one_of(st.sampled_from(SPICY), st.sampled_from(PAYLOADS), _short), max_size=6).map("".join),
    # huge strings, cheaply: one drawn piece repeated
    st.builds(
        _repeat,
        st.one_of(st.sampled_from(SPICY + PAYLOADS[:4]), st.text(_chars, min_size=1, max_size=8)),
        st.integers(50, 5_000),
    ),
)

# Text for JSON bodies and token claims may hold lone surrogates: JSON's \ud800 escapes decode to them.
json_text: st.SearchStrategy[str] = st.one_of(
    hostile_text,
    st.sampled_from(("\ud800", "\udfff", "a\udc80b", "\ud83d", "\udead\ubeef")),
)

guid_like: st.SearchStrategy[str] = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: str(u) + "\n"),
    st.uuids().map(lambda u: " " + str(u)),
    st.just("00000000-0000-0000-0000-000000000000"),
    st.just("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeeZ"),
)


class RawJson:
    """A JSON literal Python's encoder would not write (1e400, a 5,000-digit number) or writes non-standardly."""

    def __init__(self, text: str) -> None:
        self.text = text


RAW_LITERALS = ("1e400", "-1e400", "1E+999999", "NaN", "Infinity", "-Infinity", "1" * 5000, "-0", "0.0000001e-999")

MONEY_TYPE = "Money:http://schemas.microsoft.com/xrm/2011/Contracts"
# Values that broke a parser once (or would break a naive one): weighed in so the default profile meets them.
NASTY_JSON = (
    RawJson("1e400"),
    RawJson("-Infinity"),
    RawJson("NaN"),
    "\ud800",
    "/Date(99999999999999999999)/",
    "/Date(-99999999999999)/",
    "/Date(" + "9" * 5000 + ")/",
    {"__type": MONEY_TYPE, "Value": "abc"},
    {"__type": MONEY_TYPE, "Value": None},
    10**30,
    -(2**63),
    1e308,
    "",
    [],
    {},
    [[[[[[[[[[[[1]]]]]]]]]]]],
    "a" * 10_000,
)

_json_tree: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(10**40), max_value=10**40),
        st.floats(),
        json_text,
        st.sampled_from(RAW_LITERALS).map(RawJson),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(json_text, st.sampled_from(("key", "value", "__type", "Id", "Value"))), children, max_size=4
        ),
    ),
    max_leaves=12,
)

json_values: st.SearchStrategy[Any] = weighted((4, _json_tree), (1, st.sampled_from(NASTY_JSON).map(copy.deepcopy)))


def dump_json(value: Any) -> str:
    """json.dumps that writes RawJson literals verbatim (placeholders first, swapped in after encoding)."""
    raws: list[str] = []

    def swap(node: Any) -> Any:
        if isinstance(node, RawJson):
            raws.append(node.text)
            return f"\x01raw{len(raws) - 1}\x01"
        if isinstance(node, list):
            return [swap(item) for item in node]
        if isinstance(node, dict):
            return {key: swap(item) for key, item in node.items()}
        return node

    text = json.dumps(swap(value))
    for index, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x01raw{index}\x01"), raw)
    return text


def _nest(kind: str, depth: int) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"a":[' * depth + b"null" + b"]}" * depth


deep_json: st.SearchStrategy[bytes] = st.builds(
    _nest, st.sampled_from(("list", "object", "mixed")), st.integers(1, 60_000)
)

INVALID_UTF8 = (
    b"\xff",
    b"\xfe\xff",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
    b"\x80",
    b"\xef\xbb\xbf",
)

invalid_utf8: st.SearchStrategy[bytes] = st.lists(
    st.one_of(st.sampled_from(INVALID_UTF8), st.binary(max_size=8), _short.map(str.encode)), min_size=1, max_size=6
).map(b"".join)


def json_bytes(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Serialised JSON in the encodings a sender might use (json.loads sniffs UTF-8/16/32 and a UTF-8 BOM)."""
    return st.builds(
        lambda value, codec: dump_json(value).encode(codec, errors="surrogatepass"),
        values,
        st.sampled_from(("utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-32-le")),
    )


# -- requests -------------------------------------------------------------------------------------------------

CONTENT_TYPES = (
    "application/json",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=iso-8859-1",
    "multipart/form-data; boundary=----x",
    "text/html; charset=utf-16",
    "application/json; charset=utf-7",
    "*/*",
    "",
)

request_ids: st.SearchStrategy[str] = weighted(
    (2, st.uuids().map(str)),
    (2, st.sampled_from(("abcdefgh\n", "abcdefgh\r\nX-Injected: 1", "abcdefg", "a" * 65, "<script>x</script>"))),
    (1, st.from_regex(r"[A-Za-z0-9-]{0,70}", fullmatch=True)),
    (1, hostile_text),
)

_COMMON_HEADERS = (
    "content-type",
    "cookie",
    "authorization",
    "x-ms-client-request-id",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-host",
    "host",
    "origin",
    "referer",
    "accept",
    "accept-language",
    "user-agent",
    "x-s2s-webhook-secret",
    "x-ms-dynamics-organization",
    "x-ms-dynamics-msg-size-exceeded",
    "transfer-encoding",
    "content-length",
)

header_names: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(_COMMON_HEADERS),
    st.sampled_from(_COMMON_HEADERS).map(str.upper),
    st.from_regex(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}", fullmatch=True),
    hostile_text,
)


def headers(**specific: st.SearchStrategy[str | None]) -> st.SearchStrategy[dict[str, str]]:
    """Random headers, plus each named header (underscores become dashes) drawn from its strategy or left out."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, str]:
        result: dict[str, str] = draw(st.dictionaries(header_names, hostile_text, max_size=4))
        result["content-type"] = draw(st.one_of(st.sampled_from(CONTENT_TYPES), hostile_text))
        if draw(st.integers(1, 3)) > 1:
            result[draw(st.sampled_from(("x-ms-client-request-id", "x-request-id")))] = draw(request_ids)
        for name, strategy in specific.items():
            value = draw(strategy)
            if value is not None:
                result[name.replace("_", "-")] = value
        return result

    return build()


def query(**specific: st.SearchStrategy[str | None]) -> st.SearchStrategy[dict[str, str]]:
    """Random query parameters plus the named ones; the host has already percent-decoded every value."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, str]:
        result: dict[str, str] = draw(st.dictionaries(hostile_text, hostile_text, max_size=4))
        for name, strategy in specific.items():
            value = draw(strategy)
            if value is not None:
                result[name] = value
        return result

    return build()


# -- form bodies ----------------------------------------------------------------------------------------------


def _raw_pair(key: str, value: str, encode: bool) -> str:
    if encode:
        return f"{quote(key, safe='')}={quote(value, safe='')}"
    return f"{key}={value}"


@st.composite
def form_bodies(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[str]]) -> bytes:
    """application/x-www-form-urlencoded bodies: well formed, hand-joined with odd separators and half-encoded
    values, too many fields, oversized, or not a form at all."""
    kind = draw(st.sampled_from(("encoded", "encoded", "encoded", "raw", "many", "huge", "binary", "invalid_utf8")))
    if kind in ("encoded", "raw"):
        pairs = [(name, draw(values)) for name, values in fields.items() if draw(st.integers(0, 4))]
        pairs += draw(
            st.lists(
                st.tuples(weighted((1, st.sampled_from(tuple(fields))), (3, hostile_text)), hostile_text), max_size=3
            )
        )
        pairs = draw(st.permutations(pairs))
        if kind == "encoded":
            return urlencode(pairs).encode()
        separator = draw(st.sampled_from(("&", "&&", ";", "&amp;", "\n")))
        text = separator.join(_raw_pair(k, v, draw(st.booleans())) for k, v in pairs)
        return text.encode("utf-8", errors="surrogatepass")
    if kind == "many":
        count = draw(st.integers(11, 200))
        return "&".join(f"f{i}=x" for i in range(count)).encode()
    if kind == "huge":
        name = draw(st.sampled_from(tuple(fields)))
        return f"{name}=".encode() + b"A" * draw(st.integers(4_000, 70_000))
    if kind == "binary":
        return draw(st.binary(max_size=300))
    name = draw(st.sampled_from(tuple(fields)))
    return f"{name}=".encode() + draw(invalid_utf8)


# -- org URLs -------------------------------------------------------------------------------------------------


@st.composite
def org_urls(draw: st.DrawFn, hosts: tuple[str, ...]) -> str:
    """A third valid org URLs (so the flow goes on past validation), the rest almost valid: a known host, then a
    few mutations of the kind an attacker or a typo makes, or just hostile text."""
    roll = draw(st.integers(0, 9))
    if roll == 0:
        return draw(hostile_text)
    if roll <= 3:
        return "https://" + draw(st.sampled_from(hosts)) + draw(st.sampled_from(("", "", "/", ":443", " ")))
    scheme = draw(st.sampled_from(("https://", "https://", "HTTPS://", "http://", "https:/", "https:\\\\", "//", "")))
    host = draw(st.sampled_from(hosts))
    mutations = draw(
        st.lists(
            st.sampled_from(
                (
                    "userinfo",
                    "port",
                    "port443",
                    "path",
                    "slash",
                    "query",
                    "fragment",
                    "upper",
                    "trailing_dot",
                    "space",
                    "control",
                    "idn",
                    "fullwidth_dot",
                    "brackets",
                    "percent",
                    "backslash",
                    "spicy",
                    "suffix_only",
                    "long_label",
                )
            ),
            max_size=3,
        )
    )
    prefix, suffix = "", ""
    for mutation in mutations:
        if mutation == "userinfo":
            prefix = draw(st.sampled_from(("user@", "user:pw@", "evil.example@", "@")))
        elif mutation == "port":
            suffix += draw(st.sampled_from((":8443", ":0", ":99999", ":-1", ":abc", ":")))
        elif mutation == "port443":
            suffix += ":443"
        elif mutation == "path":
            suffix += draw(st.sampled_from(("/api/data/v9.2", "/..", "/%2e%2e", "/main.aspx")))
        elif mutation == "slash":
            suffix += "/"
        elif mutation == "query":
            suffix += draw(st.sampled_from(("?", "?x=1", "?redirect=https://evil.example")))
        elif mutation == "fragment":
            suffix += draw(st.sampled_from(("#", "#frag")))
        elif mutation == "upper":
            host = host.upper()
        elif mutation == "trailing_dot":
            host += "."
        elif mutation == "space":
            suffix += draw(st.sampled_from((" ", "\t", "\u00a0", "\u3000")))
        elif mutation == "control":
            host = host.replace(".", draw(st.sampled_from(("\x00.", ".\r\n", "\x1b."))), 1)
        elif mutation == "idn":
            host = host.replace("o", "\u043e", 1)  # Cyrillic o
        elif mutation == "fullwidth_dot":
            host = host.replace(".", "\uff0e", 1)
        elif mutation == "brackets":
            host = draw(st.sampled_from(("[", "[::1]", "[" + host + "]", host + "]")))
        elif mutation == "percent":
            host = host.replace(".", "%2e", 1)
        elif mutation == "backslash":
            suffix += "\\@evil.example"
        elif mutation == "spicy":
            suffix += draw(st.sampled_from(SPICY))
        elif mutation == "suffix_only":
            host = host.split(".", 1)[-1]
        elif mutation == "long_label":
            host = "a" * draw(st.integers(62, 300)) + "." + host.split(".", 1)[-1]
    return f"{scheme}{prefix}{host}{suffix}"


# -- bearer tokens --------------------------------------------------------------------------------------------


def segment(value: Any) -> str:
    """One base64url JWT segment: JSON for values, raw for bytes."""
    raw = value if isinstance(value, bytes) else dump_json(value).encode("utf-8", errors="surrogatepass")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claim_sets(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with some claims dropped and some replaced by values of the wrong type or content."""

    wrong_types = st.sampled_from((5, 1.5, True, None, [], {}, ["access_as_user"], "x", [5, None], {"a": 1}))
    names = weighted((4, st.sampled_from([*sorted(base), "roles", "upn", "unique_name"])), (1, json_text))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        claims = dict(base)
        for name in draw(st.lists(st.sampled_from(sorted(base)), max_size=2, unique=True)):
            del claims[name]
        for name in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
            claims[name] = draw(weighted((1, wrong_types), (1, st.sampled_from(NASTY_JSON)), (2, json_values)))
        return claims

    return build()


@st.composite
def forged_tokens(draw: st.DrawFn) -> str:
    """Token-shaped text no key of ours signed: junk segments, alg none, wrong segment counts, nested JSON."""
    header = draw(
        st.one_of(
            st.fixed_dictionaries(
                {
                    "alg": st.sampled_from(("RS256", "none", "HS256", "ES256", "RS512", "")),
                    "kid": st.one_of(st.just("good"), json_values),
                }
            ),
            json_values,
            deep_json,
            invalid_utf8,
        )
    )
    payload = draw(st.one_of(json_values, deep_json, invalid_utf8, st.just({"tid": None})))
    signature = draw(st.one_of(st.just(b""), st.binary(max_size=64)))
    parts = [segment(header), segment(payload), segment(signature)]
    shape = draw(st.sampled_from(("jwt", "jwt", "two", "four", "padded", "spaced")))
    if shape == "two":
        parts = parts[:2]
    elif shape == "four":
        parts.append(segment(b"extra"))
    elif shape == "padded":
        parts = [p + "==" for p in parts]
    elif shape == "spaced":
        parts[1] = (
            parts[1][: len(parts[1]) // 2]
            + draw(st.sampled_from((" ", "\n", "+", "/", "%3D")))
            + parts[1][len(parts[1]) // 2 :]
        )
    return ".".join(parts)


@st.composite
def authorization_values(draw: st.DrawFn, token: str) -> str | None:
    """Authorization header values: half the time ``Bearer <token>``; else absent, junk, other schemes, or
    another wrapping of the token."""
    kind = draw(st.integers(0, 9))
    if kind <= 4:
        return "Bearer " + token
    if kind == 5:
        return None
    if kind == 6:
        return draw(hostile_text)
    if kind == 7:
        return "Bearer " + "a" * draw(st.integers(16_000, 40_000))
    scheme = draw(st.sampled_from(("bearer ", "Bearer  ", "Bearer\t", "Basic ", "", "Bearer", "BEARER ")))
    trailer = draw(st.sampled_from(("", " ", "\r\n", ", Bearer x", "\x00", " x")))
    return scheme + token + trailer


# -- Dataverse webhook bodies ---------------------------------------------------------------------------------

_TYPES = {
    "money": MONEY_TYPE,
    "reference": samples.REFERENCE,
    "option": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts",
    "entity": samples.ENTITY,
}

dates: st.SearchStrategy[str] = st.builds(
    lambda sign, digits, zone: f"/Date({sign}{digits}{zone})/",
    st.sampled_from(("", "-")),
    st.one_of(st.integers(0, 10**20).map(str), st.integers(4_000, 6_000).map(lambda n: "9" * n)),
    st.sampled_from(("", "+0000", "-0700", "+9999")),
)

typed_values: st.SearchStrategy[Any] = st.one_of(
    st.builds(lambda v: {"__type": _TYPES["money"], "Value": v}, json_values),
    st.builds(
        lambda i, n: {"__type": _TYPES["reference"], "Id": i, "LogicalName": n, "Name": n}, json_values, json_values
    ),
    st.builds(lambda v: {"__type": _TYPES["option"], "Value": v}, json_values),
    st.builds(
        lambda i, a: {"__type": _TYPES["entity"], "Id": i, "LogicalName": "x", "Attributes": a},
        json_values,
        json_values,
    ),
    st.builds(lambda t, v: {"__type": t, "Value": v}, json_text, json_values),
    dates,
    json_values,
)

bag_entries: st.SearchStrategy[Any] = st.one_of(
    st.builds(lambda k, v: {"key": k, "value": v}, json_values, typed_values),
    json_values,
)

_CONTEXT_FIELDS = (
    "MessageName",
    "PrimaryEntityName",
    "PrimaryEntityId",
    "OrganizationId",
    "OrganizationName",
    "CorrelationId",
    "OperationId",
    "RequestId",
    "Stage",
    "Mode",
    "Depth",
    "InitiatingUserId",
    "InitiatingUserAzureActiveDirectoryObjectId",
    "UserAzureActiveDirectoryObjectId",
    "BusinessUnitId",
    "OperationCreatedOn",
    "InputParameters",
    "OutputParameters",
    "SharedVariables",
    "PreEntityImages",
    "PostEntityImages",
    "ParentContext",
)


@st.composite
def remote_contexts(draw: st.DrawFn) -> Any:
    """The sample RemoteExecutionContext (with the known org's id): half the time with only hostile text in
    places a real delivery may hold any text (so it is stored and acknowledged), otherwise with some fields dropped
    or replaced by hostile values, odd attributes added to the Target, and sometimes a chain of ParentContexts."""
    body: dict[str, Any] = samples.update_contact()
    if draw(st.booleans()):
        for name in draw(
            st.lists(st.sampled_from(("MessageName", "PrimaryEntityName", "OrganizationName")), max_size=3, unique=True)
        ):
            body[name] = draw(json_text.filter(bool))
        body["InputParameters"][0]["value"]["Attributes"].append({"key": draw(json_text), "value": draw(json_text)})
        return body
    for name in draw(st.lists(st.sampled_from(_CONTEXT_FIELDS), min_size=1, max_size=4, unique=True)):
        if draw(st.integers(1, 4)) == 1:
            body.pop(name, None)
        else:
            body[name] = draw(
                weighted(
                    (2, st.sampled_from(NASTY_JSON).map(copy.deepcopy)),
                    (1, st.one_of(json_values, typed_values, st.lists(bag_entries, max_size=3))),
                    (1, st.one_of(dates, guid_like, json_text)),
                )
            )
    target = body.get("InputParameters")
    if isinstance(target, list) and target and isinstance(target[0], dict) and isinstance(target[0].get("value"), dict):
        attributes = target[0]["value"].get("Attributes")
        if isinstance(attributes, list):
            attributes.extend(draw(st.lists(bag_entries, max_size=3)))
    # A chain of parents, each a copy of this context: linear in size, deeper than the parser's limit at the top.
    parentless = {key: value for key, value in body.items() if key != "ParentContext"}
    for _ in range(draw(st.integers(0, 12))):
        body = {**parentless, "ParentContext": body}
    return body


_odd_webhook_bodies: st.SearchStrategy[bytes] = st.one_of(
    json_bytes(remote_contexts()),
    json_bytes(json_values),
    deep_json,
    st.builds(lambda d: b'{"MessageName":"Update","InputParameters":' + d + b"}", deep_json),
    invalid_utf8,
    st.binary(max_size=200),
    st.builds(lambda v: json.dumps(samples.update_contact()).encode()[:-1] + v, invalid_utf8),
    st.builds(lambda n: b" " * n + b"{}", st.integers(60_000, 80_000)),
)


@st.composite
def webhook_bodies(draw: st.DrawFn) -> bytes:
    """Half UTF-8 RemoteExecutionContexts as above, half anything else a sender could post."""
    if draw(st.booleans()):
        # json.loads(bytes) would also read UTF-16/32: a receiver must not take what its store cannot keep
        codec = draw(st.sampled_from(("utf-8", "utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-32-le")))
        return dump_json(draw(remote_contexts())).encode(codec)
    return draw(_odd_webhook_bodies)
