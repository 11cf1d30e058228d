"""The published OpenAPI document: authenticated by default, errors as problem+json.

DESIGN.md rule 4: a route outside the public list that lacks `CurrentUser` fails here.
"""

import re
from typing import Any

import httpx

from tests.factories import Account, assert_problem

PUBLIC_OPERATIONS = {
    ("post", "/api/v1/auth/register"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/refresh"),
    ("post", "/api/v1/auth/logout"),
    ("post", "/api/v1/auth/password-reset"),
    ("post", "/api/v1/auth/password-reset/confirm"),
    ("post", "/api/v1/auth/verify-email"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/.well-known/jwks.json"),
    ("get", "/.well-known/oauth-authorization-server"),
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


async def fetch_openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def oauth2_schemes(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    schemes: dict[str, dict[str, Any]] = document["components"]["securitySchemes"]
    return {name: scheme for name, scheme in schemes.items() if scheme["type"] == "oauth2"}


async def test_every_operation_outside_the_public_list_requires_oauth2(
    client: httpx.AsyncClient,
) -> None:
    document = await fetch_openapi(client)
    schemes = set(oauth2_schemes(document))

    unprotected = [
        f"{method.upper()} {path}"
        for (method, path), operation in operations(document).items()
        if (method, path) not in PUBLIC_OPERATIONS
        and not any(set(requirement) & schemes for requirement in operation.get("security", []))
    ]

    assert unprotected == []


async def test_the_public_list_names_real_operations(client: httpx.AsyncClient) -> None:
    # Guards the test above: a renamed public route must not silently widen the list.
    document = await fetch_openapi(client)

    assert set(operations(document)) >= PUBLIC_OPERATIONS
    assert len(operations(document)) > len(PUBLIC_OPERATIONS)


async def test_oauth2_password_flow_gets_tokens_from_the_login_route(
    client: httpx.AsyncClient,
) -> None:
    document = await fetch_openapi(client)

    token_urls = [
        scheme["flows"]["password"]["tokenUrl"] for scheme in oauth2_schemes(document).values()
    ]

    assert token_urls == ["/api/v1/auth/login"]


async def test_every_documented_error_response_is_problem_json(
    client: httpx.AsyncClient,
) -> None:
    document = await fetch_openapi(client)

    documented = {
        (method.upper(), path, status): sorted(response.get("content", {}))
        for (method, path), operation in operations(document).items()
        for status, response in operation["responses"].items()
        if status[0] in "45"
    }

    assert documented
    assert {
        key: types for key, types in documented.items() if types != ["application/problem+json"]
    } == {}


# --- what the schemas admit is what the service accepts (Schemathesis' positive data) ----


def admits(schema: dict[str, Any], text: str) -> bool:
    """Whether a string schema's `pattern` matches `text`, with ECMA-262's `$` (the end)."""
    return re.search(schema["pattern"].removesuffix("$") + r"\Z", text) is not None


def email_properties(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every `email` property of every schema, request bodies and responses alike."""
    found = {}
    for name, schema in document["components"]["schemas"].items():
        for field, spec in schema.get("properties", {}).items():
            if field == "email" or field.endswith("_email"):
                found[f"{name}.{field}"] = spec
    for (method, path), operation in operations(document).items():
        for media in operation.get("requestBody", {}).get("content", {}).values():
            for field, spec in media["schema"].get("properties", {}).items():
                if field == "email":
                    found[f"{method} {path}.{field}"] = spec
    return found


def string_branch(spec: dict[str, Any]) -> dict[str, Any]:
    branches = spec.get("anyOf", [spec])
    strings: list[dict[str, Any]] = [branch for branch in branches if branch["type"] == "string"]
    assert len(strings) == 1, spec
    return strings[0]


async def test_every_email_field_is_documented_as_an_email(client: httpx.AsyncClient) -> None:
    fields = email_properties(await fetch_openapi(client))

    assert {"PrivateUser.email", "Registration.email", "post /api/v1/auth/login.email"} <= set(
        fields
    )
    assert {
        name for name, spec in fields.items() if string_branch(spec).get("format") != "email"
    } == set()


async def test_the_cursor_pattern_admits_issued_cursors_and_no_other_shape(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    document = await fetch_openapi(client)
    (cursor_schema,) = [
        parameter["schema"]
        for parameter in operations(document)[("get", "/api/v1/users")]["parameters"]
        if parameter["name"] == "cursor"
    ]
    issued = (await client.get("/api/v1/users", headers=admin.headers, params={"limit": 1})).json()[
        "next_cursor"
    ]

    assert admits(cursor_schema, issued)
    for malformed in ["a.b", "e30.e30", "W.", f"{issued}A", f"{issued[1:]}", "W30." + "A" * 21]:
        assert not admits(cursor_schema, malformed), malformed


async def test_if_match_is_documented_as_entity_tags_never_null(
    client: httpx.AsyncClient, user: Account
) -> None:
    document = await fetch_openapi(client)
    etag = (await client.get("/api/v1/users/me", headers=user.headers)).headers["etag"]

    for path in ("/api/v1/users/me", "/api/v1/users/{user_id}"):
        (header,) = [
            parameter["schema"]
            for parameter in operations(document)[("patch", path)]["parameters"]
            if parameter["name"].lower() == "if-match"
        ]
        assert header["type"] == "string"
        assert "anyOf" not in header
        assert admits(header, etag)
        assert admits(header, "*")
        assert admits(header, f'W/"x", {etag}')
        assert not admits(header, "null")
        assert not admits(header, etag.strip('"'))


async def test_if_match_null_is_answered_412_as_documented(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await client.patch(
        "/api/v1/users/me", headers=user.headers | {"If-Match": "null"}, json={"bio": "x"}
    )

    assert_problem(response, 412, "precondition_failed")


async def test_name_and_search_patterns_admit_what_the_service_accepts(
    client: httpx.AsyncClient,
) -> None:
    document = await fetch_openapi(client)
    name = document["components"]["schemas"]["Registration"]["properties"]["first_name"]
    (search,) = [
        string_branch(parameter["schema"])
        for parameter in operations(document)[("get", "/api/v1/users")]["parameters"]
        if parameter["name"] == "q"
    ]

    for accepted in ["Ada", " Zoë 🚀 ", 'O\'Brien-"Quote"', "مريم"]:
        assert admits(name, accepted)
        assert admits(search, accepted)
    for refused in ["a\nb", "\t", "x\x7f", "\u202eevil", "\x00"]:
        assert not admits(name, refused)
        assert not admits(search, refused)
    assert not admits(name, "   ")  # trimmed to nothing


async def test_self_deactivation_by_id_without_a_body_is_documented_as_answered(
    client: httpx.AsyncClient, user: Account
) -> None:
    document = await fetch_openapi(client)
    operation = operations(document)[("post", "/api/v1/users/{user_id}/deactivate")]
    body = operation["requestBody"]["content"]["application/json"]["schema"]

    response = await client.post(f"/api/v1/users/{user.id}/deactivate", headers=user.headers)

    assert_problem(response, 422, "validation_error")
    assert "422" in operation["responses"]
    assert "for your own account current_password is required" in body["description"].lower()
