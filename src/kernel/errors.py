"""Typed errors and the one place that renders them as RFC 9457 problem+json."""

import json
import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("userapi.errors")


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details, with a stable machine-readable `code`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Conflict",
                    "status": 409,
                    "detail": "This email is already registered.",
                    "code": "email_taken",
                }
            ]
        }
    )

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    errors: list[ValidationIssue] | None = None


class ProblemError(Exception):
    """Base of every error a route raises on purpose; subclasses fix status and code."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    detail: ClassVar[str] = "The server could not complete the request."
    # True when the request's writes so far must be committed despite the error.
    keeps_changes: ClassVar[bool] = False

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[ValidationIssue] | None = None,
    ):
        super().__init__(detail or self.detail)
        self.message = detail or self.detail
        self.headers = dict(headers or {})
        self.errors = list(errors) if errors else None


class InvalidInput(ProblemError):
    """422 with the `errors` list: what schema validation says, and rules it cannot state."""

    status, code, detail = 422, "validation_error", "The request is not valid."

    @classmethod
    def at(cls, loc: Sequence[str | int], msg: str, kind: str) -> "InvalidInput":
        return cls(errors=[ValidationIssue(loc=list(loc), msg=msg, type=kind)])


class NotAuthenticated(ProblemError):
    status, code, detail = 401, "not_authenticated", "Authentication is required."


class InvalidToken(ProblemError):
    status, code, detail = 401, "invalid_token", "The token is invalid, expired or revoked."


class Forbidden(ProblemError):
    status, code, detail = 403, "forbidden", "You are not allowed to do this."


class UserNotFound(ProblemError):
    status, code, detail = 404, "user_not_found", "No such user."


class EmailTaken(ProblemError):
    status, code, detail = 409, "email_taken", "This email address is already registered."


class InvalidCurrentPassword(ProblemError):
    status, code, detail = 403, "invalid_current_password", "The current password is wrong."


class LastAdmin(ProblemError):
    status, code, detail = 409, "last_admin", "This would leave no active administrator."


class TooManyAttempts(ProblemError):
    status, code, detail = 429, "too_many_attempts", "Too many failed attempts; try again later."


class PreconditionFailed(ProblemError):
    status, code, detail = 412, "precondition_failed", "The resource has changed (If-Match)."


class MethodNotAllowed(ProblemError):
    status, code, detail = 405, "method_not_allowed", "Method Not Allowed"


class UnsupportedMediaType(ProblemError):
    status, code, detail = 415, "unsupported_media_type", "This content type is not accepted."


class ServerBusy(ProblemError):
    status, code, detail = 503, "server_busy", "The server is busy; retry shortly."


class RequestTimeout(ProblemError):
    status, code, detail = 408, "request_timeout", "The request did not arrive in time."


class HeadersTooLarge(ProblemError):
    status, code, detail = 431, "headers_too_large", "The request headers are too large."


class DatabaseUnavailable(ProblemError):
    status, code, detail = 503, "database_unavailable", "The database is unavailable."


class SchemaNotReady(ProblemError):
    status, code = 503, "schema_not_ready"
    detail = "The database schema is not one this version of the code can run on."


RETRY_AFTER_OUTAGE = {"Retry-After": "5"}


# Codes for errors raised by the framework (or the HTTP server) itself rather than by a slice.
_FRAMEWORK_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    501: "not_implemented",
}


def framework_code(status: int) -> str:
    """The stable code of an error status the framework or the server answers by itself."""
    return _FRAMEWORK_CODES.get(status, "http_error")


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    errors: Sequence[ValidationIssue] | None = None,
) -> Response:
    problem = Problem(
        title=HTTPStatus(status).phrase, status=status, detail=detail, code=code, errors=errors
    )
    # ensure_ascii: a client-sent field name may hold an unpaired surrogate, which
    # cannot be encoded as UTF-8 but is safe as a \\u escape.
    body = json.dumps(problem.model_dump(exclude_none=True), ensure_ascii=True)
    response = Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    if status == 401:
        response.headers.setdefault("WWW-Authenticate", "Bearer")
    return response


def validation_issues(errors: Sequence[Any]) -> list[ValidationIssue]:
    """Keep loc, msg and type only: the input may be a password and is never echoed."""
    return [
        ValidationIssue(
            loc=[part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            msg=str(error.get("msg", "")),
            type=str(error.get("type", "value_error")),
        )
        for error in errors
    ]


def render(error: ProblemError) -> Response:
    """The one renderer: a ProblemError as application/problem+json."""
    return problem_response(
        error.status, error.code, error.message, headers=error.headers, errors=error.errors
    )


async def _on_problem(_: Request, error: Exception) -> Response:
    assert isinstance(error, ProblemError)
    return render(error)


async def _on_validation(_: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    return render(InvalidInput(errors=validation_issues(error.errors())))


def _allowed_methods(request: Request, first_match: str) -> str:
    """Every method of the path's own item in /openapi.json, not only those of the first
    route that matched: a literal path (/users/me) is its own item, even where a
    templated one (/users/{user_id}) would match it too."""
    matches = [
        (literal, methods)
        for pattern, literal, methods in getattr(request.app.state, "slice_methods", [])
        if pattern.match(request.url.path)
    ]
    if any(literal for literal, _ in matches):
        matches = [(literal, methods) for literal, methods in matches if literal]
    allowed = {method for _, methods in matches for method in methods}
    if not allowed:  # a route outside the slices and the kernel's API routes (/docs)
        allowed = {method.strip() for method in first_match.split(",") if method.strip()}
    return ", ".join(sorted(allowed))


async def _on_http(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    status = error.status_code
    code = framework_code(status)
    detail = error.detail if isinstance(error.detail, str) else HTTPStatus(status).description
    headers = dict(error.headers or {})
    if status == 405:
        headers["Allow"] = _allowed_methods(request, headers.get("Allow", ""))
    return problem_response(status, code, detail, headers=headers)


async def _on_stale(_: Request, __: Exception) -> Response:
    # A concurrent writer bumped the row's version between our read and our update.
    return render(PreconditionFailed())


# SQLSTATE classes that mean "the database is not there for us right now": connection
# exceptions, insufficient resources, object not in prerequisite state (a database not
# accepting connections), operator intervention (shutdown, restart).
_OUTAGE_SQLSTATE_CLASSES = ("08", "53", "55", "57")


# SQLite reports a missing table and a locked file alike as OperationalError: only
# these mean that the database itself is not there for us.
_SQLITE_OUTAGE_MESSAGES = ("database is locked", "unable to open", "disk i/o error")


def is_outage(error: Exception) -> bool:
    """Whether a database error means the database is not there for us (503)."""
    if isinstance(error, sa_exc.TimeoutError):
        return True  # no pooled connection came free in DB_TIMEOUT_SECONDS
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    if error.connection_invalidated or isinstance(error, sa_exc.InterfaceError):
        return True
    sqlstate = str(getattr(error.orig, "sqlstate", None) or "")
    if sqlstate:
        return sqlstate[:2] in _OUTAGE_SQLSTATE_CLASSES
    if isinstance(error, sa_exc.OperationalError):
        message = str(error.orig).lower()
        return not message or any(part in message for part in _SQLITE_OUTAGE_MESSAGES)
    return False


async def _on_database_error(request: Request, error: Exception) -> Response:
    request_id = request.scope.get("state", {}).get("request_id", "-")
    if not is_outage(error):
        # A statement failed for a reason no client caused: a bug, logged, never shown.
        log.error("database error request_id=%s", request_id, exc_info=error)
        return problem_response(500, "internal_error", ProblemError.detail)
    log.warning("database unavailable: %s request_id=%s", type(error).__name__, request_id)
    return render(DatabaseUnavailable(headers=RETRY_AFTER_OUTAGE))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(StaleDataError, _on_stale)
    # Database errors only: any other exception (an OSError reading a file, say) is a
    # bug, answered 500 and logged with its traceback by the middleware.
    for database_error in (sa_exc.DBAPIError, sa_exc.TimeoutError):
        app.add_exception_handler(database_error, _on_database_error)


def problem_responses(*errors: type[ProblemError]) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry documenting each error a route can raise, by status."""
    codes: dict[int, list[str]] = {}
    for error in errors:
        codes.setdefault(error.status, []).append(f"`{error.code}`")
    return {
        status: {
            "model": Problem,
            "description": f"{HTTPStatus(status).phrase}: {', '.join(names)}",
        }
        for status, names in sorted(codes.items())
    }
