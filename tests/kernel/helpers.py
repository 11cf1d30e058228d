"""Helpers the kernel tests share: apps on chosen settings, the CLI, slice folders, JWTs."""

import asyncio
import hashlib
import importlib
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt

import features
from kernel.app import create_app
from kernel.settings import Settings
from tests.factories import FAST_HASHING, TEST_SECRET

USERAPI = Path(sys.executable).with_name("userapi")
CLI_TIMEOUT_SECONDS = 120
FEATURES_DIR = Path(features.__path__[0])
REPOSITORY = FEATURES_DIR.parent


# --- apps -------------------------------------------------------------------------------


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A fresh app on these settings, its lifespan entered, and a client speaking to it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


# --- the command line -------------------------------------------------------------------


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli_env(**values: str) -> dict[str, str]:
    """A clean environment (nothing inherited that could configure the service), fast argon2."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/"),
        "SECRET_KEY": TEST_SECRET,
    }
    env |= {name.upper(): str(value) for name, value in FAST_HASHING.items()}
    return env | values


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> CliResult:
    """`userapi ARGS` in a subprocess, bounded by a timeout."""
    process = await asyncio.create_subprocess_exec(
        str(USERAPI),
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


# --- slice folders ----------------------------------------------------------------------


def forget_modules(package: str) -> None:
    """Drop an imported package and its submodules, so a later import starts afresh."""
    for name in [name for name in sys.modules if name == package or name.startswith(f"{package}.")]:
        del sys.modules[name]


def remove_slice_folder(folder: Path) -> None:
    """Hide the folder from discovery in one atomic rename, then delete it."""
    if not folder.exists():
        return
    hidden = folder.with_name(f"_removed_{folder.name}")
    folder.rename(hidden)
    shutil.rmtree(hidden)
    forget_modules(f"features.{folder.name}")


@contextmanager
def slice_folder(parent: Path, name: str, source: str) -> Iterator[Path]:
    """A slice package `name` holding `source` as slice.py, removed afterwards.

    It is written under a `_` name (which discovery skips) and renamed into place, so a
    concurrent test run never sees it half written.
    """
    staging = parent / f"_staging_{name}"
    staging.mkdir()
    (staging / "slice.py").write_text(source)
    (staging / "__init__.py").write_text("")
    folder = parent / name
    staging.rename(folder)
    importlib.invalidate_caches()
    try:
        yield folder
    finally:
        remove_slice_folder(folder)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# --- access tokens ----------------------------------------------------------------------


def key_id(key: str) -> str:
    """The `kid` header kernel.tokens puts on tokens signed with this key."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def access_claims(user_id: str, **changes: Any) -> dict[str, Any]:
    """The claims of a valid access token for this user, as kernel.tokens issues them."""
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "iss": "userapi",
        "aud": "userapi",
        "sub": user_id,
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(minutes=15),
        "jti": uuid.uuid4().hex,
        "typ": "access",
        "ver": 1,
    }
    return claims | changes


def forge_token(
    claims: dict[str, Any],
    *,
    key: str = TEST_SECRET,
    algorithm: str = "HS256",
    kid: str | None = None,
) -> str:
    """A JWT we sign ourselves; the `kid` names the test key unless told otherwise."""
    headers = {"kid": kid if kid is not None else key_id(TEST_SECRET)}
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
