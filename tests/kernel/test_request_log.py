"""The request log of a real server: one JSON object a line in production, text at a
terminal, the same fields either way, and never a password, token, code or hash.
"""

import json
import re
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from sqlmodel import col

from kernel.db import Database
from kernel.users import User
from tests.conftest import make_settings
from tests.factories import DEFAULT_PASSWORD, registration
from tests.mail import Mailbox, code_in, token_in
from tests.servers import Server, cli_env, run_cli, running_server, server_env, serving_process
from tests.waiting import wait_until

API = "/api/v1"
# Production refuses weaker argon2 than OWASP's floor: the floor itself is quick enough.
OWASP_FLOOR = {"ARGON2_MEMORY_KIB": "19456", "ARGON2_TIME_COST": "2", "ARGON2_PARALLELISM": "1"}


def json_lines(server: Server) -> list[dict[str, Any]]:
    """Every line the server wrote, each parsed as JSON (a line that is not JSON fails)."""
    lines = server.log().decode().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def access_line(lines: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    found = [line for line in lines if line.get("request_id") == request_id]
    assert len(found) == 1, f"{len(found)} log lines for {request_id}"
    return found[0]


async def stored_hash(database_url: str, tmp_path: Path, email: str) -> str:
    database = Database(make_settings(database_url, tmp_path / "peek"))
    try:
        async with database.session(writes=False) as session:
            hashed = await session.scalar(
                select(col(User.password_hash)).where(col(User.email) == email)
            )
    finally:
        await database.dispose()
    assert hashed
    return str(hashed)


async def test_production_logs_one_json_object_per_request_and_no_secret(
    database_url: str, tmp_path: Path, mailbox: Mailbox
) -> None:
    smtp = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(mailbox.port),
        "SMTP_TLS": "none",
        "MAIL_POLL_SECONDS": "0.1",
    }
    env = server_env(database_url) | OWASP_FLOOR | smtp | {"ENV": "production"}
    body = registration()
    async with (
        serving_process(tmp_path, env) as server,
        httpx.AsyncClient(base_url=f"{server.base_url}{API}", timeout=30) as client,
    ):
        registered = await client.post(
            "/auth/register", json=body, headers={"X-Request-ID": "log-register"}
        )
        assert registered.status_code == 201, registered.text
        user_id = registered.json()["id"]
        login = {"email": body["email"], "password": DEFAULT_PASSWORD}
        tokens = (
            await client.post("/auth/login", json=login, headers={"X-Request-ID": "log-login"})
        ).json()
        bearer = {"Authorization": f"Bearer {tokens['access_token']}", "X-Request-ID": "log-me"}
        assert (await client.get("/users/me", headers=bearer)).status_code == 200
        refreshed = await client.post(
            "/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.status_code == 200, refreshed.text
        mail = (await mailbox.wait_for(body["email"]))[0]
        code, link_token = code_in(mail), token_in(mail)
        verified = await client.post(
            "/auth/verify-email", json={"email": body["email"], "code": code}
        )
        assert verified.status_code == 204, verified.text
        # Its line is written once the response is sent: wait for it, not for a time.
        await wait_until(
            lambda: b"/auth/verify-email" in server.log(), within=10, what="the last line"
        )
        lines = json_lines(server)
        written = server.log().decode()

    me = access_line(lines, "log-me")
    assert me["logger"] == "userapi.access"
    assert me["level"] == "INFO"
    assert me["method"] == "GET"
    assert me["route"] == f"{API}/users/me"
    assert me["status"] == 200
    assert me["user_id"] == user_id
    assert me["client_ip"] == "127.0.0.1"
    assert isinstance(me["duration_ms"], float)
    assert me["time"].endswith("+00:00")
    logged_in = access_line(lines, "log-login")
    assert (logged_in["route"], logged_in["status"], logged_in["user_id"]) == (
        f"{API}/auth/login",
        200,
        None,  # not known until a token is verified
    )
    assert access_line(lines, "log-register")["status"] == 201
    # uvicorn's own lines are JSON too: a collector never meets one it cannot parse.
    assert any(line["logger"].startswith("uvicorn") for line in lines)

    secrets = {
        "password": DEFAULT_PASSWORD,
        "access token": tokens["access_token"],
        "refresh token": tokens["refresh_token"],
        "new refresh token": refreshed.json()["refresh_token"],
        "mailed token": link_token,
        "password hash": await stored_hash(database_url, tmp_path, body["email"]),
    }
    for name, secret in secrets.items():
        assert secret not in written, f"the {name} is in the log"
    # The six-digit code: in no field (a timestamp's microseconds could hold any digits).
    for line in lines:
        line.pop("time")
        assert code not in json.dumps(line), f"the mailed code is in {line}"


async def test_a_terminal_gets_readable_text_with_the_same_fields(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_server(database_url, tmp_path) as server,  # ENV=test: text by default
        httpx.AsyncClient(base_url=f"{server.base_url}{API}", timeout=30) as client,
    ):
        body = registration()
        assert (await client.post("/auth/register", json=body)).status_code == 201
        login = {"email": body["email"], "password": DEFAULT_PASSWORD}
        tokens = (await client.post("/auth/login", json=login)).json()
        bearer = {"Authorization": f"Bearer {tokens['access_token']}", "X-Request-ID": "text-me"}
        me = await client.get("/users/me", headers=bearer)
        assert me.status_code == 200
        await wait_until(lambda: b"request_id=text-me" in server.log(), within=10, what="line")
        written = server.log().decode()

    line = next(line for line in written.splitlines() if "request_id=text-me" in line)
    pattern = (
        r"^\S+ \S+ INFO userapi\.access GET /api/v1/users/me 200 \d+\.\dms "
        rf"user_id={me.json()['id']} client=127\.0\.0\.1 request_id=text-me$"
    )
    assert re.match(pattern, line), line
    assert not any(text.startswith("{") for text in written.splitlines())
    assert DEFAULT_PASSWORD not in written


async def test_an_unknown_log_format_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}", LOG_FORMAT="xml")
    result = await run_cli("serve", env=env, cwd=tmp_path)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "LOG_FORMAT" in result.stderr
