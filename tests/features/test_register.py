"""POST /api/v1/auth/register, through HTTP on SQLite and PostgreSQL (API.md, "register")."""

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.factories import DEFAULT_PASSWORD, assert_problem, registration, serving

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"
RFC3339_UTC_MICROS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
PRIVATE_USER_FIELDS = {
    "id",
    "email",
    "email_verified",
    "first_name",
    "last_name",
    "full_name",
    "bio",
    "avatar_url",
    "is_active",
    "is_superuser",
    "created_at",
    "updated_at",
}


def new_email() -> str:
    return f"reg-{uuid.uuid4().hex[:10]}@example.com"


async def assert_email_still_free(client: httpx.AsyncClient, email: str) -> None:
    """A rejected registration left nothing behind: the address can still be registered."""
    response = await client.post(REGISTER, json=registration(email=email))
    assert response.status_code == 201, response.text


def issue_types(problem: dict[str, Any]) -> list[str]:
    return [issue["type"] for issue in problem["errors"]]


async def test_register_returns_201_private_user_with_every_field(
    client: httpx.AsyncClient,
) -> None:
    body = registration(bio="Mathematician.", avatar_url="https://example.com/ada.png")

    response = await client.post(REGISTER, json=body)

    assert response.status_code == 201, response.text
    record = response.json()
    assert set(record) == PRIVATE_USER_FIELDS
    assert uuid.UUID(record["id"])
    assert record["email"] == body["email"]
    assert record["first_name"] == "Ada"
    assert record["last_name"] == "Lovelace"
    assert record["full_name"] == "Ada Lovelace"
    assert record["bio"] == "Mathematician."
    assert record["avatar_url"] == "https://example.com/ada.png"
    assert record["is_active"] is True
    assert record["is_superuser"] is False


async def test_register_without_optional_fields_returns_null_bio_and_avatar(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(REGISTER, json=registration())

    assert response.status_code == 201, response.text
    assert response.json()["bio"] is None
    assert response.json()["avatar_url"] is None


async def test_register_response_never_contains_the_password_or_its_hash(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(REGISTER, json=registration())

    assert response.status_code == 201, response.text
    assert DEFAULT_PASSWORD not in response.text
    assert "$argon2" not in response.text
    assert "password" not in response.text


async def test_register_sets_location_header_to_the_new_user(client: httpx.AsyncClient) -> None:
    response = await client.post(REGISTER, json=registration())

    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/api/v1/users/{response.json()['id']}"


async def test_register_timestamps_are_rfc3339_utc_with_microseconds(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(REGISTER, json=registration())

    assert response.status_code == 201, response.text
    assert RFC3339_UTC_MICROS.match(response.json()["created_at"])
    assert RFC3339_UTC_MICROS.match(response.json()["updated_at"])


async def test_register_sets_updated_at_equal_to_created_at(client: httpx.AsyncClient) -> None:
    response = await client.post(REGISTER, json=registration())

    assert response.status_code == 201, response.text
    assert response.json()["updated_at"] == response.json()["created_at"]


async def test_register_trims_and_lowercases_the_email(client: httpx.AsyncClient) -> None:
    local = uuid.uuid4().hex[:8]

    response = await client.post(REGISTER, json=registration(email=f"  Ada.{local}@Example.COM "))

    assert response.status_code == 201, response.text
    assert response.json()["email"] == f"ada.{local}@example.com"


async def test_duplicate_email_returns_409_email_taken(client: httpx.AsyncClient) -> None:
    email = new_email()
    assert (await client.post(REGISTER, json=registration(email=email))).status_code == 201

    response = await client.post(REGISTER, json=registration(email=email))

    assert_problem(response, 409, "email_taken")


async def test_duplicate_email_in_another_case_returns_409_email_taken(
    client: httpx.AsyncClient,
) -> None:
    email = new_email()
    assert (await client.post(REGISTER, json=registration(email=email))).status_code == 201

    response = await client.post(REGISTER, json=registration(email=f" {email.upper()} "))

    assert_problem(response, 409, "email_taken")


async def test_duplicate_email_leaves_the_first_account_unchanged(
    client: httpx.AsyncClient,
) -> None:
    email = new_email()
    assert (await client.post(REGISTER, json=registration(email=email))).status_code == 201
    await client.post(REGISTER, json=registration(email=email, password="another good passphrase"))

    intruder = await client.post(
        LOGIN, json={"email": email, "password": "another good passphrase"}
    )
    owner = await client.post(LOGIN, json={"email": email, "password": DEFAULT_PASSWORD})

    assert_problem(intruder, 401, "invalid_credentials")
    assert owner.status_code == 200, owner.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("is_superuser", True),
        ("is_active", False),
        pytest.param("id", str(uuid.uuid4()), id="id-random"),
        ("role", "admin"),
    ],
)
async def test_register_with_an_unknown_field_returns_422(
    client: httpx.AsyncClient, field: str, value: object
) -> None:
    body = registration(**{field: value})

    response = await client.post(REGISTER, json=body)

    problem = assert_problem(response, 422, "validation_error")
    assert ["body", field] in [issue["loc"] for issue in problem["errors"]]
    await assert_email_still_free(client, body["email"])


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"first_name": ""}, id="empty-first-name"),
        pytest.param({"first_name": "   "}, id="blank-first-name"),
        pytest.param({"first_name": "x" * 101}, id="first-name-101"),
        pytest.param({"last_name": ""}, id="empty-last-name"),
        pytest.param({"last_name": " \t "}, id="blank-last-name"),
        pytest.param({"last_name": "x" * 101}, id="last-name-101"),
        pytest.param({"bio": "x" * 1001}, id="bio-1001"),
        pytest.param({"avatar_url": "ftp://example.com/a.png"}, id="avatar-ftp"),
        pytest.param({"avatar_url": "javascript:alert(1)"}, id="avatar-javascript"),
        pytest.param({"avatar_url": "not a url"}, id="avatar-not-url"),
        pytest.param({"avatar_url": "https://example.com/" + "a" * 481}, id="avatar-501"),
        pytest.param({"password": "x7Kq#pZ"}, id="password-7"),
        pytest.param({"password": "x" * 257}, id="password-257"),
        pytest.param({"password": "\ufb03" * 86}, id="password-258-after-nfkc"),
        pytest.param({"first_name": 42}, id="first-name-not-string"),
    ],
)
async def test_register_with_an_out_of_bounds_field_returns_422(
    client: httpx.AsyncClient, overrides: dict[str, Any]
) -> None:
    body = registration(**overrides)

    response = await client.post(REGISTER, json=body)

    assert_problem(response, 422, "validation_error")
    await assert_email_still_free(client, body["email"])


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"first_name": "A", "last_name": "L"}, id="names-1"),
        pytest.param({"first_name": "x" * 100, "last_name": "y" * 100}, id="names-100"),
        pytest.param({"bio": "b" * 1000}, id="bio-1000"),
        pytest.param({"avatar_url": "http://example.com/" + "a" * 481}, id="avatar-500"),
        pytest.param({"password": "k3#Vq9!z"}, id="password-8"),
        pytest.param({"password": "p" * 256}, id="password-256"),
        pytest.param({"password": "\ufb03" * 3}, id="password-3-chars-9-after-nfkc"),
    ],
)
async def test_register_accepts_fields_at_their_bounds(
    client: httpx.AsyncClient, overrides: dict[str, Any]
) -> None:
    response = await client.post(REGISTER, json=registration(**overrides))

    assert response.status_code == 201, response.text


@pytest.mark.parametrize("password", ["password123", "qwertyuiop"])
async def test_register_with_a_common_password_returns_422_password_too_common(
    client: httpx.AsyncClient, password: str
) -> None:
    body = registration(password=password)

    response = await client.post(REGISTER, json=body)

    problem = assert_problem(response, 422, "validation_error")
    assert "password_too_common" in issue_types(problem)
    await assert_email_still_free(client, body["email"])


async def test_register_with_the_email_as_password_returns_422_password_too_common(
    client: httpx.AsyncClient,
) -> None:
    email = new_email()

    response = await client.post(REGISTER, json=registration(email=email, password=email))

    problem = assert_problem(response, 422, "validation_error")
    assert "password_too_common" in issue_types(problem)
    await assert_email_still_free(client, email)


async def test_register_respects_the_password_min_length_setting(
    database_url: str, tmp_path: Path
) -> None:
    async with serving(make_settings(database_url, tmp_path, password_min_length=12)) as (_, http):
        too_short = await http.post(REGISTER, json=registration(password="k3#Vq9!zW2m"))
        long_enough = await http.post(REGISTER, json=registration(password="k3#Vq9!zW2mE"))

    assert_problem(too_short, 422, "validation_error")
    assert long_enough.status_code == 201, long_enough.text


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'"first_name": "a\\u0000b", "last_name": "L"', id="nul-in-first-name"),
        pytest.param(b'"first_name": "A", "last_name": "\\ud800x"', id="surrogate-in-last-name"),
        pytest.param(b'"first_name": "A", "last_name": "L", "bio": "\\udfff"', id="surrogate-bio"),
    ],
)
async def test_register_with_nul_or_lone_surrogate_returns_422(
    client: httpx.AsyncClient, raw: bytes
) -> None:
    email = new_email()
    content = b'{"email": "%s", "password": "%s", %s}' % (
        email.encode(),
        DEFAULT_PASSWORD.encode(),
        raw,
    )

    response = await client.post(
        REGISTER, content=content, headers={"Content-Type": "application/json"}
    )

    assert_problem(response, 422, "validation_error")
    await assert_email_still_free(client, email)


@pytest.mark.parametrize(
    "email", ["not-an-email", "ada@", "@example.com", "ada lovelace@example.com", "a@b@c.com"]
)
async def test_register_with_an_invalid_email_returns_422(
    client: httpx.AsyncClient, email: str
) -> None:
    response = await client.post(REGISTER, json=registration(email=email))

    assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize("missing", ["email", "password", "first_name", "last_name"])
async def test_register_without_a_required_field_returns_422(
    client: httpx.AsyncClient, missing: str
) -> None:
    body = registration()
    del body[missing]

    response = await client.post(REGISTER, json=body)

    assert_problem(response, 422, "validation_error")


async def test_concurrent_registrations_of_one_email_yield_one_201_and_409s(
    client: httpx.AsyncClient,
) -> None:
    email = new_email()

    responses = await asyncio.gather(
        *(client.post(REGISTER, json=registration(email=email)) for _ in range(20))
    )

    assert sorted(response.status_code for response in responses) == [201] + [409] * 19
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "email_taken")


async def test_an_email_that_case_folding_lengthens_past_the_limit_returns_422(
    client: httpx.AsyncClient,
) -> None:
    # "ΐ" case-folds to three characters: valid as sent, 371 characters once folded.
    email = "ΐ" * 64 + "@" + "ΐ" * 29 + "." + "ΐ" * 29 + ".de"

    response = await client.post("/api/v1/auth/register", json=registration(email=email))

    problem = assert_problem(response, 422, "validation_error")
    assert issue_types(problem) == ["string_too_long"]


@pytest.mark.parametrize(
    "name", ["Bob\nBcc: evil@example.com", "Tab\there", "Al\u202eice", "Bell\u0007"]
)
async def test_a_name_is_one_line_of_visible_text(client: httpx.AsyncClient, name: str) -> None:
    response = await client.post(REGISTER, json=registration(first_name=name))

    body = assert_problem(response, 422, "validation_error")
    assert body["errors"][0]["type"] == "string_control_character"
