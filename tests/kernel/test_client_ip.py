"""The client IP (API.md, "Edge limits"): the peer address, or from X-Forwarded-For only
when the peer is in TRUSTED_PROXIES, the right-most entry that is not a trusted proxy.
One rule for the sessions, the security events, the per-IP limit and the access log, the
same in the app and behind the real server.
"""

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from kernel.settings import SettingsError, load_settings
from tests.conftest import make_settings
from tests.factories import (
    DEFAULT_PASSWORD,
    assert_problem,
    client_from,
    my_events,
    register,
    serving,
)
from tests.servers import running_server
from tests.waiting import wait_until

PROXY = "10.0.0.5"
CLIENT = "203.0.113.9"
STRANGER = "198.51.100.1"


@asynccontextmanager
async def app_trusting(
    database_url: str, data_dir: Path, proxies: str, **overrides: Any
) -> AsyncIterator[FastAPI]:
    settings = make_settings(database_url, data_dir, trusted_proxies=proxies, **overrides)
    async with serving(settings) as (app, _):
        yield app


async def login_seen_as(client: httpx.AsyncClient, headers: list[tuple[str, str]]) -> str | None:
    """Register and log in with these headers; the IP the new session records."""
    account = await register(client)
    response = await client.post(
        "/api/v1/auth/login",
        json={"email": account.email, "password": DEFAULT_PASSWORD},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    bearer = {"Authorization": f"Bearer {response.json()['access_token']}"}
    sessions = await client.get("/api/v1/users/me/sessions", headers=bearer)
    assert sessions.status_code == 200, sessions.text
    (session,) = sessions.json()["items"]
    ip: str | None = session["ip"]
    return ip


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded_for", "client_ip"),
    [
        # From a trusted proxy: the address it appended.
        ("10.0.0.0/8", PROXY, [CLIENT], CLIENT),
        # What the client wrote itself (left of the proxy's entry) is not believed.
        ("10.0.0.0/8", PROXY, [f"192.0.2.66, {CLIENT}"], CLIENT),
        # A chain of trusted proxies: the right-most entry that is not one of them.
        ("10.0.0.0/8", PROXY, [f"192.0.2.66, {CLIENT}, 10.1.1.1"], CLIENT),
        # Several header lines are one list, in order.
        ("10.0.0.0/8", PROXY, ["192.0.2.66", f"{CLIENT}, 10.1.1.1"], CLIENT),
        # Ports and brackets as some proxies write them; IPv6 in canonical form.
        ("10.0.0.0/8", PROXY, [f"{CLIENT}:5123"], CLIENT),
        ("10.0.0.0/8", PROXY, ["[2001:DB8::0001]:443"], "2001:db8::1"),
        # Not an address where the proxy's entry should be: the proxy is all we know.
        ("10.0.0.0/8", PROXY, ["unknown"], PROXY),
        ("10.0.0.0/8", PROXY, ["x\r\nforged log line"], PROXY),
        # Every entry a trusted proxy: the first of them.
        ("10.0.0.0/8", PROXY, ["10.9.9.9, 10.1.1.1"], "10.9.9.9"),
        # From anyone else the header is ignored: the peer is the client.
        ("10.0.0.0/8", STRANGER, [CLIENT], STRANGER),
        # TRUSTED_PROXIES is empty by default: loopback is not trusted either.
        ("", "127.0.0.1", [CLIENT], "127.0.0.1"),
        ("", PROXY, [CLIENT], PROXY),
        # A dual-stack socket's IPv4-mapped peer is its IPv4 address.
        ("", "::ffff:192.0.2.7", [], "192.0.2.7"),
    ],
)
async def test_sessions_record_the_client_ip_by_the_trusted_proxy_rule(
    database_url: str,
    tmp_path: Path,
    trusted: str,
    peer: str,
    forwarded_for: list[str],
    client_ip: str,
) -> None:
    headers = [("X-Forwarded-For", value) for value in forwarded_for]
    async with (
        app_trusting(database_url, tmp_path, trusted) as app,
        client_from(app, peer) as client,
    ):
        assert await login_seen_as(client, headers) == client_ip


async def test_security_events_and_the_access_log_carry_the_same_client_ip(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="userapi.access")
    request_id = f"via-proxy-{uuid.uuid4().hex}"
    async with (
        app_trusting(database_url, tmp_path, "10.0.0.0/8") as app,
        client_from(app, PROXY) as client,
    ):
        account = await register(client)
        response = await client.post(
            "/api/v1/auth/login",
            json={"email": account.email, "password": DEFAULT_PASSWORD},
            headers={"X-Forwarded-For": f"192.0.2.66, {CLIENT}", "X-Request-ID": request_id},
        )
        assert response.status_code == 200, response.text
        account.access_token = response.json()["access_token"]
        events = await my_events(client, account)

    by_type = {event["type"]: event["ip"] for event in events}
    assert by_type == {"registered": PROXY, "login_succeeded": CLIENT}
    lines = [record.getMessage() for record in caplog.records]
    assert "POST /api/v1/auth/login 200" in "\n".join(lines)
    (line,) = [line for line in lines if f"request_id={request_id}" in line]
    assert f" client={CLIENT} request_id={request_id}" in line


async def test_each_client_behind_a_trusted_proxy_has_its_own_budget(
    database_url: str, tmp_path: Path
) -> None:
    overrides = {"rate_limit_per_ip": "1/hour"}
    async with (
        app_trusting(database_url, tmp_path, "10.0.0.0/8", **overrides) as app,
        client_from(app, PROXY) as proxy,
        client_from(app, STRANGER) as stranger,
    ):

        async def login_as(client: httpx.AsyncClient, forwarded_for: str) -> httpx.Response:
            body = {"email": "nobody@example.com", "password": DEFAULT_PASSWORD}
            headers = {"X-Forwarded-For": forwarded_for}
            return await client.post("/api/v1/auth/login", json=body, headers=headers)

        first = await login_as(proxy, "192.0.2.1")
        second = await login_as(proxy, "192.0.2.2")
        first_again = await login_as(proxy, "192.0.2.1")
        # An untrusted peer cannot buy a fresh budget by naming another address.
        stranger_first = await login_as(stranger, "192.0.2.3")
        stranger_forged = await login_as(stranger, "192.0.2.4")

    assert first.status_code == second.status_code == stranger_first.status_code == 401
    assert_problem(first_again, 429, "too_many_requests")
    assert_problem(stranger_forged, 429, "too_many_requests")


@pytest.mark.parametrize(("peer", "scheme"), [(PROXY, "https"), (STRANGER, "http")])
async def test_published_urls_follow_x_forwarded_proto_from_a_trusted_proxy_only(
    database_url: str, tmp_path: Path, peer: str, scheme: str
) -> None:
    async with (
        app_trusting(database_url, tmp_path, "10.0.0.0/8") as app,
        client_from(app, peer) as client,
    ):
        response = await client.get(
            "/.well-known/oauth-authorization-server", headers={"X-Forwarded-Proto": "https"}
        )

    assert response.status_code == 200
    assert response.json()["jwks_uri"] == f"{scheme}://testserver/.well-known/jwks.json"


async def test_the_real_server_applies_the_same_rule_and_only_once(
    database_url: str, tmp_path: Path
) -> None:
    # The server trusts 127.0.0.2 only. From 127.0.0.1 (which uvicorn's own proxy
    # handling would trust by default) the header is ignored; from 127.0.0.2 it is used.
    async with running_server(
        database_url, tmp_path, env={"TRUSTED_PROXIES": "127.0.0.2"}
    ) as server:
        seen: dict[str, str] = {}
        for source in ("127.0.0.1", "127.0.0.2"):
            request_id = f"from-{source}-{uuid.uuid4().hex}"
            seen[source] = request_id
            transport = httpx.AsyncHTTPTransport(local_address=source)
            async with httpx.AsyncClient(transport=transport, timeout=30) as client:
                response = await client.get(
                    f"{server.base_url}/health",
                    headers={"X-Forwarded-For": CLIENT, "X-Request-ID": request_id},
                )
            assert response.status_code == 200

        def logged(client_ip: str, request_id: str) -> bool:
            text = server.log_path.read_text(errors="replace")
            return f" client={client_ip} request_id={request_id}" in text

        await wait_until(
            lambda: logged("127.0.0.1", seen["127.0.0.1"]) and logged(CLIENT, seen["127.0.0.2"]),
            within=30,
            what="both requests in the access log with the client IPs the rule gives\n"
            + server.log_report(),
        )


@pytest.mark.parametrize("value", ["10.0.0.1/8", "localhost", "10.0.0.0/33", "*"])
def test_a_bad_trusted_proxies_value_stops_start_up_in_one_line(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(trusted_proxies=value)

    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert "TRUSTED_PROXIES" in message
    assert repr(value) in message


def test_trusted_proxies_read_as_a_comma_separated_list() -> None:
    settings = load_settings(trusted_proxies="10.0.0.0/8, 192.0.2.10,::1")

    assert [str(network) for network in settings.trusted_proxies] == [
        "10.0.0.0/8",
        "192.0.2.10/32",
        "::1/128",
    ]
    assert load_settings().trusted_proxies == ()
