"""The signing keys in one process: each algorithm, keys sealed at rest, one first key
however many processes start at once, and a key set that follows the database.

API.md v1.1, "Tokens other services can verify". The rotation across real processes
is in test_key_rotation.py.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import event, func, select, update
from sqlmodel import col

from kernel.db import Database, utc_now
from kernel.settings import Settings
from kernel.signing_keys import CLOCK_SKEW_SECONDS, Keyring, SigningKey, rotate, unseal
from tests.conftest import make_settings
from tests.factories import TEST_SECRET, Account, assert_problem, login, make_user, serving
from tests.kernel.helpers import access_claims, bearer, forge_token, generated_key, signing_key
from tests.waiting import poll, wait_until

ME = "/api/v1/users/me"
JWKS = "/.well-known/jwks.json"
OTHER_SECRET = "another-secret-key-that-is-long-enough-for-hs256-9876543210"


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def key_rows(app: FastAPI) -> list[SigningKey]:
    database: Database = app.state.database
    async with database.session(writes=False) as session:
        return list((await session.scalars(select(SigningKey))).all())


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "HS256"])
async def test_each_algorithm_issues_tokens_that_verify(
    database_url: str, tmp_path: Path, algorithm: str
) -> None:
    async with serving(make_settings(database_url, tmp_path, jwt_algorithm=algorithm)) as (
        _,
        http,
    ):
        user = await make_user(http)
        response = await http.get(ME, headers=user.headers)

    assert response.status_code == 200, response.text
    header = jwt.get_unverified_header(user.access_token)
    assert header["alg"] == algorithm
    assert header["kid"]


async def test_the_first_start_creates_one_key_and_restarts_keep_it(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path)
    async with serving(settings) as (app, http):
        user = await make_user(http)
        (row,) = await key_rows(app)

    async with serving(settings) as (app, http):
        response = await http.get(ME, headers=user.headers)
        assert [r.kid for r in await key_rows(app)] == [row.kid]

    assert response.status_code == 200, response.text
    assert kid_of(user.access_token) == row.kid


async def test_processes_starting_together_create_exactly_one_key(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path)
    databases = [Database(settings) for _ in range(4)]
    keyrings = [Keyring(settings) for _ in databases]
    try:
        await asyncio.gather(*(k.start(d) for k, d in zip(keyrings, databases, strict=True)))
        async with databases[0].session(writes=False) as session:
            count = await session.scalar(select(func.count()).select_from(SigningKey))
        kids = {keyring.signing_key().kid for keyring in keyrings}
    finally:
        for keyring, database in zip(keyrings, databases, strict=True):
            await keyring.stop()
            await database.dispose()

    assert count == 1
    assert len(kids) == 1


async def test_private_keys_are_sealed_with_the_secret_key(app: FastAPI) -> None:
    (row,) = await key_rows(app)

    assert "PRIVATE KEY" not in row.private_key
    assert b"PRIVATE KEY" in unseal([TEST_SECRET], row.kid, row.private_key)
    with pytest.raises(ValueError, match="does not open"):
        unseal([OTHER_SECRET], row.kid, row.private_key)
    # Sealed for its own kid: a sealed key copied onto another row does not open.
    with pytest.raises(ValueError, match="does not open"):
        unseal([TEST_SECRET], "another-kid", row.private_key)


async def test_keys_still_open_while_the_secret_key_is_rotated(
    database_url: str, tmp_path: Path, user: Account
) -> None:
    rotating = make_settings(
        database_url, tmp_path, secret_key=OTHER_SECRET, secret_key_previous=TEST_SECRET
    )
    async with serving(rotating) as (_, http):
        before = await http.get(ME, headers=user.headers)
        relogged = await login(http, user)
        after = await http.get(ME, headers=relogged.headers)

    assert before.status_code == 200, before.text
    assert after.status_code == 200, after.text


async def test_a_new_algorithm_signs_at_once_and_the_old_keys_still_verify(
    database_url: str, tmp_path: Path, user: Account
) -> None:
    async with serving(make_settings(database_url, tmp_path, jwt_algorithm="ES256")) as (
        _,
        http,
    ):
        old_token = await http.get(ME, headers=user.headers)
        fresh = await login(http, user)
        keys = (await http.get(JWKS)).json()["keys"]

    assert old_token.status_code == 200, old_token.text
    assert jwt.get_unverified_header(fresh.access_token)["alg"] == "ES256"
    assert sorted(key["alg"] for key in keys) == ["ES256", "EdDSA"]


@pytest.fixture
async def quick(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app that re-reads its keys every second (KEY_PUBLISH_SECONDS=3)."""
    async with serving(make_settings(database_url, tmp_path, key_publish_seconds=3)) as served:
        yield served


async def test_rotation_publishes_now_signs_later_and_retires_the_old_key(
    quick: tuple[FastAPI, httpx.AsyncClient], settings: Settings
) -> None:
    app, client = quick
    user = await make_user(client)
    database: Database = app.state.database
    old_kid = kid_of(user.access_token)
    # Accepted once first: what the process remembers of a verified token must not
    # outlive its key.
    assert (await client.get(ME, headers=user.headers)).status_code == 200
    async with database.session() as session:
        new = await rotate(session, settings)  # KEY_PUBLISH_SECONDS=300 here

    # Published at once (within one refresh), not signing yet: logins keep the old kid.
    await poll(
        lambda: client.get(JWKS),
        until=lambda r: len(r.json()["keys"]) == 2,
        within=30,
        what="the new key in the JWKS",
    )
    assert kid_of((await login(client, user)).access_token) == old_kid
    rows = {row.kid: row for row in await key_rows(app)}
    assert rows[old_kid].retired_at == new.signs_from
    assert rows[old_kid].expires_at == new.signs_from + timedelta(
        seconds=settings.access_token_ttl_seconds + CLOCK_SKEW_SECONDS
    )
    assert new.signs_from - new.created_at == timedelta(seconds=settings.key_publish_seconds)


async def test_an_expired_key_leaves_the_jwks_and_its_tokens_fail(
    quick: tuple[FastAPI, httpx.AsyncClient], settings: Settings
) -> None:
    app, client = quick
    user = await make_user(client)
    database: Database = app.state.database
    old_kid = kid_of(user.access_token)
    # Accepted once first: what the process remembers of a verified token must not
    # outlive its key.
    assert (await client.get(ME, headers=user.headers)).status_code == 200
    async with database.session() as session:
        new = await rotate(session, settings)
        # As if the new key had signed for a whole token lifetime already.
        await session.execute(
            update(SigningKey)
            .where(col(SigningKey.kid) == old_kid)
            .values(retired_at=utc_now() - timedelta(hours=1), expires_at=utc_now())
        )
        await session.execute(
            update(SigningKey)
            .where(col(SigningKey.kid) == new.kid)
            .values(signs_from=utc_now() - timedelta(hours=1))
        )

    await poll(
        lambda: client.get(JWKS),
        until=lambda r: [key["kid"] for key in r.json()["keys"]] == [new.kid],
        within=30,
        what="only the new key in the JWKS",
    )
    assert_problem(await client.get(ME, headers=user.headers), 401, "invalid_token")
    assert kid_of((await login(client, user)).access_token) == new.kid


async def test_a_kid_signed_elsewhere_is_learned_on_first_sight(
    database_url: str, tmp_path: Path
) -> None:
    # This process re-reads keys every 10 s; another signs with a key 1 s after publishing
    # it. The first token naming that kid makes this one re-read the set at once.
    slow = make_settings(database_url, tmp_path)
    quick = make_settings(database_url, tmp_path, key_publish_seconds=1)
    async with serving(slow) as (slow_app, slow_http), serving(quick) as (quick_app, quick_http):
        user = await make_user(quick_http)
        async with quick_app.state.database.session() as session:
            new = await rotate(session, quick)
        await wait_until(
            lambda: signing_key(quick_app).kid == new.kid, within=30, what="the new key signing"
        )
        token = (await login(quick_http, user)).access_token
        assert kid_of(token) == new.kid

        # Learned from the token's kid before its own 10 s re-read came round (9 s: a
        # loaded machine took over 5 s once).
        await poll(
            lambda: slow_http.get(ME, headers=bearer(token)),
            until=lambda r: r.status_code == 200,
            within=9,
            what="the slow process accepting the new kid",
        )
        assert slow_app.state.access_tokens.keyring.verifying_key(new.kid) is not None


async def test_garbage_kids_do_not_cost_a_query_each(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    database: Database = app.state.database
    key_reads: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "signing_keys" in statement:
            key_reads.append(statement)

    event.listen(database.engine.sync_engine, "before_cursor_execute", count)
    try:
        ours = signing_key(app)
        for number in range(40):
            token = forge_token(
                access_claims(user.id), key=ours.signing, algorithm=ours.algorithm, kid=f"k{number}"
            )
            assert_problem(await client.get(ME, headers=bearer(token)), 401, "invalid_token")
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", count)

    # One re-read per second at most (plus the periodic one), not one per request.
    assert len(key_reads) <= 4, key_reads


async def test_a_key_row_written_without_the_secret_key_is_not_trusted(
    quick: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    # Someone who can write to the database, but lacks SECRET_KEY, adds their own key.
    app, client = quick
    user = await make_user(client)
    database: Database = app.state.database
    attacker, jwk = generated_key("EdDSA")
    async with database.session() as session:
        session.add(
            SigningKey(
                kid="planted",
                algorithm="EdDSA",
                public_jwk=json.dumps(jwk | {"kid": "planted", "alg": "EdDSA", "use": "sig"}),
                private_key="bm90IHNlYWxlZCB3aXRoIG91ciBzZWNyZXQ=",
                signs_from=utc_now(),
                retired_at=utc_now(),
                expires_at=utc_now() + timedelta(hours=1),
            )
        )
        # A real rotation in the same transaction: seeing its key proves a re-read.
        legit = await rotate(session, app.state.settings)
    token = forge_token(access_claims(user.id), key=attacker, algorithm="EdDSA", kid="planted")

    answers = await poll(
        lambda: client.get(JWKS),
        until=lambda r: legit.kid in [key["kid"] for key in r.json()["keys"]],
        within=30,
        what="a re-read of the key table",
    )

    assert "planted" not in [key["kid"] for key in answers[-1].json()["keys"]]
    assert_problem(await client.get(ME, headers=bearer(token)), 401, "invalid_token")
