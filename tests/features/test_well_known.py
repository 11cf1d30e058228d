"""GET /.well-known/jwks.json and /.well-known/oauth-authorization-server, through HTTP
on SQLite and PostgreSQL (API.md v1.1, "Tokens other services can verify")."""

from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import make_settings
from tests.factories import make_user, serving

JWKS = "/.well-known/jwks.json"
METADATA = "/.well-known/oauth-authorization-server"
# JWK members that carry private or symmetric key material (RFC 7518 section 6).
SECRET_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}


async def test_jwks_publishes_the_public_key_that_verifies_our_tokens(
    client: httpx.AsyncClient,
) -> None:
    user = await make_user(client)

    response = await client.get(JWKS)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"].startswith("public, max-age=")
    assert int(response.headers["cache-control"].rsplit("=", 1)[1]) > 0
    (key,) = response.json()["keys"]
    assert key["kid"] == jwt.get_unverified_header(user.access_token)["kid"]
    assert key["alg"] == "EdDSA"
    assert key["use"] == "sig"
    assert (key["kty"], key["crv"]) == ("OKP", "Ed25519")
    claims = jwt.decode(
        user.access_token, jwt.PyJWK(key).key, algorithms=["EdDSA"], audience="userapi"
    )
    assert claims["sub"] == user.id


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
async def test_jwks_never_holds_private_parts(
    database_url: str, tmp_path: Path, algorithm: str
) -> None:
    async with serving(make_settings(database_url, tmp_path, jwt_algorithm=algorithm)) as (
        _,
        http,
    ):
        response = await http.get(JWKS)

    keys = response.json()["keys"]
    assert keys
    assert all(key["alg"] == algorithm and key["use"] == "sig" and key["kid"] for key in keys)
    assert [sorted(SECRET_MEMBERS & key.keys()) for key in keys] == [[] for _ in keys]


async def test_jwks_is_empty_with_hs256(database_url: str, tmp_path: Path) -> None:
    # The HMAC key is the secret itself: publishing it would let anyone mint tokens.
    async with serving(make_settings(database_url, tmp_path, jwt_algorithm="HS256")) as (
        _,
        http,
    ):
        await make_user(http)
        response = await http.get(JWKS)

    assert response.status_code == 200
    assert response.json() == {"keys": []}


async def test_metadata_names_the_issuer_the_jwks_and_the_token_endpoint(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(METADATA)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"].startswith("public, max-age=")
    assert response.json() == {
        "issuer": "userapi",
        "jwks_uri": "http://testserver/.well-known/jwks.json",
        "token_endpoint": "http://testserver/api/v1/auth/login",
        "grant_types_supported": ["password", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
    }


async def test_metadata_follows_the_configured_issuer(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path, jwt_issuer="https://auth.example.com")
    async with serving(settings) as (_, http):
        response = await http.get(METADATA)

    assert response.json()["issuer"] == "https://auth.example.com"


async def test_the_well_known_paths_are_not_under_the_api_prefix(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(f"/api/v1{JWKS}")

    assert response.status_code == 404
