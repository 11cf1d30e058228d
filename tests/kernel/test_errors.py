"""Errors and the request middleware: every failure is problem+json, every response has an id.

API.md "Representations" (Error), "Limits and behaviour under bad input".
"""

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from kernel.middleware import MAX_BODY_BYTES
from tests.factories import Account, assert_problem, registration

REGISTER = "/api/v1/auth/register"
JSON_HEADERS = {"Content-Type": "application/json"}


def padded(body: dict[str, Any], size: int) -> bytes:
    """The JSON of `body`, padded with insignificant whitespace to exactly `size` bytes."""
    encoded = json.dumps(body).encode()
    return encoded[:-1] + b" " * (size - len(encoded)) + b"}"


async def chunked(payload: bytes, chunk_size: int = 16 * 1024) -> AsyncIterator[bytes]:
    """The payload as a stream: httpx then sends no Content-Length."""
    for start in range(0, len(payload), chunk_size):
        yield payload[start : start + chunk_size]


async def post_oversized(client: httpx.AsyncClient, body: bytes, framing: str) -> httpx.Response:
    content = body if framing == "content-length" else chunked(body)
    return await client.post(REGISTER, content=content, headers=JSON_HEADERS)


# --- routing ----------------------------------------------------------------------------


async def test_unknown_route_is_404_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/no-such-route")

    assert_problem(response, 404, "not_found")


async def test_wrong_method_is_405_method_not_allowed(client: httpx.AsyncClient) -> None:
    response = await client.delete("/api/v1/users/me")

    assert_problem(response, 405, "method_not_allowed")


async def test_405_lists_every_method_the_path_takes(client: httpx.AsyncClient) -> None:
    # RFC 9110: a 405 carries Allow; GET and PATCH /users/me come from two slices.
    response = await client.delete("/api/v1/users/me")

    allowed = {method.strip() for method in response.headers["allow"].split(",")}
    assert {"GET", "PATCH"} <= allowed
    assert "DELETE" not in allowed


async def test_405_on_a_literal_path_lists_its_own_methods_only(
    client: httpx.AsyncClient,
) -> None:
    # /users/me/sessions/{session_id} (DELETE) would match this path too, but the path
    # is its own item in /openapi.json, with POST alone.
    response = await client.put("/api/v1/users/me/sessions/revoke-others")

    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


async def test_a_templated_route_does_not_answer_for_a_literal_path(
    client: httpx.AsyncClient, user: Account
) -> None:
    # DELETE /users/me/sessions/{session_id} would match; the literal path takes only POST.
    response = await client.delete("/api/v1/users/me/sessions/revoke-others", headers=user.headers)

    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


# --- X-Request-ID -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/health"), ("GET", "/api/v1/no-such-route"), ("DELETE", "/api/v1/users/me")],
)
async def test_a_sent_request_id_is_echoed(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path, headers={"X-Request-ID": "client-id-42"})

    assert response.headers["x-request-id"] == "client-id-42"


@pytest.mark.parametrize("sent", ["abc def", "quote\"'<script>", "x" * 200, "a"])
async def test_any_request_id_of_1_to_200_printable_ascii_characters_is_echoed(
    client: httpx.AsyncClient, sent: str
) -> None:
    response = await client.get("/health", headers={"X-Request-ID": sent})

    assert response.headers["x-request-id"] == sent


async def test_a_request_id_is_generated_when_none_is_sent(client: httpx.AsyncClient) -> None:
    first = await client.get("/health")
    second = await client.get("/health")

    assert first.headers["x-request-id"]
    assert second.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize(
    "sent",
    [b"", b"x" * 201, "café".encode(), b"tab\there", b"bell\x07"],
    ids=["empty", "too_long", "non_ascii", "tab", "control"],
)
async def test_an_unusable_request_id_is_replaced_by_a_generated_one(
    client: httpx.AsyncClient, sent: bytes
) -> None:
    response = await client.get("/health", headers={b"X-Request-ID": sent})

    assert response.headers["x-request-id"]
    assert response.headers["x-request-id"].encode() != sent


async def test_the_request_id_appears_in_the_access_log(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="userapi.access")

    await client.get("/health", headers={"X-Request-ID": "traced-request-7"})

    assert any("request_id=traced-request-7" in record.getMessage() for record in caplog.records)


async def test_a_request_id_with_spaces_is_logged_quoted_as_one_field(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="userapi.access")

    await client.get("/health", headers={"X-Request-ID": 'abc def status=200 "x'})

    assert any(
        record.getMessage().endswith('request_id="abc def status=200 \\"x"')
        for record in caplog.records
    )


async def test_a_newline_in_the_url_cannot_forge_an_access_log_line(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="userapi.access")

    await client.get(
        "/api/v1/nothing%0A2026-01-01%20INFO%20GET%20/admin%20200",
        headers={"X-Request-ID": "log-injection-1"},
    )

    lines = [
        record.getMessage()
        for record in caplog.records
        if record.name == "userapi.access" and "log-injection-1" in record.getMessage()
    ]
    assert len(lines) == 1
    assert "\n" not in lines[0]
    assert "\r" not in lines[0]
    assert "/api/v1/nothing%0A2026" in lines[0]  # the path as sent, still encoded


async def test_an_oversized_body_still_gets_a_request_id(client: httpx.AsyncClient) -> None:
    body = padded(registration(), MAX_BODY_BYTES + 1)

    response = await client.post(
        REGISTER, content=body, headers=JSON_HEADERS | {"X-Request-ID": "big-body-1"}
    )

    assert response.headers["x-request-id"] == "big-body-1"


# --- body size --------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_over_64_kib_is_413_payload_too_large(
    client: httpx.AsyncClient, framing: str
) -> None:
    response = await post_oversized(client, padded(registration(), MAX_BODY_BYTES + 1), framing)

    assert_problem(response, 413, "payload_too_large")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_over_64_kib_creates_nothing(client: httpx.AsyncClient, framing: str) -> None:
    body = registration()
    await post_oversized(client, padded(body, MAX_BODY_BYTES + 1), framing)

    again = await client.post(REGISTER, json=body)

    assert again.status_code == 201, again.text


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_of_exactly_64_kib_is_accepted(
    client: httpx.AsyncClient, framing: str
) -> None:
    response = await post_oversized(client, padded(registration(), MAX_BODY_BYTES), framing)

    assert response.status_code == 201, response.text


# --- malformed JSON ---------------------------------------------------------------------


async def test_duplicate_json_keys_are_422(client: httpx.AsyncClient) -> None:
    body = json.dumps(registration())[:-1] + ', "email": "second@example.com"}'

    response = await client.post(REGISTER, content=body, headers=JSON_HEADERS)

    assert_problem(response, 422, "validation_error")


async def test_json_nested_as_deep_as_the_size_cap_allows_is_422(
    client: httpx.AsyncClient,
) -> None:
    # 100,000 levels cannot fit under the 64 KiB cap (that body is a 413); 32,000 do.
    depth = MAX_BODY_BYTES // 2 - 768
    body = '{"email": ' + "[" * depth + "]" * depth + "}"
    assert len(body) <= MAX_BODY_BYTES

    response = await client.post(REGISTER, content=body, headers=JSON_HEADERS)

    assert_problem(response, 422, "validation_error")


async def test_json_nested_100000_levels_deep_is_refused_without_500(
    client: httpx.AsyncClient,
) -> None:
    body = "[" * 100_000 + "]" * 100_000

    response = await client.post(REGISTER, content=body, headers=JSON_HEADERS)

    assert_problem(response, 413, "payload_too_large")


@pytest.mark.parametrize("body", ["[]", '["a", "b"]', '"a string"', "42", "null"])
async def test_a_json_body_that_is_not_an_object_is_422(
    client: httpx.AsyncClient, body: str
) -> None:
    response = await client.post(REGISTER, content=body, headers=JSON_HEADERS)

    assert_problem(response, 422, "validation_error")


async def test_a_body_that_is_not_utf8_is_422(client: httpx.AsyncClient) -> None:
    body = json.dumps(registration(first_name="Ada")).encode().replace(b"Ada", b"\xff\xfeAda")

    response = await client.post(REGISTER, content=body, headers=JSON_HEADERS)

    assert_problem(response, 422, "validation_error")


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(REGISTER, content='{"email": ', headers=JSON_HEADERS)

    assert_problem(response, 422, "validation_error")


# --- content type -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "application/x-www-form-urlencoded"]
)
async def test_a_body_in_a_type_the_route_does_not_take_is_415(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await client.post(
        REGISTER, content=json.dumps(registration()), headers={"Content-Type": content_type}
    )

    assert_problem(response, 415, "unsupported_media_type")


# --- validation errors ------------------------------------------------------------------


async def test_validation_errors_list_loc_msg_and_type(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER, json=registration(email="not-an-email", first_name="", extra="field")
    )

    problem = assert_problem(response, 422, "validation_error")
    assert len(problem["errors"]) >= 3
    for issue in problem["errors"]:
        assert set(issue) == {"loc", "msg", "type"}
        assert issue["loc"][0] == "body"
        assert isinstance(issue["msg"], str)
        assert issue["msg"]
        assert isinstance(issue["type"], str)
        assert issue["type"]
    fields = {issue["loc"][-1] for issue in problem["errors"]}
    assert {"email", "first_name", "extra"} <= fields


SECRET = "Marker-Vq7x-Unique-Secret"
SHORT_SECRET = "Qx7#Vw2"

PASSWORD_CASES: dict[str, tuple[str, str]] = {
    "another_field_invalid": (
        json.dumps(registration(email="not-an-email", password=SECRET)),
        SECRET,
    ),
    "password_too_long": (json.dumps(registration(password=SECRET + "x" * 300)), SECRET),
    "password_too_short": (json.dumps(registration(password=SHORT_SECRET)), SHORT_SECRET),
    "password_wrong_type": (json.dumps(registration(password=[SECRET])), SECRET),
    "password_equals_email": (
        json.dumps(registration(email=f"{SECRET}@example.com", password=f"{SECRET}@example.com")),
        SECRET,
    ),
    "password_in_unknown_field": (json.dumps(registration(current_password=SECRET)), SECRET),
    "malformed_json": ('{"password": "' + SECRET + '", "email": ', SECRET),
}


@pytest.mark.parametrize(
    ("body", "secret"), PASSWORD_CASES.values(), ids=list(PASSWORD_CASES.keys())
)
async def test_a_validation_error_never_echoes_the_password(
    client: httpx.AsyncClient, body: str, secret: str
) -> None:
    response = await client.post(REGISTER, content=body, headers=JSON_HEADERS)

    assert_problem(response, 422, "validation_error")
    assert secret.casefold() not in response.text.casefold()
