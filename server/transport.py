"""The HTTP protocol uvicorn runs for tokenflow: uvicorn's own (httptools) with a bounded
send path, so that a client that stops reading blocks its stream after a bounded number
of bytes, and the stall timeout can see it.

Left alone, Linux grows a connection's send buffer up to ``net.ipv4.tcp_wmem``'s maximum
(4 MB by default) and the event loop's transport holds 64 kB more before it pauses the
writer: a never-reading client with ``n=8`` and ``top_logprobs=20`` absorbed 780 kB and
kept its rows for minutes. A fixed ``SO_SNDBUF`` turns that autotuning off for the socket;
what a stream may still have in flight is then this buffer, the transport's high-water
mark, and the client's own receive window.

A write timeout closes what the stall timeout leaves: once the transport pauses the writer
(its buffer past the high-water mark), a connection whose socket takes no byte for
``write_timeout_s`` (the server's stall timeout) is aborted, so a dropped reader that never
reads nor leaves does not hold a socket, a task and its buffers until it goes.

    uvicorn.Config(app, **uvicorn_options(write_timeout_s=30.0))
"""

from __future__ import annotations

import logging
import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

SEND_BUFFER_BYTES = 64 * 1024  # the kernel's send buffer per connection (Linux doubles it for its books)
WRITE_HIGH_WATER_BYTES = 16 * 1024  # the transport pauses the writer past this
WRITE_TIMEOUT_S = 30.0  # the stall timeout's default

log = logging.getLogger("tokenflow.server")


class BoundedSendProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a fixed socket send buffer, a low write
    high-water mark, and a write timeout while the writer is paused."""

    write_timeout_s = WRITE_TIMEOUT_S
    _write_timer = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            except OSError:  # not a TCP socket (a Unix one, a test's transport): nothing to bound
                pass
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.write_timeout_s, self._write_timed_out)

    def resume_writing(self) -> None:
        self._cancel_write_timer()
        super().resume_writing()

    def connection_lost(self, exc) -> None:
        self._cancel_write_timer()
        super().connection_lost(exc)

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        """The client took no byte for the write timeout: abort (no flush, no FIN to wait
        on); uvicorn then sees the connection lost and the stream's send ends."""
        self._write_timer = None
        client = "%s:%d" % self.client if self.client else "a client"
        log.warning("closing the connection of %s: it read nothing for %.0f s", client, self.write_timeout_s)
        self.transport.abort()


def uvicorn_options(write_timeout_s: float = WRITE_TIMEOUT_S) -> dict:
    """What ``uvicorn.Config`` needs to run the bounded protocol with this write timeout."""
    protocol = type("BoundedSendProtocol", (BoundedSendProtocol,), {"write_timeout_s": float(write_timeout_s)})
    return {"http": protocol}
