"""The keys that sign access tokens: kept in the database, cached in every process.

Why the database: every process (workers, servers, the CLI) must sign and verify with
the same keys, and nobody should copy key files around. A private key is stored
encrypted (AES-GCM, with a key derived from SECRET_KEY by HKDF, bound to its kid), so a
database dump alone cannot mint tokens.

A key's life, all decided when it is created, so every process reaches the same
answer from the same rows without coordinating:
  published (in the JWKS) at created_at -> signs from signs_from -> retired_at (the
  next key signs) -> expires_at (retired_at + token lifetime + clock skew): gone from
  the JWKS and no longer verifies, as no unexpired token it signed can exist.

HS256 keeps its HMAC keys derived from SECRET_KEY (and SECRET_KEY_PREVIOUS), publishes
nothing, and touches no table.
"""

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jwt.algorithms import ECAlgorithm, OKPAlgorithm
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from kernel.db import Database, UTCDateTime, dialect_name, utc_now
from kernel.errors import DatabaseUnavailable
from kernel.settings import Settings

ASYMMETRIC = ("EdDSA", "ES256")
CLOCK_SKEW_SECONDS = 10  # the verifier's leeway: a token lives this much past its exp
# How often a process re-reads the table; never more than a third of the publish delay,
# so every process knows a key well before anyone signs with it.
REFRESH_SECONDS = 10.0
# An unknown kid triggers a re-read at most this often: garbage kids cost no queries.
UNKNOWN_KID_RELOAD_SECONDS = 1.0
_LOCK = 0x4B455953  # advisory lock id ("KEYS"): one key creation or rotation at a time
log = logging.getLogger("userapi.keys")


class SigningKey(SQLModel, table=True):
    __tablename__ = "signing_keys"

    kid: str = Field(primary_key=True, max_length=64)
    algorithm: str = Field(max_length=16)
    public_jwk: str = Field(max_length=2000)  # JSON; what the JWKS publishes
    private_key: str = Field(max_length=2000, repr=False)  # AES-GCM sealed PKCS#8 PEM
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    signs_from: datetime = Field(sa_type=UTCDateTime)
    retired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)


# --- private keys at rest -----------------------------------------------------------------


def _sealing_key(secret: str) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"userapi signing keys")
    return AESGCM(hkdf.derive(secret.encode()))


def seal(secret: str, kid: str, pem: bytes) -> str:
    nonce = secrets.token_bytes(12)
    return base64.b64encode(nonce + _sealing_key(secret).encrypt(nonce, pem, kid.encode())).decode()


def unseal(secrets_to_try: list[str], kid: str, sealed: str) -> bytes:
    """The PEM, opened with SECRET_KEY or, while it is being rotated, SECRET_KEY_PREVIOUS."""
    raw = base64.b64decode(sealed)
    for secret in secrets_to_try:
        with contextlib.suppress(InvalidTag):
            return _sealing_key(secret).decrypt(raw[:12], raw[12:], kid.encode())
    raise ValueError(f"signing key {kid} does not open with SECRET_KEY or SECRET_KEY_PREVIOUS")


def _public_jwk(algorithm: str, public: Any) -> dict[str, Any]:
    exporter: Any = OKPAlgorithm if algorithm == "EdDSA" else ECAlgorithm
    jwk: dict[str, Any] = exporter.to_jwk(public, as_dict=True)
    return jwk


def _generate(algorithm: str) -> tuple[Any, dict[str, Any]]:
    if algorithm == "EdDSA":
        private: Any = ed25519.Ed25519PrivateKey.generate()
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return private, _public_jwk(algorithm, private.public_key())


def _hmac_kid(key: str) -> str:
    # Names a key without revealing it, so a verifier can pick the right one during rotation.
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# --- the in-memory key set ----------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    kid: str
    algorithm: str  # the one algorithm a token naming this kid may use
    signing: Any  # private key object, or the HMAC secret
    verifying: Any  # public key object, or the HMAC secret
    signs_from: datetime | None = None
    retired_at: datetime | None = None
    expires_at: datetime | None = None
    public_jwk: dict[str, Any] | None = None  # None: never published (HMAC)

    def verifies_at(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at

    def signs_at(self, now: datetime) -> bool:
        started = self.signs_from is None or self.signs_from <= now
        return started and (self.retired_at is None or now < self.retired_at)


def _loaded(row: SigningKey, secrets_to_try: list[str]) -> Key:
    # The public key comes from the sealed private one, never from the public_jwk column:
    # a row written by someone who can write to the database but lacks SECRET_KEY does
    # not open, so it can neither sign nor verify.
    private = serialization.load_pem_private_key(
        unseal(secrets_to_try, row.kid, row.private_key), password=None
    )
    jwk = _public_jwk(row.algorithm, private.public_key())
    return Key(
        kid=row.kid,
        algorithm=row.algorithm,
        signing=private,
        verifying=private.public_key(),
        signs_from=row.signs_from,
        retired_at=row.retired_at,
        expires_at=row.expires_at,
        public_jwk=jwk | {"kid": row.kid, "alg": row.algorithm, "use": "sig"},
    )


class Keyring:
    """This process's copy of the key set: read by every request, refreshed in the background."""

    def __init__(self, settings: Settings) -> None:
        self.algorithm = settings.jwt_algorithm
        self._settings = settings
        self._keys: dict[str, Key] = {}
        if self.algorithm == "HS256":
            for secret in filter(None, [settings.signing_key, settings.secret_key_previous]):
                self._keys[_hmac_kid(secret)] = Key(_hmac_kid(secret), "HS256", secret, secret)
        self.refresh_seconds = min(REFRESH_SECONDS, settings.key_publish_seconds / 3)
        self._wake = asyncio.Event()
        self._last_unknown_reload = 0.0
        self._unopened: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def _secrets(self) -> list[str]:
        return [s for s in (self._settings.signing_key, self._settings.secret_key_previous) if s]

    def signing_key(self) -> Key:
        now = utc_now()
        if self.algorithm == "HS256":
            return self._keys[_hmac_kid(self._settings.signing_key)]
        candidates = [k for k in self._keys.values() if k.algorithm == self.algorithm]
        # The newest key that has started signing; past its retirement only if this
        # process has not yet seen its successor (the table was unreachable).
        started = [k for k in candidates if k.signs_from and k.signs_from <= now]
        live = [k for k in started if k.signs_at(now)] or started
        if not live:
            raise DatabaseUnavailable("No signing key is usable yet.")
        return max(live, key=lambda k: k.signs_from or now)

    def verifying_key(self, kid: str) -> Key | None:
        key = self._keys.get(kid)
        if key is not None and key.verifies_at(utc_now()):
            return key
        if self.algorithm != "HS256":
            self._reload_soon()
        return None

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        now = utc_now()
        return {
            "keys": [
                k.public_jwk
                for k in sorted(self._keys.values(), key=lambda k: k.signs_from or now)
                if k.public_jwk is not None and k.verifies_at(now)
            ]
        }

    def _reload_soon(self) -> None:
        # Bounded: however many tokens name unknown kids, at most one read per interval.
        if time.monotonic() - self._last_unknown_reload >= UNKNOWN_KID_RELOAD_SECONDS:
            self._last_unknown_reload = time.monotonic()
            self._wake.set()

    # --- loading -----------------------------------------------------------------------

    async def load(self, database: Database) -> None:
        async with database.session(writes=False) as session:
            rows = (
                await session.scalars(
                    select(SigningKey).where(
                        or_(
                            col(SigningKey.expires_at).is_(None),
                            col(SigningKey.expires_at) > utc_now(),
                        )
                    )
                )
            ).all()
        keys: dict[str, Key] = {}
        for row in rows:
            known = self._keys.get(row.kid)
            # Only the dates can change after creation; the key itself is opened once.
            if known is not None:
                keys[row.kid] = replace(known, retired_at=row.retired_at, expires_at=row.expires_at)
                continue
            try:
                keys[row.kid] = _loaded(row, self._secrets)
            except ValueError:
                if row.kid not in self._unopened:
                    self._unopened.add(row.kid)
                    log.error(
                        "signing key %s does not open with this SECRET_KEY: every process "
                        "must share SECRET_KEY; the key is ignored here",
                        row.kid,
                    )
        self._keys = keys

    async def start(self, database: Database) -> None:
        """Make sure a key exists and load the set; then keep it fresh until stop()."""
        if self.algorithm == "HS256":
            return
        try:
            async with database.session() as session:
                await ensure_signing_key(session, self._settings)
            await self.load(database)
        except (SQLAlchemyError, DatabaseUnavailable, OSError) as error:
            # Start anyway (/health, /ready must answer); the refresher keeps trying.
            log.warning("signing keys not loaded yet: %s", type(error).__name__)
        self._task = asyncio.create_task(self._refresh_forever(database))

    async def stop(self) -> None:
        if self._task is not None:
            # A flag as well as the cancel: on Python 3.11 a cancel that lands as a wait
            # ends can be swallowed, and the refresher would then run on, forever.
            self._stopping = True
            self._wake.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _refresh_forever(self, database: Database) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_seconds):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                if not any(k.algorithm == self.algorithm for k in self._keys.values()):
                    async with database.session() as session:
                        await ensure_signing_key(session, self._settings)
                await self.load(database)
            except (SQLAlchemyError, DatabaseUnavailable, OSError) as error:
                log.warning("signing keys not refreshed: %s", type(error).__name__)


# --- creating and rotating keys (one writer at a time) ------------------------------------


async def _lock(session: AsyncSession) -> None:
    # SQLite's write sessions are serialised already (BEGIN IMMEDIATE).
    if dialect_name(session) == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(_LOCK)))


def _new_row(settings: Settings, *, created_at: datetime, signs_from: datetime) -> SigningKey:
    private, jwk = _generate(settings.jwt_algorithm)
    kid = secrets.token_urlsafe(12)
    jwk |= {"kid": kid, "alg": settings.jwt_algorithm, "use": "sig"}
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return SigningKey(
        kid=kid,
        algorithm=settings.jwt_algorithm,
        public_jwk=json.dumps(jwk),
        private_key=seal(settings.signing_key, kid, pem),
        created_at=created_at,
        signs_from=signs_from,
    )


async def _retire_current(session: AsyncSession, settings: Settings, at: datetime) -> None:
    expires = at + timedelta(seconds=settings.access_token_ttl_seconds + CLOCK_SKEW_SECONDS)
    await session.execute(
        update(SigningKey)
        .where(col(SigningKey.retired_at).is_(None))
        .values(retired_at=at, expires_at=expires)
    )


async def _current_kid(session: AsyncSession, settings: Settings) -> str | None:
    """The unretired key of the configured algorithm, if there is one."""
    return await session.scalar(
        select(col(SigningKey.kid)).where(
            col(SigningKey.algorithm) == settings.jwt_algorithm,
            col(SigningKey.retired_at).is_(None),
        )
    )


async def ensure_signing_key(session: AsyncSession, settings: Settings) -> None:
    """First start-up (or a new JWT_ALGORITHM): a key that signs at once. Race-safe: the
    lock makes the processes starting together create exactly one."""
    await _lock(session)
    current = await _current_kid(session, settings)
    if current is None:
        now = utc_now()
        # Keys of the previous algorithm still verify the tokens they signed.
        await _retire_current(session, settings, now)
        session.add(_new_row(settings, created_at=now, signs_from=now))
        await session.flush()


async def rotate(session: AsyncSession, settings: Settings) -> SigningKey:
    """Publish a new key now; it signs after KEY_PUBLISH_SECONDS, when the others retire."""
    await _lock(session)
    now = utc_now()
    current = await _current_kid(session, settings)
    # With no key to hand over from (never served yet), the new one signs at once.
    delay = settings.key_publish_seconds if current is not None else 0
    signs_from = now + timedelta(seconds=delay)
    await _retire_current(session, settings, signs_from)
    row = _new_row(settings, created_at=now, signs_from=signs_from)
    session.add(row)
    await session.flush()
    return row


async def listed(session: AsyncSession) -> list[SigningKey]:
    rows = await session.scalars(select(SigningKey).order_by(col(SigningKey.signs_from)))
    return list(rows.all())
