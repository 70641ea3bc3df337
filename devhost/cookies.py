"""`Set-Cookie` the way the Functions host sends it: the worker turns each header into structured cookies and the
host writes each one back with ASP.NET Core, so the client never sees the function's own header text.

What was read (cite, not copied):
- azure-functions (Azure/azure-functions-python-library `azure/functions/http.py`, HttpResponseConverter.encode):
  every `Set-Cookie` header is parsed with the standard library's `http.cookies.SimpleCookie` and removed from
  the headers; a header SimpleCookie cannot parse yields no cookie at all (silently).
- The worker (Azure/azure-functions-python-worker `azure_functions_worker/bindings/datumdef.py`
  `parse_to_rpc_http_cookie_list`, `bindings/nullable_converters.py`): one RpcHttpCookie per morsel; domain and
  path are always sent (an unset one as an empty string), secure and httpOnly as booleans, Max-Age as a number
  (a non-number fails the invocation), Expires parsed as a date (an unparsable one fails the invocation), SameSite
  Lax/Strict/None or unspecified.
- The host (Azure/azure-functions-host `src/WebJobs.Script.Grpc/MessageExtensions/GrpcMessageExtensionUtilities.cs`
  RpcHttpCookieConverter, `src/WebJobs.Script/Binding/Http/RawScriptResult.cs`): CookieOptions from those fields,
  then `Response.Cookies.Append(name, value, options)`; ASP.NET Core (dotnet/aspnetcore
  `src/Http/Http/src/Internal/ResponseCookies.cs`, `src/Http/Headers/src/SetCookieHeaderValue.cs`) escapes the
  value with Uri.EscapeDataString and writes lower-case attributes in a fixed order:
  `name=value; expires=…; max-age=…; domain=…; path=…; secure; samesite=…; httponly`; a negative max-age throws.
- Observed end to end in the worker's own tests against the real host (tests/unittests/test_http_functions.py):
  `foo=bar` comes back as `foo=bar; domain=; path=`.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from http.cookies import CookieError, Morsel, SimpleCookie
from urllib.parse import quote

logger = logging.getLogger(__name__)

# RFC 9110 §5.6.2 token: what ASP.NET Core accepts as a cookie name (CookieHeaderValue.CheckNameFormat).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SAME_SITE = {"lax": "lax", "strict": "strict", "none": "none"}


class CookieRejected(ValueError):
    """The worker or the host would fail the invocation on this cookie (the client gets a 500)."""


@dataclass(frozen=True)
class HostCookie:
    """One cookie as the worker hands it to the host (RpcHttpCookie)."""

    name: str
    value: str
    domain: str | None
    path: str | None
    expires: dt.datetime | None
    secure: bool
    http_only: bool
    same_site: str | None  # "lax", "strict", "none", or None when unspecified
    max_age: float | None


def structured_cookies(set_cookie_values: Iterable[str]) -> list[HostCookie]:
    """The worker's half: every cookie in the function's `Set-Cookie` headers. Raises CookieRejected where the
    worker would fail the invocation.
    """
    cookies: list[HostCookie] = []
    for header in set_cookie_values:
        try:
            jar = SimpleCookie(header)
        except CookieError as exc:
            raise CookieRejected(f"Set-Cookie header cannot be parsed: {exc}") from exc
        if not jar:
            # The real host drops it without a word; say so here, where someone is looking.
            logger.warning(
                "a Set-Cookie header was dropped: Python's http.cookies cannot parse it, so the Functions host "
                "would not send it either (an unknown attribute such as Partitioned does this on Python 3.11)"
            )
        cookies.extend(_from_morsel(name, morsel) for name, morsel in jar.items())
    return cookies


def _from_morsel(name: str, morsel: Morsel[str]) -> HostCookie:
    max_age_text = str(morsel["max-age"])
    try:
        max_age = float(max_age_text) if max_age_text else None
    except ValueError:
        raise CookieRejected(f"cookie {name}: Max-Age {max_age_text!r} is not a number") from None
    expires_text = str(morsel["expires"])
    expires = _parse_expires(name, expires_text) if expires_text else None
    return HostCookie(
        name=name,
        value=morsel.value,
        domain=str(morsel["domain"]),
        path=str(morsel["path"]),
        expires=expires,
        secure=bool(morsel["secure"]),
        http_only=bool(morsel["httponly"]),
        same_site=_SAME_SITE.get(str(morsel["samesite"]).lower()),
        max_age=max_age,
    )


def _parse_expires(name: str, text: str) -> dt.datetime:
    # The worker uses dateutil's lenient parser; the cookie date forms (RFC 1123 and RFC 850's dashed form) are
    # what email.utils reads, and a stricter development host errs on the safe side.
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        raise CookieRejected(f"cookie {name}: Expires {text!r} is not a date") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def host_set_cookie(cookie: HostCookie) -> str:
    """The host's half: the `Set-Cookie` value ASP.NET Core writes for this cookie. Raises CookieRejected where
    ASP.NET Core throws (a name that is not a token, a negative or non-finite Max-Age).
    """
    if not _TOKEN.fullmatch(cookie.name):
        raise CookieRejected(f"cookie name {cookie.name!r} is not an HTTP token")
    parts = [f"{cookie.name}={quote(cookie.value, safe='')}"]  # Uri.EscapeDataString: only A-Za-z0-9-._~ stay
    if cookie.expires is not None:
        # The worker sends whole seconds; the host formats with .NET's "r" pattern (RFC 1123, GMT).
        whole = dt.datetime.fromtimestamp(int(cookie.expires.timestamp()), tz=dt.UTC)
        parts.append(f"expires={email.utils.format_datetime(whole, usegmt=True)}")
    if cookie.max_age is not None:
        if not math.isfinite(cookie.max_age) or int(cookie.max_age) < 0:
            raise CookieRejected(f"cookie {cookie.name}: Max-Age {cookie.max_age} cannot be written")
        parts.append(f"max-age={int(cookie.max_age)}")  # TimeSpan seconds cast to long: truncated
    if cookie.domain is not None:
        parts.append(f"domain={cookie.domain}")
    if cookie.path is not None:
        parts.append(f"path={cookie.path}")
    if cookie.secure:
        parts.append("secure")
    if cookie.same_site is not None:
        parts.append(f"samesite={cookie.same_site}")
    if cookie.http_only:
        parts.append("httponly")
    return "; ".join(parts)


def set_cookie_headers(set_cookie_values: Iterable[str]) -> list[str]:
    """The `Set-Cookie` header values the client receives for the function's own ones, in order."""
    return [host_set_cookie(cookie) for cookie in structured_cookies(set_cookie_values)]
