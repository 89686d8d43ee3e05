"""uvicorn's HTTP protocol with each response sent in one write.

uvicorn writes a response's status line and headers when the app sends ``http.response.start``
and its body when the app sends ``http.response.body``: two ``send()`` system calls, and with
``TCP_NODELAY`` (asyncio's default) two TCP segments, for every small JSON answer. A system call
is the dearest step of a single-event request on a small machine (issue 5: a fifth of the
server's samples were those writes). Here the connection's transport holds what is written
until the event loop's next turn and then writes it as one piece: the headers and the body go
together, in one segment.

What is held stays small and short-lived: writes are held for one turn of the loop at most, and
as soon as they reach ``FLUSH_BYTES`` they go at once (a streamed export does not pile up). A
close sends what is held first. Flow control is untouched: the real transport still tells the
protocol when its buffer is full, and uvicorn's ``send`` waits on that as before.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from ingest.drain import DrainingHttpToolsProtocol

# Held writes that reach this size go at once: more than any answer of the write API, and as
# much as asyncio's default high-water mark for a transport's own write buffer.
FLUSH_BYTES: Final = 64 * 1024


class CoalescingTransport(asyncio.Transport):
    """A socket transport whose writes made in one turn of the event loop go out as one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)  # held past the call: a buffer the caller reuses must not change
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= FLUSH_BYTES:
            self._flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        held = self._held
        if not held:
            return  # flushed early (by size or a close): this turn's callback has nothing left
        self._held = []
        self._held_bytes = 0
        if self._transport.is_closing():
            # The connection went (a reset, an abort) since these writes: nobody can read them,
            # and uvloop raises on a write to a closed transport.
            return
        self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = []
        self._held_bytes = 0
        self._transport.abort()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class CoalescingHttpToolsProtocol(DrainingHttpToolsProtocol):
    """The service's HTTP protocol: the graceful drain (ingest/drain.py), each response written
    whole."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # Any stream transport: uvloop's (the loop uvicorn picks when it is installed) is not
        # a subclass of asyncio.Transport, but has its methods.
        super().connection_made(CoalescingTransport(transport, self.loop))
