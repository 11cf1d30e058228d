"""GET /api/v1/users/me and GET /api/v1/users/{user_id}, through HTTP on both databases."""

import re
import uuid

import httpx

from tests.factories import Account, assert_problem, make_user

PUBLIC_KEYS = {"id", "first_name", "last_name", "full_name", "bio", "avatar_url"}
PRIVATE_KEYS = PUBLIC_KEYS | {
    "email",
    "email_verified",
    "is_active",
    "is_superuser",
    "created_at",
    "updated_at",
}
RFC3339_UTC_MICROS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


async def deactivate(client: httpx.AsyncClient, admin: Account, target: Account) -> None:
    response = await client.post(f"/api/v1/users/{target.id}/deactivate", headers=admin.headers)
    assert response.status_code == 200, response.text


async def test_me_returns_the_private_user_with_an_etag(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await client.get("/api/v1/users/me", headers=user.headers)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == PRIVATE_KEYS
    assert body == user.record
    assert body["id"] == user.id
    assert body["email"] == user.email
    assert body["full_name"] == "Ada Lovelace"
    assert body["is_active"] is True
    assert body["is_superuser"] is False
    assert response.headers["etag"]


async def test_timestamps_are_rfc3339_utc_with_microseconds(
    client: httpx.AsyncClient, user: Account
) -> None:
    body = (await client.get("/api/v1/users/me", headers=user.headers)).json()

    assert RFC3339_UTC_MICROS.match(body["created_at"])
    assert RFC3339_UTC_MICROS.match(body["updated_at"])
    assert body["updated_at"] == body["created_at"]


async def test_own_id_returns_the_private_user_with_the_same_etag_as_me(
    client: httpx.AsyncClient, user: Account
) -> None:
    me = await client.get("/api/v1/users/me", headers=user.headers)

    response = await client.get(f"/api/v1/users/{user.id}", headers=user.headers)

    assert response.status_code == 200
    assert response.json() == me.json()
    assert response.headers["etag"] == me.headers["etag"]


async def test_another_user_sees_only_the_public_fields_and_no_etag(
    client: httpx.AsyncClient, user: Account, other_user: Account
) -> None:
    response = await client.get(f"/api/v1/users/{other_user.id}", headers=user.headers)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == PUBLIC_KEYS
    assert body == {key: other_user.record[key] for key in PUBLIC_KEYS}
    assert "etag" not in response.headers


async def test_public_user_shows_bio_and_avatar_url(
    client: httpx.AsyncClient, user: Account
) -> None:
    target = await make_user(
        client, first_name="Grace", last_name="Hopper", bio="COBOL", avatar_url="https://x.test/a"
    )

    response = await client.get(f"/api/v1/users/{target.id}", headers=user.headers)

    assert response.json() == {
        "id": target.id,
        "first_name": "Grace",
        "last_name": "Hopper",
        "full_name": "Grace Hopper",
        "bio": "COBOL",
        "avatar_url": "https://x.test/a",
    }


async def test_admin_sees_another_user_as_private_user_with_etag(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    own = await client.get("/api/v1/users/me", headers=user.headers)

    response = await client.get(f"/api/v1/users/{user.id}", headers=admin.headers)

    assert response.status_code == 200
    assert set(response.json()) == PRIVATE_KEYS
    assert response.json() == own.json()
    assert response.headers["etag"] == own.headers["etag"]


async def test_deactivated_user_is_404_for_another_user(
    client: httpx.AsyncClient, admin: Account, user: Account, other_user: Account
) -> None:
    await deactivate(client, admin, other_user)

    response = await client.get(f"/api/v1/users/{other_user.id}", headers=user.headers)

    assert_problem(response, 404, "user_not_found")


async def test_deactivated_user_is_visible_to_an_admin(
    client: httpx.AsyncClient, admin: Account, user: Account
) -> None:
    await deactivate(client, admin, user)

    response = await client.get(f"/api/v1/users/{user.id}", headers=admin.headers)

    assert response.status_code == 200
    assert set(response.json()) == PRIVATE_KEYS
    assert response.json()["is_active"] is False
    assert response.headers["etag"]


async def test_unknown_id_returns_404_user_not_found(
    client: httpx.AsyncClient, user: Account
) -> None:
    response = await client.get(f"/api/v1/users/{uuid.uuid4()}", headers=user.headers)

    assert_problem(response, 404, "user_not_found")


async def test_unknown_id_returns_404_user_not_found_for_an_admin(
    client: httpx.AsyncClient, admin: Account
) -> None:
    response = await client.get(f"/api/v1/users/{uuid.uuid4()}", headers=admin.headers)

    assert_problem(response, 404, "user_not_found")


async def test_etag_changes_after_an_update(client: httpx.AsyncClient, user: Account) -> None:
    before = await client.get("/api/v1/users/me", headers=user.headers)
    patch = await client.patch("/api/v1/users/me", headers=user.headers, json={"bio": "new"})
    assert patch.status_code == 200

    after = await client.get("/api/v1/users/me", headers=user.headers)

    assert after.headers["etag"] != before.headers["etag"]
    assert after.headers["etag"] == patch.headers["etag"]


async def test_etag_is_stable_without_changes(client: httpx.AsyncClient, user: Account) -> None:
    first = await client.get("/api/v1/users/me", headers=user.headers)

    second = await client.get("/api/v1/users/me", headers=user.headers)

    assert second.headers["etag"] == first.headers["etag"]
