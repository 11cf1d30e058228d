"""Tiny factories and assertions for tests: arrange through the API or the kernel only."""

import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import update
from sqlmodel import col

from kernel.db import Database
from kernel.users import User

DEFAULT_PASSWORD = "correct horse battery staple"
TEST_SECRET = "test-secret-key-that-is-long-enough-for-hs256-0123456789"
# Low argon2 cost keeps the suite fast; production refuses these values (tests/kernel).
FAST_HASHING = {"argon2_time_cost": 1, "argon2_memory_kib": 8, "argon2_parallelism": 1}


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


async def register(
    client: httpx.AsyncClient,
    *,
    email: str | None = None,
    password: str = DEFAULT_PASSWORD,
    **fields: Any,
) -> Account:
    email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
    body = {"email": email, "password": password, "first_name": "Ada", "last_name": "Lovelace"}
    response = await client.post("/api/v1/auth/register", json=body | fields)
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
