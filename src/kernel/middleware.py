"""The ASGI middleware every request passes, outermost first.

RequestContextMiddleware: X-Request-ID, the access log line, the last-resort 500.
ProblemCORSMiddleware (when CORS_ORIGINS is set): Starlette's CORS, refusals as problem+json.
BodyGuardMiddleware: the 64 KiB body cap, strict JSON checks, and the 500 for a route's bug.

The early answers (413, 422, 500) are built innermost so that they still pass through CORS
on their way out: a browser shows a response without Access-Control-Allow-Origin to its
script as a network error, never as the problem+json we sent.
"""

import json
import logging
import re
import secrets
import sys
import time
from typing import Any

from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kernel.errors import InvalidInput, problem_response, render
from kernel.media_types import is_json, media_type
from kernel.metrics import UNMATCHED_ROUTE, Metrics
from kernel.slices import route_template

MAX_BODY_BYTES = 64 * 1024
MAX_REQUEST_ID_LENGTH = 200
# API.md: a sent id is echoed. Printable ASCII is safe in a header and on one log line.
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")
# An id with a space, quote or backslash is logged quoted, so it cannot pose as other fields.
_BARE_LOG_VALUE = re.compile(r"[!#-\[\]-~]+")
# Bytes a log line must not carry raw: controls (newlines forge lines), space, non-ASCII.
_UNSAFE_PATH_BYTE = re.compile(rb"[^\x21-\x7e]")
log = logging.getLogger("userapi.access")


def request_id_for(headers: Headers) -> str:
    """The client's X-Request-ID when it is 1-200 printable ASCII characters, else a new one."""
    # Whitespace around a field value is not part of it (RFC 9110 5.5), and a response
    # header may not start or end with it.
    sent = headers.get("x-request-id", "").strip()
    if len(sent) <= MAX_REQUEST_ID_LENGTH and _PRINTABLE_ASCII.fullmatch(sent):
        return sent
    return new_request_id()


def new_request_id() -> str:
    """32 random hex digits (uuid4().hex's form, without building a UUID on every request)."""
    return secrets.token_hex(16)


def log_value(value: str) -> str:
    return value if _BARE_LOG_VALUE.fullmatch(value) else json.dumps(value)


def log_path(scope: Scope) -> str:
    """The path as the client sent it, still percent-encoded, with no byte that breaks a line.

    scope["path"] is decoded: "%0A" there is a newline that would forge a log line.
    """
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    return _UNSAFE_PATH_BYTE.sub(lambda byte: b"%%%02X" % byte[0][0], raw).decode("latin-1")


def _request_id(scope: Scope) -> str:
    request_id: str = scope.get("state", {}).get("request_id", "-")
    return request_id


async def _internal_error(scope: Scope, receive: Receive, send: Send) -> None:
    """Log the exception being handled with the request id; answer a 500 that reveals nothing."""
    log.exception("unhandled error request_id=%s", log_value(_request_id(scope)))
    detail = "The server could not complete the request."
    await problem_response(500, "internal_error", detail)(scope, receive, send)


def request_log_fields(scope: Scope, status: int | None, seconds: float) -> dict[str, Any]:
    """The request log's fields, in this one place: the JSON object and the text line
    show the same. Never a header or a query string, where tokens and codes travel."""
    state = scope.get("state", {})
    client = scope.get("client")
    return {
        "request_id": state.get("request_id", "-"),
        "method": scope["method"],
        "route": route_template(scope),
        "path": log_path(scope),
        "status": status,  # None: the client left before any response
        "duration_ms": round(seconds * 1000, 1),
        "user_id": state.get("user_id"),  # set by kernel.deps once a token is verified
        "client_ip": client[0] if client else None,
    }


def _log_request(fields: dict[str, Any]) -> None:
    text = f"{fields['method']} {fields['path']} {fields['status'] or '-'} "
    text += f"{fields['duration_ms']:.1f}ms"
    if fields["user_id"]:
        text += f" user_id={fields['user_id']}"
    if fields["client_ip"]:
        text += f" client={log_value(fields['client_ip'])}"
    # Last, so that a quoted id cannot be read as the start of another field.
    text += f" request_id={log_value(fields['request_id'])}"
    log.info("%s", text, extra=fields)


class RequestContextMiddleware:
    """Outermost: every response, CORS preflights and early refusals included, gets an id,
    one access-log line and, with METRICS_ENABLED, one histogram observation."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_for(Headers(scope=scope))
        scope.setdefault("state", {})["request_id"] = request_id
        status: int | None = None  # stays None if the client left before any response
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                id_header = (b"x-request-id", request_id.encode("ascii"))
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # The last net, for a failure outside BodyGuardMiddleware (in CORS, say).
            if not response_started:
                await _internal_error(scope, receive, send_with_id)
            else:
                log.exception("unhandled error request_id=%s", log_value(request_id))
        finally:
            seconds = time.perf_counter() - started
            # Both off (LOG_LEVEL=WARNING, no metrics): nothing to build the fields for.
            if self.metrics is not None or log.isEnabledFor(logging.INFO):
                self._record(scope, status, seconds)

    def _record(self, scope: Scope, status: int | None, seconds: float) -> None:
        fields = request_log_fields(scope, status, seconds)
        _log_request(fields)
        if self.metrics is not None:
            self.metrics.observe_request(
                fields["method"],
                fields["route"] or UNMATCHED_ROUTE,
                str(status) if status else "none",
                seconds,
            )


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, except that a refused preflight is problem+json like every error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        # Starlette's text names what was refused: "Disallowed CORS origin, headers".
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-length", "content-type")
        }
        detail = f"This cross-origin request is not allowed ({refused})."
        return problem_response(response.status_code, "cors_rejected", detail, headers=headers)


class BodyGuardMiddleware:
    """Innermost: refuse an oversized or ambiguous body before any route parses it, and
    turn a route's unexpected exception into a 500 that still passes through CORS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            headers = Headers(scope=scope)
            try:
                body = await _read_body(receive, headers)
            except _BodyTooLarge:
                detail = f"The body exceeds {MAX_BODY_BYTES} bytes."
                await problem_response(413, "payload_too_large", detail)(scope, receive, send)
                return
            except _ClientGone:
                return  # nobody is left to answer
            reason = _json_problem(body) if body and is_json(media_type(headers)) else None
            if reason:
                await render(InvalidInput.at(["body"], reason, "json_invalid"))(
                    scope, receive, send
                )
                return
            await self.app(scope, _replay(body, receive), tracking_send)
        except Exception:
            if response_started:
                raise  # too late for a 500: the outer net logs it and the server aborts
            await _internal_error(scope, receive, send)


class _DuplicateKey(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # The standard parser keeps the last of two equal keys; an ambiguous body is refused.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateKey("duplicate key in JSON object")
    return result


def _json_problem(body: bytes) -> str | None:
    """Why a JSON body is unacceptable before any route parses it, or None."""
    try:
        json.loads(body, object_pairs_hook=_reject_duplicates)
    except _DuplicateKey as error:
        return str(error)
    except RecursionError:
        return "JSON nested too deeply"
    except UnicodeDecodeError:
        return "body is not valid UTF-8"
    except json.JSONDecodeError:
        return None  # plain syntax errors: FastAPI reports them with their position
    except ValueError:
        # CPython refuses to convert an integer of more than sys.get_int_max_str_digits()
        # digits (a quadratic-time conversion); FastAPI would call that a 400. It is an
        # out-of-range number like any other, whatever the route.
        return f"number out of range: more than {sys.get_int_max_str_digits()} digits"
    return None


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


async def _read_body(receive: Receive, headers: Headers) -> bytes:
    """The whole body; _BodyTooLarge as soon as it passes the cap, chunked or not, and
    _ClientGone if the client hangs up before sending all of it."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone  # a truncated body must never reach a route as if complete
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
