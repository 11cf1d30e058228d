"""Helpers the kernel tests share: slice folders and JWTs."""

import base64
import hashlib
import hmac
import importlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from fastapi import FastAPI

import features
from kernel.signing_keys import Key
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


# --- a temporary copy of the repository ----------------------------------------------

REPOSITORY = FEATURES_DIR.parent
_COPIED = ("pyproject.toml", "src", "features", "tests", "migrations")


def copy_repository(destination: Path) -> Path:
    """What a developer edits (source, slices, tests, migrations, pyproject.toml), copied,
    so a test can add slices and migrations as a developer would, never in the real tree."""
    destination.mkdir()
    ignored = shutil.ignore_patterns("__pycache__", ".mypy_cache", ".pytest_cache", "*.db")
    for name in _COPIED:
        source = REPOSITORY / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignored)
        else:
            shutil.copy2(source, destination / name)
    return destination


def running_in(copy: Path, env: Mapping[str, str]) -> dict[str, str]:
    """ENV, with the copy's src/ and root first on the path: its kernel and slices load."""
    return dict(env) | {"PYTHONPATH": f"{copy / 'src'}{os.pathsep}{copy}"}


def add_slice(project: Path, name: str, source: str) -> Path:
    folder = project / "features" / name
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "slice.py").write_text(source)
    return folder


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
    key: Any = TEST_SECRET,
    algorithm: str = "HS256",
    kid: str | None = None,
) -> str:
    """A JWT we sign ourselves; the `kid` names the HS256 test key unless told otherwise."""
    headers = {"kid": kid if kid is not None else key_id(TEST_SECRET)}
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def signing_key(app: FastAPI) -> Key:
    """The key this app signs with now (from its keyring, as the database holds it)."""
    key: Key = app.state.access_tokens.keyring.signing_key()
    return key


def forge_with(app: FastAPI, claims: dict[str, Any]) -> str:
    """A JWT signed with the app's own current key: valid exactly when the claims are."""
    key = signing_key(app)
    return forge_token(claims, key=key.signing, algorithm=key.algorithm, kid=key.kid)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def generated_key(algorithm: str) -> tuple[Any, dict[str, Any]]:
    """A fresh key pair of this algorithm that the service has never seen, and its JWK."""
    from kernel.signing_keys import _generate

    return _generate(algorithm)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_by_hand(claims: dict[str, Any], *, secret: bytes, kid: str) -> str:
    """An HS256 JWT built without PyJWT, which (rightly) refuses to HMAC with a public key:
    what an attacker would send."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64(json.dumps(claims, default=lambda moment: int(moment.timestamp())).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"
