"""Bearer authentication, as every protected route sees it (through GET /api/v1/users/me).

API.md "Authentication": the verifier pins the algorithm and checks every claim; missing
token -> 401 not_authenticated, anything wrong with it -> 401 invalid_token. The claim
tests forge with the app's own current key (EdDSA by default): each is valid but for the
one thing it breaks. API.md v1.1: the kid names the key, and that key's algorithm is the
only one allowed.
"""

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI

from kernel.settings import Settings
from kernel.signing_keys import CLOCK_SKEW_SECONDS
from tests.conftest import make_settings
from tests.factories import (
    TEST_SECRET,
    Account,
    assert_problem,
    deactivate_self,
    make_user,
    serving,
)
from tests.kernel.helpers import (
    access_claims,
    bearer,
    forge_token,
    forge_with,
    generated_key,
    hs256_by_hand,
    key_id,
    signing_key,
)
from tests.servers import running_server
from tests.waiting import poll

ME = "/api/v1/users/me"
OTHER_SECRET = "another-secret-key-that-is-long-enough-for-hs256-9876543210"


async def test_forged_token_with_the_right_key_and_claims_is_accepted(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    # The control for every negative test below: our own forgery is valid when done right.
    response = await client.get(ME, headers=bearer(forge_with(app, access_claims(user))))

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


# --- algorithm pinning: a token may use only the algorithm of the key its kid names ------


async def test_token_signed_with_another_key_under_our_kid_is_401(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    ours = signing_key(app)
    stranger, _ = generated_key(ours.algorithm)
    token = forge_token(access_claims(user), key=stranger, algorithm=ours.algorithm, kid=ours.kid)

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


async def test_our_own_signature_under_an_unknown_kid_is_401(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    ours = signing_key(app)
    token = forge_token(
        access_claims(user), key=ours.signing, algorithm=ours.algorithm, kid="no-such-key"
    )

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


async def test_unsigned_token_with_alg_none_is_401(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    token = jwt.encode(
        access_claims(user), "", algorithm="none", headers={"kid": signing_key(app).kid}
    )

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


@pytest.mark.parametrize("form", ["pem", "jwk"])
async def test_hs256_keyed_with_our_public_key_is_401(
    app: FastAPI, client: httpx.AsyncClient, user: Account, form: str
) -> None:
    # The classic confusion attack: the public key, which anyone can fetch, as an HMAC secret.
    ours = signing_key(app)
    public = (
        ours.verifying.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        if form == "pem"
        else json.dumps(ours.public_jwk).encode()
    )
    token = hs256_by_hand(access_claims(user), secret=public, kid=ours.kid)

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


async def test_es256_token_naming_our_eddsa_kid_is_401(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    ours = signing_key(app)
    assert ours.algorithm == "EdDSA"  # the default
    es256, _ = generated_key("ES256")
    token = forge_token(access_claims(user), key=es256, algorithm="ES256", kid=ours.kid)

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


async def test_hs256_with_the_secret_key_is_401_when_tokens_are_asymmetric(
    client: httpx.AsyncClient, user: Account
) -> None:
    # With EdDSA, SECRET_KEY alone mints nothing: it only seals the private keys.
    token = forge_token(access_claims(user))

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


async def test_token_with_a_tampered_payload_is_401(
    app: FastAPI, client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    header, _, signature = forge_with(app, access_claims(user)).split(".")
    payload = json.dumps(access_claims(other_user), default=lambda moment: int(moment.timestamp()))
    forged_payload = base64.urlsafe_b64encode(payload.encode()).rstrip(b"=").decode()

    response = await client.get(ME, headers=bearer(f"{header}.{forged_payload}.{signature}"))

    assert_problem(response, 401, "invalid_token")


async def test_expired_token_is_401(app: FastAPI, client: httpx.AsyncClient, user: Account) -> None:
    now = datetime.now(UTC)
    claims = access_claims(
        user.id,
        iat=now - timedelta(minutes=20),
        nbf=now - timedelta(minutes=20),
        exp=now - timedelta(seconds=60),  # well beyond the 10 s clock-skew leeway
    )

    response = await client.get(ME, headers=bearer(forge_with(app, claims)))

    assert_problem(response, 401, "invalid_token")


async def test_a_token_accepted_before_is_refused_once_it_expires(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    # Its signature is checked once and remembered (kernel.tokens); its lifetime is
    # checked on every request. Expired a moment before the leeway ends: accepted now,
    # refused a second or two later.
    now = datetime.now(UTC)
    # Whole seconds, as the token carries them.
    refused_from = datetime.fromtimestamp(int(now.timestamp()) + 2, UTC)
    expires = refused_from - timedelta(seconds=CLOCK_SKEW_SECONDS)
    started = now - timedelta(minutes=15)
    claims = access_claims(user, iat=started, nbf=started, exp=expires)
    headers = bearer(forge_with(app, claims))
    assert (await client.get(ME, headers=headers)).status_code == 200

    answers = await poll(
        lambda: client.get(ME, headers=headers),
        until=lambda r: r.status_code != 200,
        within=10,
        what="the expired token refused",
    )

    assert datetime.now(UTC) >= refused_from
    assert_problem(answers[-1], 401, "invalid_token")


async def test_token_not_yet_valid_is_401(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    later = datetime.now(UTC) + timedelta(minutes=5)
    claims = access_claims(user, iat=later, nbf=later, exp=later + timedelta(minutes=15))

    response = await client.get(ME, headers=bearer(forge_with(app, claims)))

    assert_problem(response, 401, "invalid_token")


@pytest.mark.parametrize(("claim", "value"), [("iss", "someone-else"), ("aud", "another-api")])
async def test_token_for_another_issuer_or_audience_is_401(
    app: FastAPI, client: httpx.AsyncClient, user: Account, claim: str, value: str
) -> None:
    token = forge_with(app, access_claims(user, **{claim: value}))

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


@pytest.mark.parametrize("claim", ["jti", "sub", "sid", "exp", "iat", "nbf", "iss", "aud"])
async def test_token_missing_a_required_claim_is_401(
    app: FastAPI, client: httpx.AsyncClient, user: Account, claim: str
) -> None:
    claims = access_claims(user)
    del claims[claim]

    response = await client.get(ME, headers=bearer(forge_with(app, claims)))

    assert_problem(response, 401, "invalid_token")


async def test_token_of_type_refresh_is_401(
    app: FastAPI, client: httpx.AsyncClient, user: Account
) -> None:
    token = forge_with(app, access_claims(user, typ="refresh"))

    response = await client.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


async def test_token_for_a_user_that_does_not_exist_is_401(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token = forge_with(app, access_claims(str(uuid.uuid4())))

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


# --- HS256 (JWT_ALGORITHM=HS256): HMAC keys from SECRET_KEY, rotated with _PREVIOUS -----


@pytest.fixture
def hs256(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path, jwt_algorithm="HS256")


@pytest.fixture
async def hs256_user(hs256: Settings) -> Account:
    """A user whose token was issued under HS256 with SECRET_KEY=TEST_SECRET."""
    async with serving(hs256) as (_, http):
        return await make_user(http)


async def test_hs256_token_with_the_right_key_and_claims_is_accepted(
    hs256: Settings, hs256_user: Account
) -> None:
    async with serving(hs256) as (_, http):
        response = await http.get(ME, headers=bearer(forge_token(access_claims(hs256_user))))

    assert response.status_code == 200, response.text


async def test_a_new_process_accepts_a_token_as_its_very_first_request(
    database_url: str, tmp_path: Path, hs256_user: Account
) -> None:
    # HS256 keys touch no table and the mail sender is off: the server has run no ORM
    # query when this token reaches it, which once left the caller's objects half built.
    env = {"JWT_ALGORITHM": "HS256", "MAIL_SENDER_ENABLED": "false"}
    async with (
        running_server(database_url, tmp_path, env=env) as server,
        httpx.AsyncClient(base_url=server.base_url) as http,
    ):
        response = await http.get(ME, headers=hs256_user.headers)

    assert response.status_code == 200, response.text
    assert response.json()["id"] == hs256_user.id


@pytest.mark.parametrize("kid", ["known", "unknown"])
async def test_hs256_token_signed_with_another_secret_is_401(
    hs256: Settings, hs256_user: Account, kid: str
) -> None:
    token = forge_token(
        access_claims(hs256_user),
        key=OTHER_SECRET,
        kid=key_id(TEST_SECRET if kid == "known" else OTHER_SECRET),
    )
    async with serving(hs256) as (_, http):
        response = await http.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


async def test_hs256_alg_none_is_401(hs256: Settings, hs256_user: Account) -> None:
    token = jwt.encode(
        access_claims(hs256_user), "", algorithm="none", headers={"kid": key_id(TEST_SECRET)}
    )
    async with serving(hs256) as (_, http):
        response = await http.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


# The test key is shorter than HS512 would want; the point is that HS512 is refused at all.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_hs256_token_signed_with_hs512_is_401(hs256: Settings, hs256_user: Account) -> None:
    token = forge_token(access_claims(hs256_user), algorithm="HS512")
    async with serving(hs256) as (_, http):
        response = await http.get(ME, headers=bearer(token))

    assert_problem(response, 401, "invalid_token")


async def test_token_signed_with_the_previous_key_still_works_during_rotation(
    database_url: str, tmp_path: Path, hs256_user: Account
) -> None:
    rotated = make_settings(
        database_url,
        tmp_path,
        jwt_algorithm="HS256",
        secret_key=OTHER_SECRET,
        secret_key_previous=TEST_SECRET,
    )

    async with serving(rotated) as (_, http):
        response = await http.get(ME, headers=hs256_user.headers)

    assert response.status_code == 200, response.text
    assert response.json()["id"] == hs256_user.id


async def test_token_signed_with_a_removed_key_fails(
    database_url: str, tmp_path: Path, hs256_user: Account
) -> None:
    rotated = make_settings(database_url, tmp_path, jwt_algorithm="HS256", secret_key=OTHER_SECRET)

    async with serving(rotated) as (_, http):
        response = await http.get(ME, headers=hs256_user.headers)

    assert_problem(response, 401, "invalid_token")


async def test_tokens_issued_during_rotation_are_signed_with_the_new_key(
    database_url: str, tmp_path: Path, hs256_user: Account
) -> None:
    rotating = make_settings(
        database_url,
        tmp_path,
        jwt_algorithm="HS256",
        secret_key=OTHER_SECRET,
        secret_key_previous=TEST_SECRET,
    )
    async with serving(rotating) as (_, http):
        login = await http.post(
            "/api/v1/auth/login", json={"email": hs256_user.email, "password": hs256_user.password}
        )
    assert login.status_code == 200, login.text

    rotated = make_settings(database_url, tmp_path, jwt_algorithm="HS256", secret_key=OTHER_SECRET)
    async with serving(rotated) as (_, http):
        response = await http.get(ME, headers=bearer(login.json()["access_token"]))

    assert response.status_code == 200, response.text
