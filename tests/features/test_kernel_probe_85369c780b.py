"""GET /api/v1/kernel-probe-85369c780b, through HTTP on SQLite and PostgreSQL (made by new-feature)."""

import httpx

from tests.factories import Account, assert_problem


async def test_kernel_probe_85369c780b_counts_active_users(client: httpx.AsyncClient, user: Account) -> None:
    response = await client.get("/api/v1/kernel-probe-85369c780b", headers=user.headers)

    assert response.status_code == 200
    assert response.json() == {"active_users": 1}


async def test_kernel_probe_85369c780b_without_a_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/kernel-probe-85369c780b")

    assert_problem(response, 401, "not_authenticated")
