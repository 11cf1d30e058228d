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


def _rewrite_operation(operation: dict[str, Any], *, uses_database: bool) -> None:
    description = operation.get("description", "").strip()
    if description and "\n" not in description:
        # A route's one-line docstring is its summary (FastAPI would title-case its name).
        operation["summary"] = operation.pop("description").strip()
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
            routes=app.routes,
        )
        for path, path_item in schema.get("paths", {}).items():
            for operation in path_item.values():
                _rewrite_operation(operation, uses_database=path.startswith(API_PREFIX))
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
