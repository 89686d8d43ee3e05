"""uvicorn's HTTP protocol with a graceful drain that does not reset keep-alive clients.

On SIGTERM uvicorn closes every idle keep-alive connection at once. An SDK that has just sent
its next request on such a connection (it is on the wire, or unread in the socket buffer) then
sees the connection reset, not an answer (RELIABILITY B6: every request received gets a final
answer). Here an idle connection gets a short grace to deliver that request, which is answered
with ``Connection: close``; a connection that stays idle is closed when the grace ends. The
listening socket is already closed, so the client's retry goes to the restarted server.
"""

from __future__ import annotations

from typing import Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors.multiprocess import Multiprocess

# Long enough for a request already sent to be read, short enough that the whole drain stays
# well inside uvicorn's timeout_graceful_shutdown.
DRAIN_GRACE_S: Final = 0.5


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    _draining = False

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self._draining = True
            self.loop.call_later(DRAIN_GRACE_S, self._close_if_idle)
        else:
            # A request in progress: answered, then the connection closes (uvicorn's own way).
            self.cycle.keep_alive = False

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False

    def _close_if_idle(self) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()


class DrainingSupervisor(Multiprocess):
    """uvicorn's supervisor of worker processes, closing its own copy of the listening socket
    before it stops the workers.

    uvicorn keeps that copy open until every worker has exited. Meanwhile the workers no longer
    accept, but the kernel still completes new connections on the socket and queues them; when
    the last process exits it resets them, with the client's request unread. Closed first, the
    socket goes away as the workers close theirs: a client connecting during the drain is
    refused at once, and retries against the restarted server.
    """

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()
