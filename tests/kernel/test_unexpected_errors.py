"""An unexpected exception is a bare 500 problem: nothing leaks, the log has the request id.

A throwaway slice (in a temporary folder of slices) raises an
error whose message holds a pretend secret and SQL; the client must see neither, and
the server's log line for that request must carry its X-Request-ID.
"""

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kernel.settings import Settings
from tests.factories import assert_problem, make_user, serving
from tests.kernel.helpers import slice_folder, unique_name

SECRET = "SECRET_KEY=hunter2-very-secret"
FAILING_SLICE = '''
"""Probe for tests/kernel/test_unexpected_errors.py: always fails."""

from fastapi import APIRouter

from kernel.deps import CurrentUser

router = APIRouter()


@router.get("/{path}")
async def explode(_: CurrentUser) -> None:
    """Fail like a bug would."""
    raise RuntimeError("SELECT password_hash FROM users; {secret}")


@router.get("/{path}/file")
async def read_missing_file(_: CurrentUser) -> None:
    """Fail like a bug reading a file would: an OSError that is no database outage."""
    open("/nonexistent/userapi/template.txt").read()
'''


@pytest.fixture
async def failing_client(
    settings: Settings, more_features: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    name = unique_name("kernel_failing_probe")
    path = name.replace("_", "-")
    with slice_folder(
        more_features, name, FAILING_SLICE.replace("{path}", path).replace("{secret}", SECRET)
    ):
        async with serving(settings) as (_, client):
            client.headers.update((await make_user(client)).headers)
            yield client, f"/api/v1/{path}"


async def test_an_unexpected_error_is_a_500_problem_that_reveals_nothing(
    failing_client: tuple[httpx.AsyncClient, str],
) -> None:
    client, path = failing_client

    response = await client.get(path)

    assert_problem(response, 500, "internal_error")
    for leak in ("hunter2", "SECRET_KEY", "SELECT", "password_hash", "Traceback", "RuntimeError"):
        assert leak not in response.text


async def test_an_unexpected_error_is_logged_with_the_request_id(
    failing_client: tuple[httpx.AsyncClient, str], caplog: pytest.LogCaptureFixture
) -> None:
    client, path = failing_client
    caplog.set_level(logging.ERROR, logger="userapi")

    response = await client.get(path, headers={"X-Request-ID": "bug-report-1234"})

    assert response.headers["x-request-id"] == "bug-report-1234"
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert any("request_id=bug-report-1234" in record.getMessage() for record in errors)


async def test_an_os_error_that_is_no_database_outage_is_a_500_with_its_traceback(
    failing_client: tuple[httpx.AsyncClient, str], caplog: pytest.LogCaptureFixture
) -> None:
    client, path = failing_client
    caplog.set_level(logging.WARNING, logger="userapi")

    response = await client.get(f"{path}/file", headers={"X-Request-ID": "file-bug-1"})

    assert_problem(response, 500, "internal_error")
    assert "database" not in response.text
    logged = [record for record in caplog.records if "request_id=file-bug-1" in record.getMessage()]
    errors = [record for record in logged if record.levelno == logging.ERROR]
    assert errors, [record.getMessage() for record in caplog.records]
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is FileNotFoundError
    assert not any("database unavailable" in record.getMessage() for record in caplog.records)
