"""CORS: with CORS_ORIGINS set, a browser can read every response, errors included.

A response without Access-Control-Allow-Origin reaches browser code as a network error,
so the early refusals (413, the strict-JSON 422s, the catch-all 500) must carry it too,
and a refused preflight is problem+json like every other error. API.md "Error".
"""

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kernel.middleware import MAX_BODY_BYTES
from tests.conftest import make_settings
from tests.factories import assert_problem, make_user, registration, serving
from tests.kernel.helpers import slice_folder, unique_name

ALLOWED = "https://app.example.com"
DISALLOWED = "https://evil.example.net"
REGISTER = "/api/v1/auth/register"
JSON_FROM_ALLOWED = {"Content-Type": "application/json", "Origin": ALLOWED}

FAILING_SLICE = '''
"""Probe for tests/kernel/test_cors.py: always fails."""

from fastapi import APIRouter

from kernel.deps import CurrentUser

router = APIRouter()


@router.get("/{path}")
async def explode(_: CurrentUser) -> None:
    """Fail like a bug would."""
    raise RuntimeError("a bug")
'''


@pytest.fixture
async def cors_client(database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(database_url, tmp_path, cors_origins=[ALLOWED])
    async with serving(settings) as (_, client):
        yield client


def exposed(response: httpx.Response) -> set[str]:
    header = response.headers.get("access-control-expose-headers", "")
    return {name.strip().lower() for name in header.split(",") if name.strip()}


def assert_readable_by(response: httpx.Response, origin: str) -> None:
    """A browser on `origin` hands this response, and its request id, to the page."""
    assert response.headers.get("access-control-allow-origin") == origin, response.headers
    assert "x-request-id" in exposed(response)
    assert response.headers["x-request-id"]


async def test_a_normal_200_carries_cors_headers(cors_client: httpx.AsyncClient) -> None:
    response = await cors_client.get("/health", headers={"Origin": ALLOWED})

    assert response.status_code == 200
    assert_readable_by(response, ALLOWED)


async def test_a_413_carries_cors_headers(cors_client: httpx.AsyncClient) -> None:
    body = json.dumps(registration(bio="x" * MAX_BODY_BYTES))

    response = await cors_client.post(REGISTER, content=body, headers=JSON_FROM_ALLOWED)

    assert_problem(response, 413, "payload_too_large")
    assert_readable_by(response, ALLOWED)


async def test_a_duplicate_key_422_carries_cors_headers(cors_client: httpx.AsyncClient) -> None:
    body = json.dumps(registration())[:-1] + ', "email": "second@example.com"}'

    response = await cors_client.post(REGISTER, content=body, headers=JSON_FROM_ALLOWED)

    assert_problem(response, 422, "validation_error")
    assert_readable_by(response, ALLOWED)


async def test_a_401_carries_cors_headers_and_exposes_www_authenticate(
    cors_client: httpx.AsyncClient,
) -> None:
    response = await cors_client.get("/api/v1/users/me", headers={"Origin": ALLOWED})

    assert_problem(response, 401, "not_authenticated")
    assert_readable_by(response, ALLOWED)
    assert "www-authenticate" in exposed(response)


async def test_an_unexpected_500_carries_cors_headers(
    database_url: str, tmp_path: Path, more_features: Path
) -> None:
    name = unique_name("kernel_cors_failing_probe")
    path = name.replace("_", "-")
    settings = make_settings(database_url, tmp_path, cors_origins=[ALLOWED])
    with slice_folder(more_features, name, FAILING_SLICE.replace("{path}", path)):
        async with serving(settings) as (_, client):
            headers = (await make_user(client)).headers | {"Origin": ALLOWED}
            response = await client.get(f"/api/v1/{path}", headers=headers)

    assert_problem(response, 500, "internal_error")
    assert_readable_by(response, ALLOWED)


async def test_a_preflight_from_an_allowed_origin_succeeds(
    cors_client: httpx.AsyncClient,
) -> None:
    response = await cors_client.options(
        "/api/v1/users/me",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, content-type, if-match",
        },
    )

    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "PATCH" in response.headers["access-control-allow-methods"]
    assert response.headers["x-request-id"]


async def test_a_preflight_from_a_disallowed_origin_is_a_problem_with_a_request_id(
    cors_client: httpx.AsyncClient,
) -> None:
    response = await cors_client.options(
        "/api/v1/users/me",
        headers={
            "Origin": DISALLOWED,
            "Access-Control-Request-Method": "PATCH",
            "X-Request-ID": "preflight-7",
        },
    )

    assert_problem(response, 400, "cors_rejected")
    assert response.headers["x-request-id"] == "preflight-7"
    assert "access-control-allow-origin" not in response.headers


async def test_a_disallowed_origin_gets_no_allow_origin_on_a_normal_request(
    cors_client: httpx.AsyncClient,
) -> None:
    response = await cors_client.get("/health", headers={"Origin": DISALLOWED})

    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
