"""GET /api/v1/kernel-probe-e8cf1073f9, through HTTP on SQLite and PostgreSQL (made by new-feature)."""

import httpx

from tests.factories import Account, assert_problem


async def test_kernel_probe_e8cf1073f9_counts_active_users(client: httpx.AsyncClient, user: Account) -> None:
    response = await client.get("/api/v1/kernel-probe-e8cf1073f9", headers=user.headers)

    assert response.status_code == 200
    assert response.json() == {"active_users": 1}


async def test_kernel_probe_e8cf1073f9_without_a_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/kernel-probe-e8cf1073f9")

    assert_problem(response, 401, "not_authenticated")
