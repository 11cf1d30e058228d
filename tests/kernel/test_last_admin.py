"""Admins removing each other all at once: the outcome is one that some serial order gives.

A ring of admins, each demoting (or deactivating) the next at the same moment. Whatever
the order, a request by an admin who has already been removed must be refused, and the
last admin must remain (kernel.users.ensure_not_last_admin, with the caller confirmed
under its lock). What a client sees then follows from any serial order of the ring:

- request i is refused exactly when request i-1 went first and succeeded (it removed
  admin i, the caller of request i), so no two neighbours are both refused;
- not every request succeeds: that would need each one to run before the one before it,
  all the way round the ring;
- the admins left are exactly those whose remover was refused.

A refusal of any other kind (409 last_admin, say, because a removed admin's request was
still counted as an admin's and took the others down to one) matches no serial order.
"""

import asyncio
from collections.abc import Awaitable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.factories import Account, assert_problem, make_admin

RING = 20


def _demote(client: httpx.AsyncClient, actor: Account, target: Account) -> Awaitable[Any]:
    return client.patch(
        f"/api/v1/users/{target.id}", headers=actor.headers, json={"is_superuser": False}
    )


def _deactivate(client: httpx.AsyncClient, actor: Account, target: Account) -> Awaitable[Any]:
    return client.post(f"/api/v1/users/{target.id}/deactivate", headers=actor.headers)


# (how admin i removes admin i+1, the refusal a removed admin gets, what is left of an admin)
ACTIONS = {
    # A demoted admin still holds a valid token, but is no administrator any more.
    "demote": (_demote, (403, "forbidden"), "is_superuser"),
    # A deactivated admin's tokens stop working at once.
    "deactivate": (_deactivate, (401, "invalid_token"), "is_active"),
}


@pytest.mark.parametrize("action", ACTIONS)
async def test_a_ring_of_admins_removing_each_other_ends_as_a_serial_order_would(
    client: httpx.AsyncClient, app: FastAPI, action: str
) -> None:
    remove, (refused_status, refused_code), kept_flag = ACTIONS[action]
    admins = [await make_admin(client, app) for _ in range(RING)]
    observer = await make_admin(client, app)  # outside the ring: reads the outcome

    responses = await asyncio.gather(
        *(remove(client, admins[i], admins[(i + 1) % RING]) for i in range(RING))
    )

    refused = set()
    for i, response in enumerate(responses):
        if response.status_code != 200:
            assert_problem(response, refused_status, refused_code)
            refused.add(i)
    assert refused, "every admin removed the next before being removed: no serial order"
    assert not {i for i in refused if (i - 1) % RING in refused}, sorted(refused)
    listed = await client.get("/api/v1/users", headers=observer.headers, params={"limit": 100})
    records = {item["id"]: item for item in listed.json()["items"]}
    kept = {i for i, admin in enumerate(admins) if records[admin.id][kept_flag]}
    assert kept == {(i + 1) % RING for i in refused}
