"""Schemathesis 4 against the app in process (RELIABILITY.md A1): every operation in
GET /openapi.json, with valid keys. No 5xx, answers conform to the document, auth enforced.

The app runs under asgi_lifespan.LifespanManager on a loop of its own (its pool and writer
belong to that loop); Schemathesis calls it from its own loop through a small bridge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from anyio.from_thread import start_blocking_portal
from asgi_lifespan import LifespanManager
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ingest.app import create_app
from ingest.cli import _create_org
from ingest.config import Settings

Scope = dict[str, Any]
Message = dict[str, Any]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
]


class LoopBridge:
    """An ASGI app that runs ``app`` on ``loop``, whichever loop calls it.

    It refuses the lifespan scope before reading a message, which tells Schemathesis the app
    has no lifespan of its own to start: LifespanManager already started it.
    """

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("the lifespan is run by LifespanManager")
        caller = asyncio.get_running_loop()

        async def on_caller(awaitable: Awaitable[Any]) -> Any:
            async def run() -> Any:
                return await awaitable

            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), caller))

        async def receive_there() -> Message:
            message: Message = await on_caller(receive())
            return message

        async def send_there(message: Message) -> None:
            await on_caller(send(message))

        future = asyncio.run_coroutine_threadsafe(
            self.app(scope, receive_there, send_there), self.loop
        )
        await asyncio.wrap_future(future)


@dataclass(frozen=True, slots=True)
class Served:
    bridge: LoopBridge
    secret_key: str
    write_key: str
    project_id: str
    destination_id: str


async def _keys(app: Any, settings: Settings) -> tuple[str, str, str, str]:
    org = await _create_org(settings, "Acme")
    secret = org["secret_key"]["key"]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest.test") as client:
        response = await client.post(
            "/v1/projects", json={"name": "Fuzz"}, headers={"Authorization": f"Bearer {secret}"}
        )
        assert response.status_code == 201, response.text
        project = response.json()
        # A destination to aim the destination routes at (paused: nothing is ever sent).
        response = await client.post(
            f"/v1/projects/{project['id']}/destinations",
            json={"type": "webhook", "name": "fuzz", "url": "http://127.0.0.1:9/hook"},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert response.status_code == 201, response.text
        destination = response.json()["id"]
        await client.patch(
            f"/v1/projects/{project['id']}/destinations/{destination}",
            json={"status": "paused"},
            headers={"Authorization": f"Bearer {secret}"},
        )
    return secret, project["write_key"]["key"], project["id"], destination


async def _lifespan_manager(app: Any) -> LifespanManager:
    return LifespanManager(app)


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


@pytest.fixture
def served(settings: Settings) -> Iterator[Served]:
    with start_blocking_portal() as portal:
        # Built on the portal's loop: LifespanManager detects its async library when created.
        manager = portal.call(_lifespan_manager, create_app(settings))
        with portal.wrap_async_context_manager(manager):
            loop = portal.call(_running_loop)
            secret, write, project_id, destination_id = portal.call(_keys, manager.app, settings)
            yield Served(LoopBridge(manager.app, loop), secret, write, project_id, destination_id)


def _credentials(case: Any, served: Served) -> dict[str, str]:
    """Valid credentials for the operation: what a real caller of it would send."""
    schemes = {
        name
        for requirement in case.operation.definition.raw.get("security", [])
        for name in requirement
    }
    if "writeKeyBearer" in schemes:
        return {"Authorization": f"Bearer {served.write_key}"}
    if "secretKeyBearer" in schemes:
        return {"Authorization": f"Bearer {served.secret_key}"}
    return {}


def _aim(case: Any, served: Served) -> None:
    """Point generated ids at the real project, so the 200 paths are reached, not only 404s."""
    path_parameters = case.path_parameters or {}
    if "project_id" in path_parameters:
        path_parameters["project_id"] = served.project_id
    if "destination_id" in path_parameters:
        path_parameters["destination_id"] = served.destination_id
    if "write_key" in path_parameters:
        path_parameters["write_key"] = served.write_key
    if case.operation.path.startswith(("/capture", "/batch", "/e", "/i/")) and isinstance(
        case.body, dict
    ):
        case.body["api_key"] = served.write_key  # PostHog: the key is in the body


def test_every_operation_conforms(served: Served, subtests: pytest.Subtests) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", served.bridge)
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results  # the document loads
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) >= 30, [op.label for op in operations]

    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=20,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: Any) -> None:
            _aim(case, served)
            case.call_and_validate(headers=_credentials(case, served), checks=CHECKS)

        with subtests.test(msg=operation.label):
            fuzz()


def test_posthog_form_with_non_latin1_data_is_a_400(served: Served) -> None:
    """Found by Schemathesis: POST /capture, form body ``data=%C4%80&compression=base64`` was a
    500 (UnicodeEncodeError); it is a 400 problem like any other bad base64."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", served.bridge)
    operation = schema["/capture"]["POST"]
    case = operation.Case(
        body={"data": "\u0100", "compression": "base64", "api_key": served.write_key},
        media_type="application/x-www-form-urlencoded",
    )
    response = case.call_and_validate(checks=CHECKS)
    assert response.status_code == 400
    assert response.json()["type"].endswith("/invalid-body")


def test_no_invalid_input_is_a_server_error(served: Served, subtests: pytest.Subtests) -> None:
    """Schemathesis's negative mode: requests that break the document on purpose (wrong types,
    missing fields, values out of range) with valid keys. Each must be a 4xx, never a 5xx."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", served.bridge)
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        @hypothesis.settings(
            max_examples=15,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: Any) -> None:
            _aim(case, served)
            case.call_and_validate(headers=_credentials(case, served), checks=[not_a_server_error])

        with subtests.test(msg=operation.label):
            try:
                fuzz()
            except hypothesis.errors.Unsatisfiable:
                # Nothing in the operation can be made invalid (a GET without parameters).
                pytest.skip("no invalid request exists for this operation")
