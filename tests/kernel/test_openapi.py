"""The published OpenAPI document: authenticated by default, errors as problem+json.

DESIGN.md rule 4: a route outside the public list that lacks `CurrentUser` fails here.
"""

from typing import Any

import httpx

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
