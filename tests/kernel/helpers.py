"""Helpers the kernel tests share: slice folders and JWTs."""

import hashlib
import importlib
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

import features
from tests.factories import TEST_SECRET, Account

FEATURES_DIR = Path(features.__path__[0])


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


def access_claims(user: Account | str, **changes: Any) -> dict[str, Any]:
    """The claims of a valid access token for this account's session, as kernel.tokens
    issues them (for a bare user id: a session that does not exist)."""
    now = datetime.now(UTC)
    if isinstance(user, Account):
        user_id = user.id
        session_id = jwt.decode(user.access_token, options={"verify_signature": False})["sid"]
    else:
        user_id, session_id = user, str(uuid.uuid4())
    claims: dict[str, Any] = {
        "iss": "userapi",
        "aud": "userapi",
        "sub": user_id,
        "sid": session_id,
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(minutes=15),
        "jti": uuid.uuid4().hex,
        "typ": "access",
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
