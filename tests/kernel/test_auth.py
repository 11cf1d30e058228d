"""Bearer authentication, as every protected route sees it (through GET /api/v1/users/me).

API.md "Authentication": the verifier pins the algorithm and checks every claim; missing
token -> 401 not_authenticated, anything wrong with it -> 401 invalid_token.
"""

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import make_settings
from tests.factories import TEST_SECRET, Account, assert_problem, deactivate_self, serving
from tests.kernel.helpers import access_claims, bearer, forge_token, key_id

ME = "/api/v1/users/me"
OTHER_SECRET = "another-secret-key-that-is-long-enough-for-hs256-9876543210"


async def test_forged_token_with_the_right_key_and_claims_is_accepted(
    client: httpx.AsyncClient, user: Account
) -> None:
    # The control for every negative test below: our own forgery is valid when done right.
    response = await client.get(ME, headers=bearer(forge_token(access_claims(user))))

    assert response.status_code == 200, response.text
    assert response.json()["id"] == user.id


async def test_missing_token_is_401_not_authenticated(client: httpx.AsyncClient) -> None:
    response = await client.get(ME)

    assert_problem(response, 401, "not_authenticated")


async def test_basic_scheme_is_401_not_authenticated(client: httpx.AsyncClient) -> None:
    credentials = base64.b64encode(b"user@example.com:secret").decode()

    response = await client.get(ME, headers={"Authorization": f"Basic {credentials}"})

    assert_problem(response, 401, "not_authenticated")


async def test_garbage_token_is_401_invalid_token(client: httpx.AsyncClient) -> None:
    response = await client.get(ME, headers=bearer("not-a-jwt-at-all"))

    assert_problem(response, 401, "invalid_token")


async def test_token_signed_with_another_key_is_401(
    client: httpx.AsyncClient, user: Account
) -> None:
    token = forge_token(access_claims(user), key=OTHER_SECRET)

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


async def test_token_naming_an_unknown_key_is_401(client: httpx.AsyncClient, user: Account) -> None:
    token = forge_token(access_claims(user), key=OTHER_SECRET, kid=key_id(OTHER_SECRET))

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


async def test_unsigned_token_with_alg_none_is_401(
    client: httpx.AsyncClient, user: Account
) -> None:
    token = jwt.encode(
        access_claims(user), None, algorithm="none", headers={"kid": key_id(TEST_SECRET)}
    )

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


# The test key is shorter than HS512 would want; the point is that HS512 is refused at all.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_token_signed_with_hs512_is_401(client: httpx.AsyncClient, user: Account) -> None:
    token = forge_token(access_claims(user), algorithm="HS512")

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


async def test_token_with_a_tampered_payload_is_401(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    header, _, signature = forge_token(access_claims(user)).split(".")
    payload = json.dumps(access_claims(other_user), default=lambda moment: int(moment.timestamp()))
    forged_payload = base64.urlsafe_b64encode(payload.encode()).rstrip(b"=").decode()

    response = await client.get(ME, headers=bearer(f"{header}.{forged_payload}.{signature}"))

    assert_problem(response, 401, "invalid_token")


async def test_expired_token_is_401(client: httpx.AsyncClient, user: Account) -> None:
    now = datetime.now(UTC)
    claims = access_claims(
        user,
        iat=now - timedelta(minutes=20),
        nbf=now - timedelta(minutes=20),
        exp=now - timedelta(seconds=60),  # well beyond the 10 s clock-skew leeway
    )

    response = await client.get(ME, headers=bearer(forge_token(claims)))

    assert_problem(response, 401, "invalid_token")


async def test_token_not_yet_valid_is_401(client: httpx.AsyncClient, user: Account) -> None:
    later = datetime.now(UTC) + timedelta(minutes=5)
    claims = access_claims(user, iat=later, nbf=later, exp=later + timedelta(minutes=15))

    response = await client.get(ME, headers=bearer(forge_token(claims)))

    assert_problem(response, 401, "invalid_token")


@pytest.mark.parametrize(("claim", "value"), [("iss", "someone-else"), ("aud", "another-api")])
async def test_token_for_another_issuer_or_audience_is_401(
    client: httpx.AsyncClient, user: Account, claim: str, value: str
) -> None:
    token = forge_token(access_claims(user, **{claim: value}))

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


@pytest.mark.parametrize("claim", ["jti", "sub", "sid", "exp", "iat", "nbf", "iss", "aud"])
async def test_token_missing_a_required_claim_is_401(
    client: httpx.AsyncClient, user: Account, claim: str
) -> None:
    claims = access_claims(user)
    del claims[claim]

    response = await client.get(ME, headers=bearer(forge_token(claims)))

    assert_problem(response, 401, "invalid_token")


async def test_token_of_type_refresh_is_401(client: httpx.AsyncClient, user: Account) -> None:
    token = forge_token(access_claims(user, typ="refresh"))

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


async def test_token_for_a_user_that_does_not_exist_is_401(client: httpx.AsyncClient) -> None:
    token = forge_token(access_claims(str(uuid.uuid4())))

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


async def test_refresh_token_used_as_bearer_is_401(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await client.get(ME, headers=bearer(user.refresh_token))

    assert_problem(response, 401, "invalid_token")


async def test_token_of_a_deactivated_user_fails_at_once(
    client: httpx.AsyncClient, user: Account
) -> None:
    await deactivate_self(client, user)

    response = await client.get(ME, headers=user.headers)

    assert_problem(response, 401, "invalid_token")


# --- key rotation: the `user` fixture's token was issued with SECRET_KEY=TEST_SECRET ------


async def test_token_signed_with_the_previous_key_still_works_during_rotation(
    database_url: str, tmp_path: Path, user: Account
) -> None:
    rotated = make_settings(
        database_url, tmp_path, secret_key=OTHER_SECRET, secret_key_previous=TEST_SECRET
    )

    async with serving(rotated) as (_, http):
        response = await http.get(ME, headers=user.headers)

    assert response.status_code == 200, response.text
    assert response.json()["id"] == user.id


async def test_token_signed_with_a_removed_key_fails(
    database_url: str, tmp_path: Path, user: Account
) -> None:
    rotated = make_settings(database_url, tmp_path, secret_key=OTHER_SECRET)

    async with serving(rotated) as (_, http):
        response = await http.get(ME, headers=user.headers)

    assert_problem(response, 401, "invalid_token")


async def test_tokens_issued_during_rotation_are_signed_with_the_new_key(
    database_url: str, tmp_path: Path, user: Account
) -> None:
    rotating = make_settings(
        database_url, tmp_path, secret_key=OTHER_SECRET, secret_key_previous=TEST_SECRET
    )
    async with serving(rotating) as (_, http):
        login = await http.post(
            "/api/v1/auth/login", json={"email": user.email, "password": user.password}
        )
    assert login.status_code == 200, login.text

    rotated = make_settings(database_url, tmp_path, secret_key=OTHER_SECRET)
    async with serving(rotated) as (_, http):
        response = await http.get(ME, headers=bearer(login.json()["access_token"]))

    assert response.status_code == 200, response.text
