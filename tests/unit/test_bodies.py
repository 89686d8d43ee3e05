"""ingest.bodies.read_body under uvicorn's own protocol (the one ``ingest serve`` runs): a body
that arrived with its headers is read without a deadline's timer, one still arriving keeps
its deadline, and both read exactly what was sent."""

from __future__ import annotations

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.config import Config
from uvicorn.server import ServerState

from ingest import bodies
from ingest.coalesce import CoalescingHttpToolsProtocol
from ingest.problems import RequestTimeout
from tests.unit.test_coalesce import SocketSide

DEADLINE_S = 0.3
# Whether each read found the whole body there already (bodies._arrived), in order.
arrivals: list[bool] = []


async def echo(request: Request) -> Response:
    arrivals.append(bodies._arrived(request))
    try:
        body = await bodies.read_body(request, 10_000, DEADLINE_S)
    except RequestTimeout:
        return JSONResponse({"timeout": True}, status_code=408)
    return JSONResponse({"body": body.decode()})


APP = Starlette(routes=[Route("/echo", echo, methods=["POST"])])


class Connection:
    """One connection to the service's HTTP protocol; what the socket would receive."""

    def __init__(self) -> None:
        config = Config(APP, http=CoalescingHttpToolsProtocol, lifespan="off", log_config=None)
        config.load()
        self.state = ServerState()
        self.protocol = CoalescingHttpToolsProtocol(
            config=config, server_state=self.state, app_state={}
        )
        self.socket = SocketSide()
        self.protocol.connection_made(self.socket)

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)

    async def answer(self, within_s: float = 5.0) -> bytes:
        deadline = asyncio.get_running_loop().time() + within_s
        while not self.socket.writes:
            assert asyncio.get_running_loop().time() < deadline, "no answer"
            await asyncio.sleep(0.01)
        self.protocol.connection_lost(None)
        return b"".join(self.socket.writes)


def head(length: int) -> bytes:
    return (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )


BODY = b'{"event": "x", "user_id": "u"}'


@pytest.mark.parametrize(
    ("split", "arrived"),
    [
        pytest.param(None, True, id="with-its-headers"),  # read whole, without a timer
        pytest.param(10, False, id="still-arriving"),  # read whole, under its deadline
    ],
)
async def test_a_body_is_read_whole(split: int | None, arrived: bool) -> None:
    arrivals.clear()
    conn = Connection()
    if split is None:
        conn.send(head(len(BODY)) + BODY)
    else:
        conn.send(head(len(BODY)) + BODY[:split])
        await asyncio.sleep(0.05)
        conn.send(BODY[split:])
    answer = await conn.answer()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b'{"body":"{\\"event\\": \\"x\\", \\"user_id\\": \\"u\\"}"}')
    assert arrivals == [arrived]


async def test_a_body_that_stops_arriving_still_times_out() -> None:
    arrivals.clear()
    conn = Connection()
    conn.send(head(len(BODY)) + BODY[:10])
    started = asyncio.get_running_loop().time()
    answer = await conn.answer()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert asyncio.get_running_loop().time() - started >= DEADLINE_S * 0.9
    assert arrivals == [False]


async def test_headers_alone_keep_the_deadline() -> None:
    arrivals.clear()
    conn = Connection()
    conn.send(head(len(BODY)))
    answer = await conn.answer()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert arrivals == [False]
