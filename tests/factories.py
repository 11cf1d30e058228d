"""Tiny factories and assertions for tests: arrange through the API or the kernel only."""

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import update
from sqlmodel import col

from kernel.app import create_app
from kernel.db import Database
from kernel.settings import Settings
from kernel.users import User

DEFAULT_PASSWORD = "correct horse battery staple"
TEST_SECRET = "test-secret-key-that-is-long-enough-for-hs256-0123456789"
# Low argon2 cost keeps the suite fast; production refuses these values (tests/kernel).
FAST_HASHING = {"argon2_time_cost": 1, "argon2_memory_kib": 8, "argon2_parallelism": 1}
# Every in-process test client is one address (127.0.0.1) making far more auth requests
# than RATE_LIMIT_PER_IP's strict default allows; tests of the limit set their own.
GENEROUS_RATE = "1000000/hour"


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A fresh app on these settings, its lifespan entered, and a client speaking to it."""
    app = create_app(settings)
    # ASGITransport does not run the lifespan: enter it here, as a server would.
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        yield app, client


@dataclass
class Account:
    """A registered user as a client knows it: credentials, tokens, and its record."""

    id: str
    email: str
    password: str
    access_token: str = ""
    refresh_token: str = ""
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@asynccontextmanager
async def client_from(app: FastAPI, ip: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests reach `app` from the peer address `ip`."""
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def registration(**changes: Any) -> dict[str, Any]:
    """A valid registration body for a new email, with these fields changed."""
    body = {
        "email": f"user-{uuid.uuid4().hex[:10]}@example.com",
        "password": DEFAULT_PASSWORD,
        "first_name": "Ada",
        "last_name": "Lovelace",
    }
    return body | changes


async def register(
    client: httpx.AsyncClient,
    *,
    email: str | None = None,
    password: str = DEFAULT_PASSWORD,
    **fields: Any,
) -> Account:
    body = registration(password=password, **fields)
    if email:
        body["email"] = email
    response = await client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 201, response.text
    record = response.json()
    return Account(id=record["id"], email=record["email"], password=password, record=record)


async def login(client: httpx.AsyncClient, account: Account) -> Account:
    response = await client.post(
        "/api/v1/auth/login", json={"email": account.email, "password": account.password}
    )
    assert response.status_code == 200, response.text
    tokens = response.json()
    account.access_token = tokens["access_token"]
    account.refresh_token = tokens["refresh_token"]
    return account


async def make_user(client: httpx.AsyncClient, **fields: Any) -> Account:
    """Registered and logged in."""
    return await login(client, await register(client, **fields))


async def make_admin(client: httpx.AsyncClient, app: FastAPI, **fields: Any) -> Account:
    """Registered through the API, promoted through the kernel (as create-admin does)."""
    account = await register(client, **fields)
    database: Database = app.state.database
    async with database.session() as session:
        await session.execute(
            update(User).where(col(User.id) == uuid.UUID(account.id)).values(is_superuser=True)
        )
    return await login(client, account)


async def deactivate_self(client: httpx.AsyncClient, account: Account) -> None:
    response = await client.post(
        "/api/v1/users/me/deactivate",
        json={"current_password": account.password},
        headers=account.headers,
    )
    assert response.status_code == 200, response.text


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})


def signed_cursor(values: Any, purpose: str, secret: str = TEST_SECRET) -> str:
    """A list cursor holding `values`, signed as the server signs its own (kernel.pages):
    what someone holding SECRET_KEY could send, whatever the values are."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    key = hashlib.sha256(f"{purpose} cursor:{secret}".encode()).digest()
    payload = json.dumps(values, separators=(",", ":")).encode()
    return f"{b64(payload)}.{b64(hmac.new(key, payload, hashlib.sha256).digest()[:16])}"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and stable code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["type"] == "about:blank"
    assert problem["title"]
    assert problem["detail"]
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    return problem


async def my_events(client: httpx.AsyncClient, account: Account, **params: Any) -> list[Any]:
    """The account's security events, newest first, as GET /users/me/events shows them."""
    response = await client.get(
        "/api/v1/users/me/events", headers=account.headers, params={"limit": 100, **params}
    )
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


async def all_events(client: httpx.AsyncClient, admin: Account, **params: Any) -> list[Any]:
    """Every security event matching the filters, newest first (GET /events, one page)."""
    response = await client.get(
        "/api/v1/events", headers=admin.headers, params={"limit": 100, **params}
    )
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


def types_of(events: list[Any]) -> list[str]:
    return [event["type"] for event in events]
