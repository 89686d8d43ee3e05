"""ingest.coalesce: uvicorn's protocol, running a Starlette app, writes each response whole.

The protocol runs over a transport that records what reaches it (the socket's side), so these
tests see the writes the kernel would see: their number, their bytes and their order with the
close.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.config import Config
from uvicorn.server import ServerState

from ingest.coalesce import FLUSH_BYTES, CoalescingHttpToolsProtocol, CoalescingTransport


class SocketSide(asyncio.Transport):
    """What the socket receives: each write as one entry, and the close after them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", b""))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    @property
    def writes(self) -> list[bytes]:
        return [data for call, data in self.calls if call == "write"]


async def ok(request: Request) -> Response:
    await request.body()
    return JSONResponse({"accepted": 1, "duplicates": 0, "rejected": [], "warnings": []})


async def streamed(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for n in range(3):
            yield b'{"n": %d}\n' % n
            await asyncio.sleep(0)
        yield b"x" * (2 * FLUSH_BYTES)

    return StreamingResponse(chunks(), media_type="application/x-ndjson")


APP = Starlette(routes=[Route("/ok", ok, methods=["POST"]), Route("/stream", streamed)])


async def serve_one(request: bytes) -> SocketSide:
    """Feed ``request`` to the service's HTTP protocol and return the socket's side once the
    answer is complete."""
    config = Config(APP, http=CoalescingHttpToolsProtocol, lifespan="off", log_config=None)
    config.load()
    state = ServerState()
    protocol = CoalescingHttpToolsProtocol(config=config, server_state=state, app_state={})
    socket = SocketSide()
    protocol.connection_made(socket)
    protocol.data_received(request)
    for _ in range(200):
        await asyncio.sleep(0)
        if protocol.cycle is not None and protocol.cycle.response_complete and not state.tasks:
            break
    await asyncio.sleep(0)  # the turn that flushes
    protocol.connection_lost(None)
    return socket


async def test_a_json_answer_goes_to_the_socket_in_one_write() -> None:
    body = b'{"type": "track", "event": "x"}'
    socket = await serve_one(
        b"POST /ok HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert len(socket.writes) == 1
    answer = socket.writes[0]
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert b"content-length: %d" % len(payload) in head
    assert payload == b'{"accepted":1,"duplicates":0,"rejected":[],"warnings":[]}'


async def test_a_closing_answer_is_written_whole_before_the_close() -> None:
    socket = await serve_one(
        b"POST /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert [call for call, _ in socket.calls[:2]] == ["write", "close"]
    assert socket.calls[0][1].startswith(b"HTTP/1.1 200 OK\r\n")
    assert socket.calls[0][1].endswith(b'"warnings":[]}')


async def test_a_streamed_answer_arrives_complete_and_in_order() -> None:
    socket = await serve_one(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    sent = b"".join(socket.writes)
    head, _, chunked = sent.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    body = b""
    while True:  # decode the chunked body
        size_line, _, rest = chunked.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body += rest[:size]
        chunked = rest[size + 2 :]
    assert body == b'{"n": 0}\n{"n": 1}\n{"n": 2}\n' + b"x" * (2 * FLUSH_BYTES)
    # The headers went with the first chunk, not on their own.
    assert socket.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert socket.writes[0].endswith(b'{"n": 0}\n\r\n')


async def test_writes_are_held_only_until_the_next_turn_or_a_size() -> None:
    socket = SocketSide()
    transport = CoalescingTransport(socket, asyncio.get_running_loop())
    transport.write(b"head ")
    transport.write(b"body")
    assert socket.writes == []
    assert transport.get_write_buffer_size() == 9
    await asyncio.sleep(0)
    assert socket.writes == [b"head body"]

    big = b"y" * FLUSH_BYTES
    transport.write(b"small ")
    transport.write(big)
    assert socket.writes[1:] == [b"small " + big]  # at once, not at the next turn
    await asyncio.sleep(0)
    assert len(socket.writes) == 2  # and the turn's callback found nothing left

    reused = bytearray(b"first")
    transport.write(reused)
    reused[:] = b"later"
    await asyncio.sleep(0)
    assert socket.writes[2:] == [b"first"]  # held as it was when written

    transport.write(b"lost")
    transport.abort()
    await asyncio.sleep(0)
    assert socket.calls[-1] == ("abort", b"")
    assert socket.writes == [b"head body", b"small " + big, b"first"]


async def test_what_is_held_when_the_connection_goes_is_dropped_quietly() -> None:
    socket = SocketSide()
    transport = CoalescingTransport(socket, asyncio.get_running_loop())
    transport.write(b"an answer nobody will read")
    socket.closing = True  # the peer reset the connection before the turn ended
    await asyncio.sleep(0)
    assert socket.writes == []
    transport.close()
    assert socket.calls == [("close", b"")]
