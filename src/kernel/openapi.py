"""The OpenAPI document tells the truth: errors are problem+json, and every route lists them."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from kernel.errors import PROBLEM_MEDIA_TYPE, Problem
from kernel.slices import API_PREFIX

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# Answers any route with a body can give before its handler runs.
_BODY_ERRORS = {
    "413": "Payload Too Large: `payload_too_large`",
    "415": "Unsupported Media Type: `unsupported_media_type`",
    "422": "Unprocessable Content: `validation_error`",
}
_AUTH_ERRORS = {"401": "Unauthorized: `not_authenticated`, `invalid_token`"}
# Answers any route that touches the database can give.
_SERVER_ERRORS = {
    "500": "Internal Server Error: `internal_error`",
    "503": "Service Unavailable: `database_unavailable`",
}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}}}


# What each group of operations is for, shown above it in /docs. A slice's own tag not
# listed here is declared with a plain description (a new slice needs no kernel edit).
TAG_DESCRIPTIONS = {
    "auth": "Register, log in, refresh and log out; recover a password, verify an email.",
    "users": "Read, update, deactivate, erase and export accounts.",
    "sessions": "Each login is a session: list them, and end one or all the others.",
    "events": "The security audit trail: who did what to which account, when, from where.",
    "discovery": "What other services need to verify our access tokens.",
    "operations": "Liveness and readiness probes for orchestrators and load balancers.",
}
DESCRIPTION = (
    "Accounts for REST clients and mobile-app backends: registration, login with "
    "rotating refresh tokens and sessions, profiles, email verification and password "
    "reset, deactivation, erasure, data export and a security audit trail. Errors are "
    "`application/problem+json` with a stable `code`. The project's `docs/api.md` is "
    "the reference in prose."
)


def _split_docstring(operation: dict[str, Any]) -> None:
    """A route's docstring: its first paragraph is the summary, the rest the description
    (FastAPI would take the whole as the description, and title-case the name)."""
    text = operation.pop("description", "").strip()
    summary, _, rest = text.partition("\n\n")
    if summary:
        operation["summary"] = " ".join(summary.split())
    if rest.strip():
        operation["description"] = rest.strip()


def _rewrite_operation(operation: dict[str, Any], *, uses_database: bool) -> None:
    _split_docstring(operation)
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for status, response in responses.items():
        if status.isdigit() and int(status) >= 400:
            content = response.get("content", {})
            schema = content.get("application/json", {}).get("schema", _PROBLEM_REF)
            if schema.get("$ref", "").endswith("/HTTPValidationError"):
                schema = _PROBLEM_REF
            response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": schema}}
    extra: dict[str, str] = {}
    if "requestBody" in operation:
        extra |= _BODY_ERRORS
    if operation.get("parameters"):
        extra["422"] = _BODY_ERRORS["422"]
    if operation.get("security"):
        extra |= _AUTH_ERRORS
    if uses_database:
        extra |= _SERVER_ERRORS
    for status, description in extra.items():
        if status not in responses:
            responses[status] = _problem(description)
            continue
        # Already documented by the route: add the generic code to its list.
        codes = description.split(": ", 1)[1]
        if codes not in responses[status]["description"]:
            responses[status]["description"] += f", {codes}"


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=DESCRIPTION,
            routes=app.routes,
            contact={"name": "userapi maintainers"},
            license_info={"name": "MIT", "identifier": "MIT"},
            # Relative: /docs calls the origin it was loaded from, whatever the host name.
            servers=[{"url": "/", "description": "This server"}],
        )
        for path, path_item in schema.get("paths", {}).items():
            for operation in path_item.values():
                _rewrite_operation(operation, uses_database=path.startswith(API_PREFIX))
        used = sorted(
            {
                tag
                for item in schema["paths"].values()
                for op in item.values()
                for tag in op.get("tags", [])
            }
        )
        schema["tags"] = [
            {"name": tag, "description": TAG_DESCRIPTIONS.get(tag, f"The {tag} feature.")}
            for tag in used
        ]
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        if "Problem" not in components:
            problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(problem.pop("$defs", {}))
            components["Problem"] = problem
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
