"""The HTTP/1.1 connection, as uvicorn's httptools protocol runs it, plus the limits uvicorn lacks.

uvicorn alone arms no timer before a connection's first request, and cancels its keep-alive
timer on any byte received: a connection that sends nothing, or one byte a minute, is held
forever, and enough of them exhaust the process's descriptors. It also buffers a request
head of any size. EdgeProtocol (`userapi serve` passes it to uvicorn) adds:

- HEADER_TIMEOUT_SECONDS: a head must be complete within it, counted from the moment the
  connection opens or its previous response ends, however many bytes trickle in meanwhile.
- BODY_TIMEOUT_SECONDS: once the head is in, the whole body must be within it.
- A head (request line and header fields) over MAX_HEAD_BYTES: 431, and nothing more is
  parsed. A complete head is measured from what the parser reports (request line, each
  field as `name: value` and its line end), before the app sees it; a head still
  incomplete is measured by the bytes read since it began, so a 64 MiB header is refused
  after one socket read, never joined.
- The connection cap (MAX_CONNECTIONS) per process. Past it a new connection first closes
  one already refused and lingering, else the oldest connection waiting for a head: one
  that never sent a request before one idling between requests. Those cost their clients
  nothing to reopen, and they are what an attacker who holds connections holds, so /health
  and every real request still get in. Only when every connection is mid-request is the
  new one shed: a 503, then closed.
- problem+json for the server's own answers (400, 408, 431, 503), with X-Request-ID.

Why not uvicorn's `limit_concurrency`: it answers 503 to every request once the open
connections reach it, so idle connections an attacker holds would make /health 503; and it
still accepts them all, so descriptors run out as before.

Why httptools (llhttp), not h11: it parses in C. On h11 the edge cost about 80 µs of CPU
more per request than the bare server does (GET /users/me's ceiling: 177 against 96 µs),
as much as the rest of the server's work for a request. What comes with it:
- llhttp does not say where in a read a request begins. A head that begins in the same
  read as the previous request ends is measured from the next read on, so it may pass
  the limit by up to one read before it is refused; and whitespace around field values,
  which llhttp drops, is not counted. Either way no more than one read (256 KiB) is ever
  buffered, and the app never sees more than 16 KiB of fields.
- The parser reads ahead of a pipelined request still being answered. A later request
  then waits untimed, and a refusal of it is sent once the earlier answers are complete.
- The bytes after an Upgrade request in the same read are not parsed (llhttp stops
  there): a request pipelined behind one is dropped, and the connection closed when the
  header timeout passes. No route upgrades, and no common client pipelines after one.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from typing import Any

import httptools
from starlette.responses import Response
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from kernel.errors import (
    HeadersTooLarge,
    RequestTimeout,
    ServerBusy,
    framework_code,
    problem_response,
    render,
)
from kernel.middleware import new_request_id
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

# What a head's lines add to what the parser reports of them: the spaces around the
# target and "HTTP/1.1\r\n", ": " and "\r\n" around each field value, and the blank line.
REQUEST_LINE_EXTRA = 12
FIELD_LINE_EXTRA = 4
HEAD_END = 2


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


class _HeadTooLarge(Exception):
    """Raised in a parser callback: httptools stops parsing, and the request is refused."""


class EdgeProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = edge_limits()
        # "head" (awaited), "body" (the head is in, the body is not), "app" (the request is
        # in), or "closing": refused or evicted, nothing more is parsed.
        self.phase = "new"
        self.served = False
        self.counted = False
        self.deadline: asyncio.TimerHandle | None = None
        self.dropped_bytes = 0
        # Where the parser is in the latest request: its head, its body, or past both.
        self.reading_head = self.reading_body = False
        self.head_size = 0  # of the head being parsed, as the parser reports it
        self.head_bytes_read = 0  # read while that head is incomplete
        self.refused_head = False
        # Requests whose head is in and whose response is not yet complete. The parser
        # reads ahead of a pipelined request still being answered (h11 did not): a later
        # request waits untimed until the earlier ones are answered, and a refusal of it
        # waits for their answers to go first.
        self.answering = 0
        self.deferred_refusal: Response | None = None
        # Whether a request ended in the read being parsed: one that begins after it in
        # the same read began mid-read, where llhttp cannot say.
        self.ended_in_read = self.began_mid_read = False

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
        self._unset_keepalive_if_required()
        self.ended_in_read = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # ws="none": the request is served as a plain one. Not logged (uvicorn warns
            # on each): a client must not be able to write the log at will.
            pass
        except httptools.HttpParserError:
            self._refuse_unparsable()
            return
        if self.reading_head:
            # The read it began in is counted only when the head began it: otherwise
            # part of that read was the previous request's (a head can then pass the
            # limit by at most one read before it is refused, never be refused early).
            if self.began_mid_read:
                self.began_mid_read = False
            else:
                self.head_bytes_read += len(data)
            if self.head_bytes_read > MAX_HEAD_BYTES:
                self.refused_head = True
                self._refuse_unparsable()
                return
        self._follow_parser()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head, self.head_size = True, 0
        self.began_mid_read = self.ended_in_read

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + FIELD_LINE_EXTRA)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        method = self.parser.get_method()
        self._count_head(len(method) + REQUEST_LINE_EXTRA + HEAD_END)
        self.reading_head, self.reading_body, self.head_bytes_read = False, True, 0
        self.answering += 1
        super().on_headers_complete()  # the app starts here: the head has passed

    def on_message_complete(self) -> None:
        self.reading_body = False
        self.ended_in_read = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self.answering -= 1
        super().on_response_complete()
        if self.deferred_refusal is not None and not self.answering:
            refusal, self.deferred_refusal = self.deferred_refusal, None
            self._refuse(refusal)
            return
        self._follow_parser()

    def shutdown(self) -> None:
        if self.phase == "closing":
            self.transport.close()
        else:
            super().shutdown()

    def _count_head(self, size: int) -> None:
        self.head_size += size
        if self.head_size > MAX_HEAD_BYTES:
            self.refused_head = True
            raise _HeadTooLarge()

    def _refuse_unparsable(self) -> None:
        """The server's answer to what the parser refused: problem+json, 431 or 400."""
        if self.refused_head:
            detail = f"The request head exceeds {MAX_HEAD_BYTES} bytes."
            refusal = render(HeadersTooLarge(detail))
        else:  # the parser's message may quote the client's bytes: it is not repeated
            detail = "The request is not valid HTTP/1.1."
            refusal = problem_response(400, framework_code(400), detail)
        if self._earlier_requests():
            # Their answers first; nothing more is parsed meanwhile.
            self.phase = "closing"
            self._cancel_deadline()
            _census.forget(self)
            self.deferred_refusal = refusal
            return
        self._refuse(refusal)

    def _earlier_requests(self) -> int:
        """Requests before the one being parsed that are still being answered."""
        return self.answering - (1 if self.reading_body else 0)

    # --- the phases and their deadlines ---

    def _follow_parser(self) -> None:
        """Move to the phase the parser's view of the client says, with that phase's deadline."""
        if self.phase == "closing" or self.transport.is_closing():
            return
        if self._earlier_requests() > 0:
            phase = "app"  # this one waits its turn, as a request not yet read would
        elif self.reading_head:
            phase = "head"
        elif self.reading_body:
            phase = "body"
        else:
            phase = "head"  # between requests
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
        if self.reading_head:  # part of a head: it is answered
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
        """The whole answer as bytes, written past uvicorn's response cycle: the connection
        closes after it."""
        request_id = new_request_id()
        answer.headers["Connection"] = "close"
        answer.headers["X-Request-ID"] = request_id
        if logged:  # the access log's line for a request the app never saw
            log.info("- - %d request_id=%s", answer.status_code, request_id)
        status = answer.status_code
        status_line = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
        headers = [*self.server_state.default_headers, *answer.raw_headers]
        lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        return status_line + lines + b"\r\n" + bytes(answer.body)
