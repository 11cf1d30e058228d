"""One served app, with an admin and a user, shared by a module's tests that only send
requests the app must refuse: an app and its two accounts cost about 100 ms of CPU to
build, several times what such a test spends on its own requests.

Sharing keeps each test able to fail on its own, and only on its own:
- the app has a database of its own (module_database), which no other test writes to
  or empties;
- each test using it asserts that its refused request changed nothing;
- each test starts from what was built: `SharedAppKeeper.fresh()` compares what the admin
  and the user see now with what they saw once it was built, and on any difference (a
  test let a request through, and failed for it) builds everything anew;
- the accounts' tokens never near their expiry: the app is built anew once it is older
  than half their lifetime.

The app lives in the module's event loop, so a test using it runs there too: mark it
with IN_THE_MODULE_LOOP.
"""

import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from kernel.settings import Settings
from tests.factories import Account, make_admin, make_user, serving

IN_THE_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")


@dataclass
class SharedApp:
    app: FastAPI
    client: httpx.AsyncClient
    admin: Account
    user: Account


async def visible_state(shared: SharedApp) -> Any:
    """Every user's full record as the admin sees it, and the user's own (with its ETag),
    each with its status: a revoked token shows as a changed status."""
    page = await shared.client.get(
        "/api/v1/users", headers=shared.admin.headers, params={"limit": 100}
    )
    me = await shared.client.get("/api/v1/users/me", headers=shared.user.headers)
    return page.status_code, page.json(), me.status_code, me.json(), me.headers.get("etag")


class SharedAppKeeper:
    """Hands out the shared app, unchanged since it was built or else built anew."""

    def __init__(self, fresh_settings: Callable[[], Awaitable[Settings]]) -> None:
        self._fresh_settings = fresh_settings  # settings on a database reset to empty
        self._stack = AsyncExitStack()
        self._shared: SharedApp | None = None
        self._built_state: Any = None
        self._rebuild_at = 0.0
        self.builds = 0

    async def fresh(self) -> SharedApp:
        shared = self._shared
        if (
            shared is not None
            and time.monotonic() < self._rebuild_at
            and await visible_state(shared) == self._built_state
        ):
            return shared
        await self.close()
        return await self._build()

    async def _build(self) -> SharedApp:
        settings = await self._fresh_settings()
        app, client = await self._stack.enter_async_context(serving(settings))
        shared = SharedApp(app, client, await make_admin(client, app), await make_user(client))
        self._built_state = await visible_state(shared)
        self._rebuild_at = time.monotonic() + settings.access_token_ttl_seconds / 2
        self._shared = shared
        self.builds += 1
        return shared

    async def close(self) -> None:
        self._shared = None
        await self._stack.aclose()
