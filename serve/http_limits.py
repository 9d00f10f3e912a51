"""Limits on what a client may send before any endpoint sees its request.

LitServe runs uvicorn, which by default parses HTTP with httptools: no limit on header size
(a 64 MiB header was accepted) and no deadline for reading a request (a client that sends
nothing holds its connection for good). Here uvicorn runs its h11 parser through
``LimitedH11Protocol``, which

- answers 431 and closes when a request's header block exceeds ``max_header_bytes`` (h11 itself
  would otherwise buffer up to ``h11_max_incomplete_event_size``, set to the same bound);
- answers 408 and closes when a request (headers and body) is not fully received within
  ``read_timeout`` seconds of its first byte, or of the connection's opening; the time a
  model takes to answer does not count;

and the ASGI middleware ``RequestLimits`` answers 431 for more than ``max_headers`` header
fields and 415 for a ``Content-Encoding`` other than identity (the endpoints read bodies as
plain JSON, so a compressed body must not be taken for one). The body size limit is LitServe's
``max_payload_size``. A public deployment should still sit behind a reverse proxy (README).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

STATUS_LINES = {
    408: b"HTTP/1.1 408 Request Timeout",
    431: b"HTTP/1.1 431 Request Header Fields Too Large",
}
IN_PROGRESS = (h11.IDLE, h11.SEND_BODY)
HEADER_END = b"\r\n\r\n"  # the client's side while a request is arriving


@dataclass(frozen=True)
class HTTPLimits:
    max_header_bytes: int = 16 << 10  # the whole header block of one request
    max_headers: int = 64  # header fields per request
    read_timeout: float = 10.0  # seconds to receive one whole request


LIMITS = HTTPLimits()


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header size limit and a deadline to read each request."""

    limits = LIMITS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = 0  # of the request being read, up to its blank line
        self._tail = b""  # the last bytes seen, to find a blank line split between reads
        self._deadline: asyncio.TimerHandle | None = None
        self._arm_deadline()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # reading a request's header block
            if self._deadline is None:  # the first bytes of the next request on a connection
                self._arm_deadline()
            seen = self._tail + data
            end = seen.find(HEADER_END)
            self._header_bytes += len(data) if end < 0 else max(0, end - len(self._tail))
            self._tail = seen[-(len(HEADER_END) - 1) :]
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(431, "request headers too large")
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._header_bytes, self._tail = 0, b""
        if self.conn.their_state not in IN_PROGRESS:  # received whole: the app's time now
            self._cancel_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(self.limits.read_timeout, self._read_timed_out)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _read_timed_out(self) -> None:
        self._deadline = None
        if self.conn.their_state in IN_PROGRESS:
            self._refuse(408, "request not received in time")

    def _refuse(self, status: int, reason: str) -> None:
        """Answer ``status`` if no response has begun on this connection, then close it."""
        self._cancel_deadline()
        if self.transport.is_closing():
            return
        cycle = self.cycle  # the request being answered, or the connection's previous one
        answering = cycle is not None and cycle.response_started and not cycle.response_complete
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and not answering:
            # no answer begun; an app still reading the body gets a disconnect
            body = json.dumps({"detail": reason}).encode()
            head = STATUS_LINES[status] + b"\r\ncontent-type: application/json\r\n"
            head += b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
            self.transport.write(head + body)
        self.transport.close()


def uvicorn_options(limits: HTTPLimits = LIMITS) -> dict[str, Any]:
    """Keyword arguments for ``LitServer.run`` (passed on to ``uvicorn.Config``)."""
    LimitedH11Protocol.limits = limits
    # h11's own bound on a buffered incomplete request, a backstop above ours
    backstop = 2 * limits.max_header_bytes
    return {"http": LimitedH11Protocol, "h11_max_incomplete_event_size": backstop}


class RequestLimits:
    """ASGI middleware: 431 for too many header fields, 415 for a compressed body."""

    def __init__(self, app: Any, max_headers: int = LIMITS.max_headers) -> None:
        self.app = app
        self.max_headers = max_headers

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            if len(headers) > self.max_headers:
                detail = f"more than {self.max_headers} header fields"
                return await _answer(send, 431, detail)
            encodings = [
                value.decode("latin-1").strip().lower()
                for name, value in headers
                if name == b"content-encoding"
            ]
            if any(encoding not in ("", "identity") for encoding in encodings):
                detail = "Content-Encoding must be identity: send the JSON body uncompressed"
                return await _answer(send, 415, detail)
        await self.app(scope, receive, send)


async def _answer(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
