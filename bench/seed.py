"""Seed a migrated database with N users by bulk insert (no HTTP registrations).

Every user has the same password, hashed once with the server's argon2 parameters, so
any of them can log in. `user-<i>@bench.example` for i in 1..N; `admin@bench.example`
is the admin. Names cycle through a short list, so `?q=` finds a tenth of them.
"""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from sqlalchemy import insert

from kernel.db import Database
from kernel.settings import Settings
from kernel.users import SEARCH_SEPARATOR, User

PASSWORD = "benchmark passphrase 2026"
ADMIN_EMAIL = "admin@bench.example"
FIRST_NAMES = (
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "John",
    "Lynn",
    "Ken",
)
BATCH = 5_000


def user_email(index: int) -> str:
    return f"user-{index}@bench.example"


def password_hash(settings: Settings) -> str:
    hasher = PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
    )
    return hasher.hash(PASSWORD)


def _row(index: int, email: str, hashed: str, created: datetime, *, admin: bool) -> dict[str, Any]:
    first, last = FIRST_NAMES[index % len(FIRST_NAMES)], f"Number{index}"
    return {
        "id": uuid.uuid4(),
        "email": email,
        "password_hash": hashed,
        "first_name": first,
        "last_name": last,
        "is_active": True,
        "is_superuser": admin,
        "email_verified": True,
        "version": 1,
        "created_at": created,
        "updated_at": created,
        # What kernel.users computes on an ORM insert (a bulk insert skips ORM events).
        "search_key": SEARCH_SEPARATOR.join((email, first, last)).casefold(),
    }


async def seed(settings: Settings, users: int) -> None:
    """The admin (index 0) and `users` users, in batches of BATCH rows."""
    hashed = password_hash(settings)
    start = datetime.now(UTC) - timedelta(seconds=users + 10)
    database = Database(settings)
    try:
        for first in range(0, users + 1, BATCH):
            rows = [
                # One second apart: created_at orders them without ties.
                _row(
                    index,
                    user_email(index) if index else ADMIN_EMAIL,
                    hashed,
                    start + timedelta(seconds=index),
                    admin=index == 0,
                )
                for index in range(first, min(first + BATCH, users + 1))
            ]
            async with database.session() as session:
                await session.execute(insert(User.__table__), rows)  # type: ignore[attr-defined]
    finally:
        await database.dispose()
