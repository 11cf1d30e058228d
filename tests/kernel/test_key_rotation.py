"""Key rotation across real processes, and our tokens verified as another service would.

API.md v1.1, "Tokens other services can verify": `userapi keys rotate` publishes a new
key at once, signs with it after KEY_PUBLISH_SECONDS, and nobody is logged out, in any
process. Another service needs only our JWKS URL: no shared secret.
"""

import asyncio
import sys
from datetime import datetime
from functools import partial
from pathlib import Path

import httpx
import jwt

from tests.factories import DEFAULT_PASSWORD, registration
from tests.servers import Server, cli_env, run_cli, running_server, running_servers, server_env
from tests.waiting import poll

# Short, so the test sees a key start signing; servers then re-read keys every second.
PUBLISH = {"KEY_PUBLISH_SECONDS": "3"}
START_SIGNING_WITHIN = 60.0

# The other service: PyJWT's JWKS client, in a process of its own that knows no secret.
VERIFIER = """
import sys
import jwt

jwks_url, token = sys.argv[1], sys.argv[2]
key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(token)
claims = jwt.decode(
    token, key, algorithms=["EdDSA", "ES256"], audience="userapi", issuer="userapi"
)
print(claims["sub"])
"""


async def verify_elsewhere(server: Server, token: str) -> str:
    """The `sub` another service reads from this token, or what it printed on failure."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        VERIFIER,
        f"{server.base_url}/.well-known/jwks.json",
        token,
        env={"PATH": cli_env()["PATH"]},  # no SECRET_KEY, no DATABASE_URL
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode().strip()


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def login(client: httpx.AsyncClient, server: Server, email: str) -> str:
    response = await client.post(
        f"{server.base_url}/api/v1/auth/login", json={"email": email, "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


class Refresher:
    """Fresh access tokens from one session (each poll refreshes, not logs in: a login
    per poll would pile up sessions and evict the oldest, the one under test)."""

    def __init__(self, client: httpx.AsyncClient, refresh_token: str) -> None:
        self._client = client
        self._refresh_token = refresh_token

    async def access_token(self, server: Server) -> str:
        response = await self._client.post(
            f"{server.base_url}/api/v1/auth/refresh", json={"refresh_token": self._refresh_token}
        )
        assert response.status_code == 200, response.text
        self._refresh_token = response.json()["refresh_token"]
        token: str = response.json()["access_token"]
        return token


async def me_status(client: httpx.AsyncClient, server: Server, token: str) -> int:
    response = await client.get(
        f"{server.base_url}/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}
    )
    return response.status_code


async def published_kids(client: httpx.AsyncClient, server: Server) -> list[str]:
    response = await client.get(f"{server.base_url}/.well-known/jwks.json")
    assert response.status_code == 200, response.text
    return [key["kid"] for key in response.json()["keys"]]


async def test_a_token_verifies_in_another_process_with_only_the_jwks(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_server(database_url, tmp_path) as server,
        httpx.AsyncClient(timeout=30) as client,
    ):
        registered = await client.post(
            f"{server.base_url}/api/v1/auth/register",
            json=registration(email="verified@example.com"),
        )
        assert registered.status_code == 201, registered.text
        token = await login(client, server, "verified@example.com")

        assert await verify_elsewhere(server, token) == registered.json()["id"]


async def test_two_servers_go_through_a_rotation_and_nobody_is_logged_out(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_servers(2, database_url, tmp_path, env=PUBLISH) as (first, second),
        httpx.AsyncClient(timeout=30) as client,
    ):
        registered = await client.post(
            f"{first.base_url}/api/v1/auth/register", json=registration(email="rot@example.com")
        )
        assert registered.status_code == 201, registered.text
        before = await login(client, first, "rot@example.com")
        old_kid = kid_of(before)
        second_login = await client.post(
            f"{first.base_url}/api/v1/auth/login",
            json={"email": "rot@example.com", "password": DEFAULT_PASSWORD},
        )
        assert second_login.status_code == 200, second_login.text
        refresher = Refresher(client, second_login.json()["refresh_token"])
        assert await published_kids(client, second) == [old_kid]

        rotated = await run_cli(
            "keys", "rotate", env=server_env(database_url, **PUBLISH), cwd=tmp_path
        )
        assert rotated.returncode == 0, rotated.stderr
        # "published KID; it signs from ISO-TIME"
        new_kid = rotated.stdout.split()[1].rstrip(";")
        signs_from = datetime.fromisoformat(rotated.stdout.split()[-1])

        for server in (first, second):
            await poll(
                partial(published_kids, client, server),
                until=lambda kids: kids == [old_kid, new_kid],
                within=START_SIGNING_WITHIN,
                what=f"both keys in the JWKS of {server.describe()}",
            )
            signed = await poll(
                partial(refresher.access_token, server),
                until=lambda token: kid_of(token) == new_kid,
                within=START_SIGNING_WITHIN,
                what=f"{server.describe()} signing with the new key",
            )
            # Never before the publish delay was over (iat is whole seconds).
            issued_at = jwt.decode(signed[-1], options={"verify_signature": False})["iat"]
            assert issued_at >= int(signs_from.timestamp())
            assert all(kid_of(token) == old_kid for token in signed[:-1])

            # The token from before the rotation and the new one work everywhere.
            assert await me_status(client, first, before) == 200
            assert await me_status(client, second, before) == 200
            assert await me_status(client, first, signed[-1]) == 200
            assert await me_status(client, second, signed[-1]) == 200

        # And another service follows the rotation from the JWKS alone.
        assert await verify_elsewhere(second, before) == registered.json()["id"]
        assert await verify_elsewhere(first, signed[-1]) == registered.json()["id"]

        listed = await run_cli("keys", "list", env=server_env(database_url), cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        old_line, new_line = listed.stdout.splitlines()
        assert old_line.startswith(old_kid)
        assert f"retired {signs_from.isoformat()}" in old_line
        assert new_line.startswith(new_kid)
        assert "retired -" in new_line
        assert "PRIVATE" not in listed.stdout


async def test_keys_rotate_refuses_with_hs256(database_url: str, tmp_path: Path) -> None:
    result = await run_cli(
        "keys", "rotate", env=server_env(database_url, JWT_ALGORITHM="HS256"), cwd=tmp_path
    )

    assert result.returncode == 1
    assert "SECRET_KEY_PREVIOUS" in result.stderr
