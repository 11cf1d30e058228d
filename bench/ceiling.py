"""The ceiling: a bare FastAPI app answering GET /api/v1/users/me with one PrivateUser
held in memory, through the same response model. No database, no token, no middleware:
what FastAPI and uvicorn allow on this machine, under the server settings userapi uses.

    uvicorn bench.ceiling:app   (bench/run.py starts it beside userapi)
"""

import uuid
from datetime import UTC, datetime

from fastapi import FastAPI

from kernel.users import PrivateUser

app = FastAPI()

_NOW = datetime.now(UTC)
_USER = PrivateUser(
    id=uuid.uuid4(),
    first_name="Ada",
    last_name="Lovelace",
    full_name="Ada Lovelace",
    bio=None,
    avatar_url=None,
    email="ada@bench.example",
    email_verified=True,
    is_active=True,
    is_superuser=False,
    created_at=_NOW,
    updated_at=_NOW,
)


@app.get("/api/v1/users/me", response_model=PrivateUser)
async def me() -> PrivateUser:
    return _USER


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
