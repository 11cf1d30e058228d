"""The HTTP/1.1 connection, as uvicorn's h11 protocol runs it, plus the limits uvicorn lacks.

uvicorn alone arms no timer before a connection's first request, and cancels its keep-alive
timer on any byte received: a connection that sends nothing, or one byte a minute, is held
forever, and enough of them exhaust the process's descriptors. It also buffers a request
head of any size. EdgeProtocol (`userapi serve` passes it to uvicorn) adds:

- HEADER_TIMEOUT_SECONDS: a head must be complete within it, counted from the moment the
  connection opens or its previous response ends, however many bytes trickle in meanwhile.
- BODY_TIMEOUT_SECONDS: once the head is in, the whole body must be within it.
- A head (request line and header fields) over MAX_HEAD_BYTES: 431 as soon as the buffered,
  still incomplete head passes the limit; the rest is never parsed.
- The connection cap (MAX_CONNECTIONS) per process. Past it a new connection first closes
  one already refused and lingering, else the oldest connection waiting for a head: one
  that never sent a request before one idling between requests. Those cost their clients
  nothing to reopen, and they are what an attacker who holds connections holds, so /health
  and every real request still get in. Only when every connection is mid-request is the
  new one shed: a 503, then closed.
- problem+json for the server's own answers (400, 408, 431, 501, 503), with X-Request-ID.

Why not uvicorn's `limit_concurrency`: it answers 503 to every request once the open
connections reach it, so idle connections an attacker holds would make /health 503; and it
still accepts them all, so descriptors run out as before.

Why h11, not httptools (uvicorn's choice when both are installed): h11 parses one event at
a time out of a buffer it bounds itself (`max_incomplete_event_size`), so an oversized head
is refused after one read, and its exact size is known. llhttp has no head limit, and
httptools joins a long header value chunk by chunk in Python: 64 MiB took 4.5 s of CPU. Nor
can it say where in a read a head ends, so a limit on top of it would be approximate. The
price: about 80 µs more CPU per request (GET /health: 200 µs here, 125 µs on httptools),
next to 50 ms or more of argon2 per login and a database round trip for most requests.
"""

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from typing import Any

import h11
from starlette.responses import Response
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from kernel.errors import (
    HeadersTooLarge,
    RequestTimeout,
    ServerBusy,
    framework_code,
    problem_response,
    render,
)
from kernel.settings import load_settings

MAX_HEAD_BYTES = 16 * 1024
# After refusing a request the server stops sending, then reads and drops what the client
# still sends for a moment before closing: closing with unread bytes makes the kernel
# send a reset, which can destroy the answer before the client reads it. Bounded, so a
# client that keeps sending holds nothing.
LINGER_SECONDS = 1.0
LINGER_MAX_BYTES = 1 << 20
CAP_REPORT_INTERVAL_SECONDS = 10.0
log = logging.getLogger("userapi.edge")

H11Event = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]


@dataclass(frozen=True)
class EdgeLimits:
    header_timeout: float
    body_timeout: float
    max_connections: int


@cache
def edge_limits() -> EdgeLimits:
    """Read once per process: each uvicorn worker builds its protocols from its own settings."""
    settings = load_settings()
    return EdgeLimits(
        settings.header_timeout_seconds, settings.body_timeout_seconds, settings.connection_cap
    )


class _HeadLimitedConnection(h11.Connection):
    """h11's server side, refusing a head over MAX_HEAD_BYTES even when it arrives whole
    (h11's own limit covers a head still incomplete), and remembering why it refused."""

    def __init__(self) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.refusal: h11.RemoteProtocolError | None = None

    def next_event(self) -> H11Event:
        awaiting_head = self.their_state is h11.IDLE
        buffered = len(self.trailing_data[0]) if awaiting_head else 0
        try:
            event = super().next_event()
            head_complete = awaiting_head and isinstance(event, h11.Request)
            if head_complete and buffered - len(self.trailing_data[0]) > MAX_HEAD_BYTES:
                raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        except h11.RemoteProtocolError as error:
            self.refusal = error
            raise
        return event


class _Census:
    """This process's open connections, and those the cap may close, oldest first.

    One per process: uvicorn runs one server in each (worker) process.
    """

    def __init__(self) -> None:
        self.open = 0
        self.lingering: dict[EdgeProtocol, None] = {}  # refused, already answered
        self.fresh: dict[EdgeProtocol, None] = {}  # waiting for a first request
        self.idle: dict[EdgeProtocol, None] = {}  # waiting between two requests
        self.evicted = self.shed = 0
        self.reported_at = 0.0

    def first_to_close(self) -> "EdgeProtocol | None":
        for group in (self.lingering, self.fresh, self.idle):
            if group:
                return next(iter(group))
        return None

    def forget(self, connection: "EdgeProtocol") -> None:
        for group in (self.lingering, self.fresh, self.idle):
            group.pop(connection, None)

    def report(self, cap: int) -> None:
        """One warning per interval at most: a flood must not become a flood of log lines."""
        now = time.monotonic()
        if now - self.reported_at < CAP_REPORT_INTERVAL_SECONDS:
            return
        log.warning(
            "connection cap %d reached: %d idle connections closed, %d new ones refused",
            cap,
            self.evicted,
            self.shed,
        )
        self.reported_at, self.evicted, self.shed = now, 0, 0


_census = _Census()


class EdgeProtocol(H11Protocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = edge_limits()
        self.parser = _HeadLimitedConnection()
        self.conn = self.parser
        # "head" (awaited), "body" (the head is in, the body is not), "app" (the request is
        # in), or "closing": refused or evicted, nothing more is parsed.
        self.phase = "new"
        self.served = False
        self.counted = False
        self.deadline: asyncio.TimerHandle | None = None
        self.dropped_bytes = 0

    # --- uvicorn's protocol interface ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _census.open += 1
        self.counted = True
        if _census.open > self.limits.max_connections:
            victim = _census.first_to_close()
            if victim is None:
                self._shed()
                return
            victim._evict()
        self._follow_parser()

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave_census()
        self._cancel_deadline()
        self.phase = "closing"
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.phase == "closing":
            self._drop(data)
            return
        super().data_received(data)
        self._follow_parser()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_parser()

    def send_400_response(self, msg: str) -> None:  # noqa: ARG002 (it may quote the client)
        """uvicorn's answer to whatever h11 refused: problem+json, with h11's status hint."""
        status = self.parser.refusal.error_status_hint if self.parser.refusal else 400
        if status == HeadersTooLarge.status:
            detail = f"The request head exceeds {MAX_HEAD_BYTES} bytes."
            self._refuse(render(HeadersTooLarge(detail)))
        else:  # h11's message may quote the client's bytes: it is not repeated to anyone
            detail = "The request is not valid HTTP/1.1."
            self._refuse(problem_response(status, framework_code(status), detail))

    def shutdown(self) -> None:
        if self.phase == "closing":
            self.transport.close()
        else:
            super().shutdown()

    # --- the phases and their deadlines ---

    def _follow_parser(self) -> None:
        """Move to the phase h11's view of the client says, with that phase's deadline."""
        if self.phase == "closing" or self.transport.is_closing():
            return
        state = self.parser.their_state
        phase = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else "app"
        if phase == self.phase:
            return
        self.phase = phase
        self._cancel_deadline()
        _census.forget(self)
        if phase == "head":
            (_census.idle if self.served else _census.fresh)[self] = None
            self.deadline = self.loop.call_later(self.limits.header_timeout, self._head_late)
        else:
            self.served = True
        if phase == "body":
            self.deadline = self.loop.call_later(self.limits.body_timeout, self._body_late)

    def _head_late(self) -> None:
        if self.parser.trailing_data[0]:  # part of a head: it is answered
            self._refuse(render(RequestTimeout("The request head did not arrive in time.")))
        else:  # nothing sent: an answer could be mistaken for that of a request on its way
            self._close()

    def _body_late(self) -> None:
        if self.cycle is not None and self.cycle.response_started:
            self._close()  # too late to answer: a response is already on its way
        else:
            self._refuse(render(RequestTimeout("The request body did not arrive in time.")))

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    # --- refusing, evicting, shedding ---

    def _refuse(self, answer: Response) -> None:
        """Send `answer` (unless a response is half sent), then close after lingering."""
        self._stop()
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self._close()
            return
        self.transport.write(self._raw(answer))
        if not self.transport.can_write_eof():  # TLS: no half-close
            self._close()
            return
        self.transport.write_eof()
        self.transport.resume_reading()  # reads now only to drop what arrives
        # Still counted (it holds a descriptor), and the first the cap closes.
        _census.lingering[self] = None
        self.deadline = self.loop.call_later(LINGER_SECONDS, self._close)

    def _evict(self) -> None:
        _census.evicted += 1
        _census.report(self.limits.max_connections)
        self._close()

    def _shed(self) -> None:
        _census.shed += 1
        _census.report(self.limits.max_connections)
        busy = ServerBusy("Too many connections; retry shortly.", headers={"Retry-After": "1"})
        # Closed at once, without lingering: under a flood a lingering refusal would hold
        # the very descriptors the cap protects. Not logged one by one, for the same reason.
        self.transport.write(self._raw(render(busy), logged=False))
        self._close()

    def _stop(self) -> None:
        """Nothing more is parsed or timed, and the app's answer, if any, goes nowhere."""
        self.phase = "closing"
        self._cancel_deadline()
        self._unset_keepalive_if_required()
        _census.forget(self)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()

    def _close(self) -> None:
        self._stop()
        self._leave_census()  # now, not when the loop reports it: the next accept counts
        self.transport.close()

    def _drop(self, data: bytes) -> None:
        self.dropped_bytes += len(data)
        if self.dropped_bytes > LINGER_MAX_BYTES:
            self._close()

    def _leave_census(self) -> None:
        _census.forget(self)
        if self.counted:
            self.counted = False
            _census.open -= 1

    def _raw(self, answer: Response, *, logged: bool = True) -> bytes:
        """The whole answer as bytes, written past h11: the connection closes after it, so
        h11's view of it no longer matters."""
        request_id = uuid.uuid4().hex
        answer.headers["Connection"] = "close"
        answer.headers["X-Request-ID"] = request_id
        if logged:  # the access log's line for a request the app never saw
            log.info("- - %d request_id=%s", answer.status_code, request_id)
        status = answer.status_code
        status_line = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
        headers = [*self.server_state.default_headers, *answer.raw_headers]
        lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        return status_line + lines + b"\r\n" + bytes(answer.body)
