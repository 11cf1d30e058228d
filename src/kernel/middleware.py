"""One ASGI middleware for what every request needs: an id, a size cap, an access log, a net."""

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kernel.errors import ValidationIssue, problem_response, validation_problem
from kernel.transport import is_json

MAX_BODY_BYTES = 64 * 1024
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
log = logging.getLogger("userapi.access")


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
    except ValueError:
        return None  # plain syntax errors: FastAPI reports them with their position
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        sent_id = headers.get("x-request-id", "")
        request_id = sent_id if _CLIENT_REQUEST_ID.match(sent_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            body, too_large = await _read_body(receive, headers)
            if too_large:
                await problem_response(
                    413, "payload_too_large", f"The body exceeds {MAX_BODY_BYTES} bytes."
                )(scope, receive, send_with_id)
                return
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            reason = _json_problem(body) if body and is_json(media) else None
            if reason:
                issue = ValidationIssue(loc=["body"], msg=reason, type="json_invalid")
                await validation_problem([issue])(scope, receive, send_with_id)
                return
            await self.app(scope, _replay(body, receive), send_with_id)
        except Exception:
            # The last net: log with the request id, answer a bare 500 that reveals nothing.
            log.exception("unhandled error request_id=%s", request_id)
            if not response_started:
                await problem_response(
                    500, "internal_error", "The server could not complete the request."
                )(scope, receive, send_with_id)
        finally:
            log.info(
                "%s %s %s %.1fms request_id=%s",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
                request_id,
            )


async def _read_body(receive: Receive, headers: Headers) -> tuple[bytes, bool]:
    """The whole body, or (b"", True) as soon as it passes the cap, chunked or not."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return b"", True
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), False


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
