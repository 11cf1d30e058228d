"""GET /api/v1/kernel-probe-2a90e74bfe, through HTTP on SQLite and PostgreSQL (made by new-feature)."""

import httpx

from tests.factories import Account, assert_problem


async def test_kernel_probe_2a90e74bfe_counts_active_users(client: httpx.AsyncClient, user: Account) -> None:
    response = await client.get("/api/v1/kernel-probe-2a90e74bfe", headers=user.headers)

    assert response.status_code == 200
    assert response.json() == {"active_users": 1}


async def test_kernel_probe_2a90e74bfe_without_a_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/kernel-probe-2a90e74bfe")

    assert_problem(response, 401, "not_authenticated")
