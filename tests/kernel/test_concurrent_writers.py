"""50 concurrent writers across two server processes on one database: every write lands.

On SQLite this is where "database is locked" would surface (WAL, a busy timeout and
BEGIN IMMEDIATE for writers are what prevent it); on PostgreSQL it is the ordinary
case. Either way every request must succeed: no 5xx, no lost write.
"""

import asyncio
from pathlib import Path

import httpx

from tests.factories import DEFAULT_PASSWORD
from tests.servers import running_servers

WRITERS = 50


def _body(index: int) -> dict[str, str]:
    return {
        "email": f"writer{index}@example.com",
        "password": DEFAULT_PASSWORD,
        "first_name": "Writer",
        "last_name": str(index),
    }


async def test_fifty_concurrent_writers_on_two_servers_all_succeed(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_servers(2, database_url, tmp_path) as (first, second),
        httpx.AsyncClient(timeout=60) as client,
    ):
        servers = [first.base_url, second.base_url]
        registered = await asyncio.gather(
            *(
                client.post(f"{servers[index % 2]}/api/v1/auth/register", json=_body(index))
                for index in range(WRITERS)
            )
        )
        logins = await asyncio.gather(
            *(
                client.post(
                    f"{servers[index % 2]}/api/v1/auth/login",
                    json={"email": _body(index)["email"], "password": DEFAULT_PASSWORD},
                )
                for index in range(WRITERS)
            )
        )
        updated = await asyncio.gather(
            *(
                client.patch(
                    f"{servers[(index + 1) % 2]}/api/v1/users/me",
                    headers={"Authorization": f"Bearer {login.json()['access_token']}"},
                    json={"bio": f"written by writer {index}"},
                )
                for index, login in enumerate(logins)
            )
        )
        read_back = await asyncio.gather(
            *(
                client.get(
                    f"{servers[index % 2]}/api/v1/users/me",
                    headers={"Authorization": f"Bearer {login.json()['access_token']}"},
                )
                for index, login in enumerate(logins)
            )
        )

    assert [response.status_code for response in registered] == [201] * WRITERS
    assert [response.status_code for response in logins] == [200] * WRITERS
    assert [response.status_code for response in updated] == [200] * WRITERS
    assert [response.json()["bio"] for response in read_back] == [
        f"written by writer {index}" for index in range(WRITERS)
    ]
