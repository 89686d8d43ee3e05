"""JSON in and out with orjson, and the two response classes the routes use."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from ingest.problems import Problem


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem_response(problem: Problem, request_id: str | None) -> Response:
    return Response(
        orjson.dumps(problem.body(request_id)),
        status_code=problem.status,
        headers=problem.headers,
        media_type="application/problem+json",
    )
