"""The HTTP protocol uvicorn runs for tokenflow: uvicorn's own (httptools) with a bounded
send path, so that a client that stops reading blocks its stream after a bounded number
of bytes, and the stall timeout can see it.

Left alone, Linux grows a connection's send buffer up to ``net.ipv4.tcp_wmem``'s maximum
(4 MB by default) and the event loop's transport holds 64 kB more before it pauses the
writer: a never-reading client with ``n=8`` and ``top_logprobs=20`` absorbed 780 kB and
kept its rows for minutes. A fixed ``SO_SNDBUF`` turns that autotuning off for the socket;
what a stream may still have in flight is then this buffer, the transport's high-water
mark, and the client's own receive window.

    uvicorn.Config(app, **UVICORN_OPTIONS)
"""

from __future__ import annotations

import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

SEND_BUFFER_BYTES = 64 * 1024  # the kernel's send buffer per connection (Linux doubles it for its books)
WRITE_HIGH_WATER_BYTES = 16 * 1024  # the transport pauses the writer past this


class BoundedSendProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a fixed socket send buffer and a low write
    high-water mark."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            except OSError:  # not a TCP socket (a Unix one, a test's transport): nothing to bound
                pass
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)


UVICORN_OPTIONS = {"http": BoundedSendProtocol}
