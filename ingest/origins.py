"""Browser origins: a project's allow-list for its write keys, and the CORS answer it implies.

The handler decides (it knows the key's project); app.WriteCORS writes the headers.
"""

from __future__ import annotations

import re
from typing import Any, Final

from starlette.requests import Request

from ingest.problems import Forbidden

# WriteCORS puts a mutable holder under this scope key before the handler runs: the handler
# stores the Access-Control-Allow-Origin value there (None: send none), the middleware reads it.
CORS_SCOPE_KEY: Final = "ingest.cors"
ANY_ORIGIN: Final = "*"
MAX_ORIGINS: Final = 100

# scheme://host[:port], exactly as a browser writes the Origin header: no path, no slash.
_ORIGIN: Final = re.compile(
    r"^https?://(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)"
    r"(:[0-9]{1,5})?$"
)


class OriginsInvalid(ValueError):
    """The allow-list is not a list of origins; the message says why, without echoing one."""


def parse_allowed_origins(value: Any) -> tuple[str, ...] | None:
    """``null`` (any origin) or a list of ``https://host[:port]`` origins, lower-cased."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_ORIGINS:
        raise OriginsInvalid(f"null, or a list of at most {MAX_ORIGINS} origins")
    origins: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or len(item) > 300 or not _ORIGIN.match(item.lower()):
            raise OriginsInvalid(
                f"item {index} is not an origin such as https://shop.example.com[:port]"
            )
        origin = item.lower()
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def check_origin(request: Request, allowed: tuple[str, ...] | None) -> None:
    """Refuse a browser request from an origin the key's project does not list (403), and
    tell WriteCORS what to answer. A request without Origin (a server SDK) always passes."""
    holder = request.scope.get(CORS_SCOPE_KEY)
    origin = request.headers.get("origin")
    if allowed is None or origin is None:
        return  # the holder's default, "*", stands
    if origin.lower() in allowed:
        if isinstance(holder, dict):
            holder["allow"] = origin
        return
    if isinstance(holder, dict):
        # No Allow-Origin on the refusal: a page from another site cannot read even that.
        holder["allow"] = None
    raise Forbidden("this project does not accept events from this origin")
