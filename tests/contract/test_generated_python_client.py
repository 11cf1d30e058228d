"""A Python client generated from /openapi.json by openapi-python-client works end to end.

The client is generated into a temporary folder from the app's own document, then used
against a real `userapi serve`: every call must come back as the generated typed model,
never as raw bytes or an untyped dict.
"""

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kernel.app import create_app
from tests.conftest import make_settings
from tests.factories import DEFAULT_PASSWORD
from tests.servers import run_cli, running_server, server_env

GENERATOR = str(Path(sys.executable).parent / "openapi-python-client")
ADMIN_PASSWORD = "generated client admin passphrase"


@pytest.fixture(scope="module")
def client_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    folder = tmp_path_factory.mktemp("generated")
    spec = folder / "openapi.json"
    app = create_app(make_settings(f"sqlite+aiosqlite:///{folder}/spec.db", folder))
    spec.write_text(__import__("json").dumps(app.openapi()))
    subprocess.run(
        [
            GENERATOR,
            "generate",
            "--path",
            str(spec),
            "--meta",
            "none",
            "--output-path",
            str(folder / "userapi_client"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("userapi_client")
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name.startswith("userapi_client")]:
            del sys.modules[name]


def _module(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


async def test_generated_client_walks_the_whole_account_lifecycle(
    client_package: ModuleType, database_url: str, tmp_path: Path
) -> None:
    models = _module(client_package, "models")
    auth = {
        name: _module(client_package, f"api.auth.{name}")
        for name in ("register", "login", "refresh", "logout")
    }
    users = {
        name: _module(client_package, f"api.users.{name}")
        for name in ("get_me", "update_me", "get_user", "list_users")
    }
    created = await run_cli(
        "create-admin",
        "--email",
        "boss@example.com",
        "--password",
        ADMIN_PASSWORD,
        env=server_env(database_url),
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stderr

    async with running_server(database_url, tmp_path) as server:
        anonymous = client_package.Client(base_url=server.base_url)
        created = await auth["register"].asyncio(
            client=anonymous,
            body=models.Registration(
                email="Grace@Example.com",
                password=DEFAULT_PASSWORD,
                first_name="Grace",
                last_name="Hopper",
            ),
        )
        assert isinstance(created, models.PrivateUser)
        assert created.email == "grace@example.com"

        pair = await auth["login"].asyncio(
            client=anonymous,
            body=models.LoginCredentials(email="grace@example.com", password=DEFAULT_PASSWORD),
        )
        assert isinstance(pair, models.TokenPair)
        grace = client_package.AuthenticatedClient(
            base_url=server.base_url, token=pair.access_token
        )

        me = await users["get_me"].asyncio(client=grace)
        assert isinstance(me, models.PrivateUser)
        assert me.id == created.id

        updated = await users["update_me"].asyncio(
            client=grace, body=models.UserUpdate(bio="COBOL", avatar_url=None)
        )
        assert isinstance(updated, models.PrivateUser)
        assert updated.bio == "COBOL"
        read_back = await users["get_user"].asyncio(client=grace, user_id=created.id)
        assert isinstance(read_back, models.PrivateUser)
        assert read_back.bio == "COBOL"

        refreshed = await auth["refresh"].asyncio(
            client=anonymous, body=models.RefreshRequest(refresh_token=pair.refresh_token)
        )
        assert isinstance(refreshed, models.TokenPair)
        assert refreshed.refresh_token != pair.refresh_token
        logged_out = await auth["logout"].asyncio_detailed(
            client=anonymous, body=models.LogoutRequest(refresh_token=refreshed.refresh_token)
        )
        assert logged_out.status_code == 204
        spent = await auth["refresh"].asyncio(
            client=anonymous, body=models.RefreshRequest(refresh_token=refreshed.refresh_token)
        )
        assert isinstance(spent, models.Problem)
        assert spent.code == "invalid_token"

        for index in range(3):
            await auth["register"].asyncio(
                client=anonymous,
                body=models.Registration(
                    email=f"crew{index}@example.com",
                    password=DEFAULT_PASSWORD,
                    first_name="Crew",
                    last_name=str(index),
                ),
            )
        boss_pair = await auth["login"].asyncio(
            client=anonymous,
            body=models.LoginCredentials(email="boss@example.com", password=ADMIN_PASSWORD),
        )
        boss = client_package.AuthenticatedClient(
            base_url=server.base_url, token=boss_pair.access_token
        )
        seen: list[str] = []
        cursor: Any = _module(client_package, "types").UNSET
        while True:
            page = await users["list_users"].asyncio(
                client=boss, limit=2, cursor=cursor, sort=models.ListUsersSort.EMAIL
            )
            assert isinstance(page, models.UserPage)
            assert all(isinstance(item, models.PrivateUser) for item in page.items)
            seen += [item.email for item in page.items]
            if not page.next_cursor:
                break
            cursor = page.next_cursor

    assert seen == sorted(seen)
    assert set(seen) == {
        "boss@example.com",
        "grace@example.com",
        "crew0@example.com",
        "crew1@example.com",
        "crew2@example.com",
    }
