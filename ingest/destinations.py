"""Partner routes for forwarding destinations (stub: being written)."""

from __future__ import annotations

from typing import Final

from starlette.routing import Route

ROUTES: Final[list[Route]] = []
