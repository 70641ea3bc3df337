"""Development host for the function app's HTTP functions (demo and browser tests only; production runs on the
Azure Functions host). Functions Core Tools cannot be installed here (environment.md), so this serves
`function_app.app` on 127.0.0.1 from the functions' own binding metadata: route, methods and authLevel.
"""

from devhost.host import DevHost, read_route_prefix
from devhost.keys import AuthLevel, HostKeys

__all__ = ["AuthLevel", "DevHost", "HostKeys", "read_route_prefix"]
