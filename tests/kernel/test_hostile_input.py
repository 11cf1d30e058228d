"""Hostile input on every route that takes input: a 4xx problem, and nothing changes.

Each case sends one hostile request as a signed-in user, then compares everything an
admin can see (every user's full record) with what it was before. The cases share one
app and its accounts per database (tests/shared_app.py); the names that must round-trip
are stored, and get an app of their own.
"""

from typing import Any

import httpx
import pytest

from tests.factories import Account
from tests.shared_app import IN_THE_MODULE_LOOP, SharedApp

LONG = "x" * 10_000
# The last is past CPython's int-from-string digit limit (4300 by default).
HUGE_NUMBERS = [
    str(2**63),
    str(2**63 + 1),
    str(2**64),
    "1" + "0" * 40,
    "-1",
    str(-(2**63)),
    "9" * 4301,
]

# (method, path, raw JSON body) for every JSON route; "{me}" is replaced by the user's id.
JSON_ROUTES = [
    (
        "POST",
        "/api/v1/auth/register",
        '{"email": "h@example.com", "password": %s, "first_name": %s, "last_name": "L"}',
    ),
    ("POST", "/api/v1/auth/login", '{"email": "h@example.com", "password": %s, "x": %s}'),
    ("POST", "/api/v1/auth/refresh", '{"refresh_token": %s, "x": %s}'),
    ("POST", "/api/v1/auth/logout", '{"refresh_token": %s, "x": %s}'),
    ("PATCH", "/api/v1/users/me", '{"bio": %s, "first_name": %s}'),
    ("PATCH", "/api/v1/users/{me}", '{"last_name": %s, "first_name": %s}'),
    ("POST", "/api/v1/users/me/deactivate", '{"current_password": %s, "x": %s}'),
    ("POST", "/api/v1/users/{me}/deactivate", '{"current_password": %s, "x": %s}'),
    ("POST", "/api/v1/users/me/erase", '{"current_password": %s, "x": %s}'),
    ("POST", "/api/v1/users/{me}/erase", '{"current_password": %s, "x": %s}'),
    ("POST", "/api/v1/auth/password-reset", '{"email": %s, "x": %s}'),
    ("POST", "/api/v1/auth/password-reset/confirm", '{"token": %s, "new_password": %s}'),
    ("POST", "/api/v1/auth/verify-email", '{"token": %s, "x": %s}'),
]
HOSTILE_STRINGS = {
    "nul": '"a\\u0000b"',
    "lone-surrogate": '"a\\ud800b"',
    "ten-thousand-chars": f'"{LONG}"',
    "number-not-string": "12345678901234567890",
    "nested-object": '{"$gt": ""}',
}
HOSTILE_BODIES = {
    "duplicate-keys": '{"refresh_token": "a", "refresh_token": "b"}',
    "array": '[{"refresh_token": "a"}]',
    "string": '"refresh_token"',
    "number": "42",
    "null": "null",
    "truncated": '{"refresh_token": "a"',
    "deep-nesting": "[" * 30_000 + "]" * 30_000,
    "not-utf8": '{"refresh_token": "\xff\xfe"}',
}


async def _everything(client: httpx.AsyncClient, admin: Account, user: Account) -> Any:
    page = await client.get("/api/v1/users", headers=admin.headers, params={"limit": 100})
    me = await client.get("/api/v1/users/me", headers=user.headers)
    assert page.status_code == 200
    assert me.status_code == 200
    return page.json(), me.json(), me.headers["etag"]


def _assert_client_error(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"]


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize(("method", "path", "template"), JSON_ROUTES)
@pytest.mark.parametrize("value", HOSTILE_STRINGS.values(), ids=HOSTILE_STRINGS.keys())
async def test_hostile_field_values_are_refused_and_change_nothing(
    shared_app: SharedApp,
    method: str,
    path: str,
    template: str,
    value: str,
) -> None:
    client, admin, user = shared_app.client, shared_app.admin, shared_app.user
    before = await _everything(client, admin, user)
    body = (template % (value, value)).encode("utf-8", "surrogatepass")

    response = await client.request(
        method,
        path.format(me=user.id),
        content=body,
        headers=user.headers | {"Content-Type": "application/json"},
    )

    _assert_client_error(response)
    assert await _everything(client, admin, user) == before


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize(("method", "path", "_template"), JSON_ROUTES)
@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
async def test_hostile_bodies_are_refused_and_change_nothing(
    shared_app: SharedApp,
    method: str,
    path: str,
    _template: str,
    body: str,
) -> None:
    client, admin, user = shared_app.client, shared_app.admin, shared_app.user
    before = await _everything(client, admin, user)

    response = await client.request(
        method,
        path.format(me=user.id),
        content=body.encode("latin-1"),
        headers=user.headers | {"Content-Type": "application/json"},
    )

    _assert_client_error(response)
    assert await _everything(client, admin, user) == before


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "image/png"])
@pytest.mark.parametrize(("method", "path", "_template"), JSON_ROUTES)
async def test_wrong_content_types_get_415_and_change_nothing(
    shared_app: SharedApp,
    method: str,
    path: str,
    _template: str,
    content_type: str,
) -> None:
    client, admin, user = shared_app.client, shared_app.admin, shared_app.user
    before = await _everything(client, admin, user)

    response = await client.request(
        method,
        path.format(me=user.id),
        content=b'{"bio": "x"}',
        headers=user.headers | {"Content-Type": content_type},
    )

    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    assert await _everything(client, admin, user) == before


@IN_THE_MODULE_LOOP
@pytest.mark.parametrize("parameter", ["limit", "is_active", "include_total", "sort"])
@pytest.mark.parametrize("value", [*HUGE_NUMBERS, "1e3", "0x10", "5.5", "NaN", "yes!"])
async def test_out_of_range_query_values_get_422(
    shared_app: SharedApp, parameter: str, value: str
) -> None:
    client, admin = shared_app.client, shared_app.admin
    response = await client.get("/api/v1/users", headers=admin.headers, params={parameter: value})

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


@pytest.mark.parametrize(
    "name",
    # Right-to-left scripts need no bidi overrides: those are refused (test_register.py).
    ["Zoë 🚀👩‍💻", "مريم", "שָׁלוֹם", "李小龍", 'O\'Brien-"Quote"'],
)
async def test_names_in_any_script_round_trip_exactly(
    client: httpx.AsyncClient, user: Account, name: str
) -> None:
    response = await client.patch(
        "/api/v1/users/me", headers=user.headers, json={"first_name": name, "bio": name}
    )
    me = await client.get("/api/v1/users/me", headers=user.headers)

    assert response.status_code == 200, response.text
    assert me.json()["first_name"] == name
    assert me.json()["bio"] == name
    assert me.json()["full_name"] == f"{name} {user.record['last_name']}"


async def test_the_list_names_every_operation_that_takes_a_json_body(
    client: httpx.AsyncClient,
) -> None:
    # A new slice with a JSON body must add its template above, or this fails.
    document = (await client.get("/openapi.json")).json()
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    }
    listed = {(method, path.replace("{me}", "{user_id}")) for method, path, _ in JSON_ROUTES}

    assert documented
    assert documented == listed
