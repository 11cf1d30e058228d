"""Kernel behaviour on every operation the app documents: a new slice is covered unedited.

The kernel, not each slice, answers for bearer authentication, the body cap, content
negotiation, strict JSON bodies, path parameter types and request ids (API.md
"Authentication", "Representations" (Error), "Limits and behaviour under bad input").
Rather than each slice's tests re-checking them, this module reads the app's own OpenAPI
document and checks, on every operation it lists, each behaviour that applies to it:

- declares OAuth2 security: no token, a garbage token, a wrongly signed token and the
  token of a deactivated user are each a 401 with `WWW-Authenticate: Bearer`;
- takes a JSON body: malformed JSON and an unknown field are 422, a body in another media
  type 415, a body over 64 KiB 413;
- has a UUID path parameter: a malformed one is 422;
- every operation: the response carries X-Request-ID; every error is problem+json.

Each refusal must change nothing: what an admin sees of every user is compared before and
after, and a login's refresh token must still work afterwards (deactivation, a password
change, logout and refresh itself would all spend or revoke it). The request sent is one
the operation would act on (see `example_body`), so a refusal that let it through shows.
The tests of refusals share one app and its accounts per database (tests/shared_app.py);
those of the request id, whose requests may well be acted on, and of a deactivated
user's token, which deactivates one, each build their own.

Path parameters are filled with a real user's id, so requests reach authentication and
validation instead of stopping at routing; secured operations get an admin's token when
the check is about the body, so the body is reached at all.

The operations are needed at collection time: they come from create_app(...).openapi() on
throwaway settings (it opens no database), and
test_the_document_the_app_serves_is_the_one_parametrised checks that list against the
/openapi.json the app under test serves.
"""

import json
import re
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI

from kernel.app import create_app
from kernel.db import Database
from kernel.sessions import deactivate_account
from kernel.users import User
from tests.conftest import make_settings
from tests.factories import Account, assert_problem, make_admin, refresh
from tests.kernel.helpers import access_claims, bearer, forge_token
from tests.shared_app import IN_THE_MODULE_LOOP, SharedApp

MAX_BODY_BYTES = 64 * 1024  # API.md "Limits": the contract's number, not the kernel's constant
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=every-operation"
FORM_MEDIA_TYPES = (FORM, MULTIPART)
OTHER_MEDIA_TYPES = ("text/plain", "application/xml", *FORM_MEDIA_TYPES)
OTHER_SECRET = "a-key-this-server-never-had-that-is-long-enough-for-hs256-0123"
UNKNOWN_FIELD = "no_body_has_this_field"
# One digit past CPython's int-from-string limit (sys.int_info.default_max_str_digits):
# an out-of-range number like any other, for the contract.
DIGITS_PAST_THE_LIMIT = 4301
MALFORMED_UUIDS = {"word": "not-a-uuid", "number": "123", "33-hex-digits": "0" * 33}
# What v1 documents (API.md). Fewer found means the classification below stopped seeing
# operations (or a slice was removed: then lower the floor with it), not that all is well.
AT_LEAST = {"operations": 13, "secured": 7, "with a JSON body": 8, "with a UUID in the path": 3}


# --- the operations, from the app's own document ------------------------------------------


def _openapi_document() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="userapi-openapi-") as folder:
        data_dir = Path(folder)
        settings = make_settings(f"sqlite+aiosqlite:///{data_dir / 'never-opened.db'}", data_dir)
        document: dict[str, Any] = create_app(settings).openapi()
    # As a client reads it: a JSON round trip, so it compares equal to the served one.
    parsed: dict[str, Any] = json.loads(json.dumps(document))
    return parsed


DOCUMENT = _openapi_document()
SCHEMAS: dict[str, Any] = DOCUMENT.get("components", {}).get("schemas", {})
_SECURITY_SCHEMES: dict[str, Any] = DOCUMENT.get("components", {}).get("securitySchemes", {})
OAUTH2_SCHEMES = {name for name, scheme in _SECURITY_SCHEMES.items() if scheme["type"] == "oauth2"}
# The OAuth2 password flow's token URL also takes that flow's form body: the security
# scheme documents that form, the operation's requestBody only its JSON alternative.
FORM_TOKEN_URLS = {
    scheme["flows"]["password"]["tokenUrl"]
    for scheme in _SECURITY_SCHEMES.values()
    if scheme["type"] == "oauth2" and "password" in scheme.get("flows", {})
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def secured(self) -> bool:
        return any(
            set(requirement) & OAUTH2_SCHEMES for requirement in self.spec.get("security", [])
        )

    @property
    def json_body(self) -> dict[str, Any] | None:
        """The schema of the JSON request body, or None when the operation takes none."""
        content: dict[str, Any] = self.spec.get("requestBody", {}).get("content", {})
        for media_type, entry in content.items():
            if media_type == "application/json" or media_type.endswith("+json"):
                return resolved(entry.get("schema", {}))
        return None

    @property
    def uuid_path_parameters(self) -> list[str]:
        return [
            parameter["name"]
            for parameter in self.spec.get("parameters", [])
            if parameter["in"] == "path" and parameter.get("schema", {}).get("format") == "uuid"
        ]

    def url(self, path_value: str) -> str:
        """The path with every parameter set to `path_value`."""
        return re.sub(r"\{[^}/]+\}", path_value, self.path)


def resolved(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema behind a `$ref`, or behind `anyOf: [X, null]` (an optional value)."""
    if "$ref" in schema:
        return resolved(SCHEMAS[schema["$ref"].rsplit("/", 1)[-1]])
    for branch in schema.get("anyOf", []):
        if branch.get("type") != "null":
            return resolved(branch)
    return schema


OPERATIONS = [
    Operation(method.upper(), path, spec)
    for path, item in DOCUMENT.get("paths", {}).items()
    for method, spec in item.items()
    if method in HTTP_METHODS
]
SECURED = [operation for operation in OPERATIONS if operation.secured]
WITH_JSON_BODY = [operation for operation in OPERATIONS if operation.json_body is not None]
WITH_UUID_PATH = [operation for operation in OPERATIONS if operation.uuid_path_parameters]
# A form is "another media type" everywhere except at the OAuth2 token URL, which takes it.
OTHER_MEDIA_TYPE_CASES = [
    pytest.param(operation, media_type, id=f"{operation}-{media_type.split(';')[0]}")
    for operation in WITH_JSON_BODY
    for media_type in OTHER_MEDIA_TYPES
    if not (media_type in FORM_MEDIA_TYPES and operation.path in FORM_TOKEN_URLS)
]


def each(operations: list[Operation]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("operation", operations, ids=str)


# --- requests -----------------------------------------------------------------------------


def example_value(name: str, field: dict[str, Any], user: Account) -> Any:
    """A value for a field named as API.md names fields, that this request should get past
    validation with; None to leave the field out."""
    if field.get("type") != "string":
        return None  # flags such as is_active / is_superuser would only get the body refused
    if "password" in name:
        return user.password  # every test account has the same one: right for the caller too
    if name == "email" or name.endswith("_email"):
        return f"every-operation-{uuid.uuid4().hex[:10]}@example.com"
    if name == "refresh_token":
        return user.refresh_token
    if field.get("format") == "uri":
        return "https://example.com/every-operation.png"
    text = "Every Operation"
    return text[: field.get("maxLength", len(text))]


def example_body(operation: Operation, user: Account) -> dict[str, Any] | None:
    """A JSON body the operation would act on: every string field its schema names, filled
    in; None when it takes no JSON body."""
    schema = operation.json_body
    if schema is None:
        return None
    body: dict[str, Any] = {}
    for name, field in schema.get("properties", {}).items():
        value = example_value(name, resolved(field), user)
        if value is not None:
            body[name] = value
    return body


def encoded(body: dict[str, Any], media_type: str) -> bytes:
    """The body as a client of that media type would send it; other types get the JSON text."""
    if media_type == FORM:
        return urlencode(body).encode()
    if media_type == MULTIPART:
        boundary = media_type.split("boundary=", 1)[1]
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            for name, value in body.items()
        ]
        return "".join([*parts, f"--{boundary}--\r\n"]).encode()
    return json.dumps(body).encode()


def padded(body: dict[str, Any], size: int) -> bytes:
    """The JSON of `body`, padded with insignificant whitespace to exactly `size` bytes."""
    text = json.dumps(body).encode()
    return text[:-1] + b" " * (size - len(text)) + b"}"


async def chunked(payload: bytes, chunk_size: int = 16 * 1024) -> AsyncIterator[bytes]:
    """The payload as a stream: httpx then sends no Content-Length."""
    for start in range(0, len(payload), chunk_size):
        yield payload[start : start + chunk_size]


async def send(
    client: httpx.AsyncClient,
    operation: Operation,
    user: Account,
    *,
    headers: dict[str, str],
    content: bytes | AsyncIterator[bytes] | None = None,
    media_type: str = "application/json",
    path_value: str | None = None,
) -> httpx.Response:
    """The operation on `user`'s id, with its example body unless `content` is given."""
    if content is None:
        body = example_body(operation, user)
        content = None if body is None else json.dumps(body).encode()
    if content is not None:
        headers = headers | {"Content-Type": media_type}
    url = operation.url(user.id if path_value is None else path_value)
    return await client.request(operation.method, url, content=content, headers=headers)


def credentials(operation: Operation, admin: Account) -> dict[str, str]:
    """An admin's token where the operation needs one, so the check reaches the body."""
    return admin.headers if operation.secured else {}


# --- outcomes -----------------------------------------------------------------------------


def assert_refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A problem+json with this status and code (and for a 401, WWW-Authenticate: Bearer)."""
    problem = assert_problem(response, status, code)
    assert response.headers.get("x-request-id"), "every response carries X-Request-ID"
    return problem


async def observable_state(client: httpx.AsyncClient, admin: Account) -> Any:
    """Every user's full record, as an admin sees it."""
    response = await client.get("/api/v1/users", headers=admin.headers, params={"limit": 100})
    assert response.status_code == 200, response.text
    return response.json()


async def assert_unchanged(
    client: httpx.AsyncClient, before: Any, admin: Account, user: Account
) -> None:
    assert await observable_state(client, admin) == before
    # Deactivation, a password change and logout revoke this login; refresh spends it.
    still_works = await refresh(client, user.refresh_token)
    assert still_works.status_code == 200, still_works.text
    # That one is spent: the user goes on with the pair it was given, as a client would.
    tokens = still_works.json()
    user.access_token, user.refresh_token = tokens["access_token"], tokens["refresh_token"]


# --- the parametrisation itself -----------------------------------------------------------


def test_the_document_yields_operations_of_every_kind() -> None:
    found = {
        "operations": len(OPERATIONS),
        "secured": len(SECURED),
        "with a JSON body": len(WITH_JSON_BODY),
        "with a UUID in the path": len(WITH_UUID_PATH),
    }

    assert {kind: count for kind, count in found.items() if count < AT_LEAST[kind]} == {}, found
    # The operations spared the form case are real ones, not a stale or mistaken path.
    assert {operation.path for operation in WITH_JSON_BODY} >= FORM_TOKEN_URLS


async def test_the_document_the_app_serves_is_the_one_parametrised(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/openapi.json")

    assert response.status_code == 200, response.text
    assert response.json() == DOCUMENT


# --- authentication -----------------------------------------------------------------------


async def _refused_with_token(
    client: httpx.AsyncClient,
    admin: Account,
    user: Account,
    operation: Operation,
    headers: dict[str, str],
    code: str,
) -> None:
    before = await observable_state(client, admin)

    response = await send(client, operation, user, headers=headers)

    assert_refused(response, 401, code)
    await assert_unchanged(client, before, admin, user)


@IN_THE_MODULE_LOOP
@each(SECURED)
async def test_operation_without_a_token_is_401(
    shared_app: SharedApp, operation: Operation
) -> None:
    client, admin, user = shared_app.client, shared_app.admin, shared_app.user
    await _refused_with_token(client, admin, user, operation, {}, "not_authenticated")


@IN_THE_MODULE_LOOP
@each(SECURED)
async def test_operation_with_a_garbage_token_is_401(
    shared_app: SharedApp, operation: Operation
) -> None:
    client, admin, user = shared_app.client, shared_app.admin, shared_app.user
    headers = bearer("not-a-jwt-at-all")

    await _refused_with_token(client, admin, user, operation, headers, "invalid_token")


@IN_THE_MODULE_LOOP
@each(SECURED)
async def test_operation_with_a_wrongly_signed_token_is_401(
    shared_app: SharedApp, operation: Operation
) -> None:
    client, admin, user = shared_app.client, shared_app.admin, shared_app.user
    # Claims the server would accept for `user`, under the server's key id: only the
    # signature is wrong.
    headers = bearer(forge_token(access_claims(user), key=OTHER_SECRET))

    await _refused_with_token(client, admin, user, operation, headers, "invalid_token")


@each(SECURED)
async def test_operation_with_a_deactivated_users_token_is_401(
    client: httpx.AsyncClient, app: FastAPI, admin: Account, user: Account, operation: Operation
) -> None:
    # An administrator's token: a route that forgot the check would let this one do most.
    former_admin = await make_admin(client, app)
    database: Database = app.state.database
    async with database.session() as session:
        record = await session.get(User, uuid.UUID(former_admin.id))
        assert record is not None
        await deactivate_account(session, record)

    await _refused_with_token(client, admin, user, operation, former_admin.headers, "invalid_token")


# --- request bodies -----------------------------------------------------------------------


async def _refused_body(
    client: httpx.AsyncClient,
    admin: Account,
    user: Account,
    operation: Operation,
    content: bytes | AsyncIterator[bytes],
    status: int,
    code: str,
    *,
    media_type: str = "application/json",
) -> dict[str, Any]:
    before = await observable_state(client, admin)

    response = await send(
        client,
        operation,
        user,
        headers=credentials(operation, admin),
        content=content,
        media_type=media_type,
    )

    problem = assert_refused(response, status, code)
    await assert_unchanged(client, before, admin, user)
    return problem


def _example(operation: Operation, user: Account) -> dict[str, Any]:
    body = example_body(operation, user)
    assert body is not None
    return body


@IN_THE_MODULE_LOOP
@each(WITH_JSON_BODY)
async def test_operation_with_malformed_json_is_422(
    shared_app: SharedApp, operation: Operation
) -> None:
    client, admin, user = shared_app.client, shared_app.admin, shared_app.user
    truncated = json.dumps(_example(operation, user)).encode()[:-1]  # no closing brace

    problem = await _refused_body(
        client, admin, user, operation, truncated, 422, "validation_error"
    )

    assert problem["errors"]
    assert all({"loc", "msg", "type"} <= set(issue) for issue in problem["errors"])


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize(("operation", "media_type"), OTHER_MEDIA_TYPE_CASES)
async def test_operation_with_a_body_in_another_media_type_is_415(
    shared_app: SharedApp, operation: Operation, media_type: str
) -> None:
    client, admin, user = shared_app.client, shared_app.admin, shared_app.user
    content = encoded(_example(operation, user), media_type)

    await _refused_body(
        client,
        admin,
        user,
        operation,
        content,
        415,
        "unsupported_media_type",
        media_type=media_type,
    )


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@each(WITH_JSON_BODY)
async def test_operation_with_a_body_over_64_kib_is_413(
    shared_app: SharedApp, operation: Operation, framing: str
) -> None:
    client, admin, user = shared_app.client, shared_app.admin, shared_app.user
    oversized = padded(_example(operation, user), MAX_BODY_BYTES + 1)
    content = chunked(oversized) if framing == "chunked" else oversized

    await _refused_body(client, admin, user, operation, content, 413, "payload_too_large")


@IN_THE_MODULE_LOOP
@each(WITH_JSON_BODY)
async def test_operation_with_an_unknown_field_is_422(
    shared_app: SharedApp, operation: Operation
) -> None:
    client, admin, user = shared_app.client, shared_app.admin, shared_app.user
    body = _example(operation, user) | {UNKNOWN_FIELD: "x"}

    problem = await _refused_body(
        client, admin, user, operation, json.dumps(body).encode(), 422, "validation_error"
    )

    assert ["body", UNKNOWN_FIELD] in [issue["loc"] for issue in problem["errors"]]


@IN_THE_MODULE_LOOP
@each(WITH_JSON_BODY)
async def test_operation_with_a_number_of_thousands_of_digits_is_422(
    shared_app: SharedApp, operation: Operation
) -> None:
    client, admin, user = shared_app.client, shared_app.admin, shared_app.user
    # The first field of a body the operation would act on, set to a huge integer.
    example = _example(operation, user)
    name = next(iter(example))
    huge = "9" * DIGITS_PAST_THE_LIMIT
    content = json.dumps(example | {name: "HUGE"}).replace('"HUGE"', huge, 1).encode()

    problem = await _refused_body(client, admin, user, operation, content, 422, "validation_error")

    assert problem["errors"]


# --- path parameters ----------------------------------------------------------------------


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize("malformed", MALFORMED_UUIDS.values(), ids=MALFORMED_UUIDS.keys())
@each(WITH_UUID_PATH)
async def test_operation_with_a_malformed_uuid_in_the_path_is_422(
    shared_app: SharedApp, operation: Operation, malformed: str
) -> None:
    client, admin, user = shared_app.client, shared_app.admin, shared_app.user
    before = await observable_state(client, admin)

    response = await send(
        client, operation, user, headers=credentials(operation, admin), path_value=malformed
    )

    problem = assert_refused(response, 422, "validation_error")
    locations = [issue["loc"] for issue in problem["errors"]]
    assert all(["path", name] in locations for name in operation.uuid_path_parameters)
    await assert_unchanged(client, before, admin, user)


# --- every operation ----------------------------------------------------------------------


def assert_problem_if_error(response: httpx.Response) -> None:
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json", response.text
        assert response.json()["code"]


@each(OPERATIONS)
async def test_operation_echoes_the_request_id_it_was_sent(
    client: httpx.AsyncClient, admin: Account, user: Account, operation: Operation
) -> None:
    request_id = f"every-operation-{uuid.uuid4().hex}"
    headers = credentials(operation, admin) | {"X-Request-ID": request_id}

    response = await send(client, operation, user, headers=headers)

    assert response.headers["x-request-id"] == request_id
    assert_problem_if_error(response)


@each(OPERATIONS)
async def test_operation_generates_a_request_id_when_none_is_sent(
    client: httpx.AsyncClient, admin: Account, user: Account, operation: Operation
) -> None:
    response = await send(client, operation, user, headers=credentials(operation, admin))

    assert response.headers["x-request-id"]
    assert_problem_if_error(response)


# --- paths --------------------------------------------------------------------------------

# Served routes the document leaves out (the account pages), and the documents themselves.
UNDOCUMENTED_PATHS = ["/account/reset-password", "/account/verify-email", "/docs", "/openapi.json"]


@IN_THE_MODULE_LOOP
@each(OPERATIONS)
async def test_operation_with_a_trailing_slash_is_404_never_a_redirect(
    shared_app: SharedApp, operation: Operation
) -> None:
    client, admin, user = shared_app.client, shared_app.admin, shared_app.user
    # A redirect would point the client at the Host it sent, and a 307 makes it send its
    # credentials (or a password) there again.
    before = await observable_state(client, admin)
    body = example_body(operation, user)
    content = None if body is None else json.dumps(body).encode()
    headers = credentials(operation, admin) | {"Content-Type": "application/json"}

    response = await client.request(
        operation.method, operation.url(user.id) + "/", content=content, headers=headers
    )

    assert_refused(response, 404, "not_found")
    assert "location" not in response.headers
    await assert_unchanged(client, before, admin, user)


@pytest.mark.parametrize("path", UNDOCUMENTED_PATHS)
async def test_a_served_page_with_a_trailing_slash_is_404(
    client: httpx.AsyncClient, path: str
) -> None:
    assert (await client.get(path)).status_code == 200  # the page itself is there

    response = await client.get(path + "/")

    assert_refused(response, 404, "not_found")
    assert "location" not in response.headers
