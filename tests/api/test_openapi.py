"""The OpenAPI document cannot drift: every route the app serves is in it, and nothing else,
and what GET /openapi.json serves is a valid OpenAPI 3.1 document."""

from __future__ import annotations

import httpx
from openapi_spec_validator import validate
from starlette.routing import Mount, Route

from ingest.app import create_app
from ingest.config import Secret, Settings
from ingest.openapi import document

_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _served(settings: Settings) -> set[tuple[str, str]]:
    app = create_app(settings)  # no lifespan: the route table is all we read
    served: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Mount) and route.path == "/console":
            # The console: HTML pages for people in a browser, not API operations (README,
            # Console; tests/console). Its changes are partner API calls, documented here.
            continue
        assert isinstance(route, Route), f"{route!r} is not a plain Route: describe it here"
        assert route.methods, f"{route.path} answers every method"
        served |= {(route.path, m.lower()) for m in route.methods if m != "HEAD"}
    return served


def _documented() -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in document()["paths"].items()
        for method in item
        if method in _METHODS
    }


def test_every_route_is_documented_and_nothing_else() -> None:
    settings = Settings(database_url=Secret("postgresql://ingest@127.0.0.1/none"), geoip_path=None)
    served = _served(settings)
    documented = _documented()
    assert served - documented == set(), "routes missing from ingest/openapi.py"
    assert documented - served == set(), "documented operations the app does not serve"


def test_every_operation_documents_its_errors_and_auth() -> None:
    doc = document()
    schemes = set(doc["components"]["securitySchemes"])
    for path, item in doc["paths"].items():
        for method, op in item.items():
            label = f"{method.upper()} {path}"
            assert "security" in op, f"{label} does not say how it authenticates"
            for requirement in op["security"]:
                assert set(requirement) <= schemes, label
            codes = set(op["responses"])
            if op["security"]:
                assert {"401", "503"} <= codes, f"{label} must document 401 and 503"
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")):
                    target = response["$ref"].rsplit("/", 1)[-1]
                    content = doc["components"]["responses"][target]["content"]
                    assert list(content) == ["application/problem+json"], label


async def test_openapi_json_is_served_without_a_key_and_is_valid(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    served = response.json()
    validate(served)  # raises on anything that is not valid OpenAPI 3.1
    assert served["openapi"].startswith("3.1")
    assert served == document()


def test_every_problem_status_is_documented() -> None:
    codes = {
        int(code)
        for item in document()["paths"].values()
        for op in item.values()
        for code in op["responses"]
    }
    assert {400, 401, 403, 404, 408, 413, 415, 429, 503} <= codes
    retry = document()["components"]["responses"]
    assert "MethodNotAllowed" in retry  # the router's, for any path called with another method
    assert retry["Unavailable"]["headers"]["Retry-After"]["required"] is True
    assert retry["TooManyRequests"]["headers"]["Retry-After"]["required"] is True
