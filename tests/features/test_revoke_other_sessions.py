"""POST /api/v1/users/me/sessions/revoke-others, on SQLite and PostgreSQL."""

import httpx

from tests.factories import Account, assert_problem, login, refresh

ME = "/api/v1/users/me"


async def test_every_other_session_ends_and_this_one_stays(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    devices = [
        await login(client, Account(id=user.id, email=user.email, password=user.password))
        for _ in range(3)
    ]

    response = await client.post(f"{ME}/sessions/revoke-others", headers=user.headers)

    assert response.status_code == 204
    for device in devices:
        assert_problem(await client.get(ME, headers=device.headers), 401, "invalid_token")
        assert_problem(await refresh(client, device.refresh_token), 401, "invalid_token")
    assert (await client.get(ME, headers=user.headers)).status_code == 200
    assert (await refresh(client, user.refresh_token)).status_code == 200
    items = (await client.get(f"{ME}/sessions", headers=user.headers)).json()["items"]
    assert [item["current"] for item in items] == [True]
    # Other users are untouched.
    assert (await client.get(ME, headers=other_user.headers)).status_code == 200


async def test_with_no_other_session_it_is_still_204(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await client.post(f"{ME}/sessions/revoke-others", headers=user.headers)

    assert response.status_code == 204
    assert (await client.get(ME, headers=user.headers)).status_code == 200
