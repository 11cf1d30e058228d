"""POST /api/v1/auth/verify-email and POST /api/v1/users/me/verification-email, against a
real SMTP server (API.md v1.1, "Email: recovery, verification, notices")."""

import uuid
from pathlib import Path

import httpx
import pytest

from kernel.settings import Settings
from tests.conftest import make_settings
from tests.factories import Account, assert_problem, login, my_events, register, serving, types_of
from tests.mail import Mailbox, code_in, html_of, text_of, token_in

VERIFY = "/api/v1/auth/verify-email"
RESEND = "/api/v1/users/me/verification-email"
VERIFY_LINK = "myapp://verify?token={token}"
VERIFY_SUBJECT = "Confirm your email address"


@pytest.fixture
def settings(database_url: str, tmp_path: Path, mailbox: Mailbox) -> Settings:
    return make_settings(
        database_url, tmp_path, email_verification_url=VERIFY_LINK, **mailbox.settings
    )


async def me(client: httpx.AsyncClient, account: Account) -> dict[str, object]:
    response = await client.get("/api/v1/users/me", headers=account.headers)
    assert response.status_code == 200, response.text
    record: dict[str, object] = response.json()
    return record


async def test_register_sends_a_verification_mail_whose_token_verifies(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    [mail] = await mailbox.wait_for(user.email)
    assert mail["Subject"] == VERIFY_SUBJECT
    assert VERIFY_LINK.format(token=token_in(mail)) in text_of(mail)
    assert (await me(client, user))["email_verified"] is False

    response = await client.post(VERIFY, json={"token": token_in(mail)})

    assert response.status_code == 204, response.text
    assert (await me(client, user))["email_verified"] is True


async def test_the_email_and_code_verify(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    [mail] = await mailbox.wait_for(user.email)

    response = await client.post(VERIFY, json={"email": user.email, "code": code_in(mail)})

    assert response.status_code == 204, response.text
    assert (await me(client, user))["email_verified"] is True


async def test_verifying_changes_the_etag(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    [mail] = await mailbox.wait_for(user.email)
    before = (await client.get("/api/v1/users/me", headers=user.headers)).headers["ETag"]

    await client.post(VERIFY, json={"token": token_in(mail)})

    after = (await client.get("/api/v1/users/me", headers=user.headers)).headers["ETag"]
    assert after != before


async def test_a_mail_carries_nothing_the_user_typed(
    client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    # Anyone can register any address: a name must not carry a stranger's words to it.
    account = await register(client, first_name="Reset now at https://evil.example")

    [mail] = await mailbox.wait_for(account.email)

    assert "evil.example" not in text_of(mail)
    assert "evil.example" not in html_of(mail)


async def test_five_wrong_codes_kill_the_verification_and_a_new_mail_works(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    first = await mailbox.latest(user.email, 1)
    wrong = f"{(int(code_in(first)) + 1) % 10**6:06d}"
    for _ in range(5):
        await client.post(VERIFY, json={"email": user.email, "code": wrong})

    right = await client.post(VERIFY, json={"email": user.email, "code": code_in(first)})
    link = await client.post(VERIFY, json={"token": token_in(first)})
    assert (await client.post(RESEND, headers=user.headers)).status_code == 202
    second = await mailbox.latest(user.email, 2)
    fresh = await client.post(VERIFY, json={"email": user.email, "code": code_in(second)})

    assert_problem(right, 400, "invalid_verification_token")
    assert_problem(link, 400, "invalid_verification_token")
    assert fresh.status_code == 204, fresh.text


async def test_email_changes_are_limited_like_asking_for_a_mail(
    database_url: str, tmp_path: Path, mailbox: Mailbox
) -> None:
    # A change mails a new code: back and forth it would be a fresh budget of tries.
    settings = make_settings(database_url, tmp_path, mail_send_limit=1, **mailbox.settings)
    async with serving(settings) as (_, client):
        account = await login(client, await register(client))
        original, target = account.email, f"target-{uuid.uuid4().hex[:8]}@example.com"
        answers = []
        for address in (target, original, target):
            answers.append(
                await client.patch(
                    "/api/v1/users/me",
                    json={"email": address, "current_password": account.password},
                    headers=account.headers,
                )
            )
        now = await client.get("/api/v1/users/me", headers=account.headers)

    assert [answer.status_code for answer in answers[:2]] == [200, 200]
    assert_problem(answers[2], 429, "too_many_requests")
    assert int(answers[2].headers["Retry-After"]) > 0
    assert now.json()["email"] == original


async def test_a_token_works_once_and_a_bad_one_never(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    [mail] = await mailbox.wait_for(user.email)
    assert (await client.post(VERIFY, json={"token": token_in(mail)})).status_code == 204

    again = await client.post(VERIFY, json={"token": token_in(mail)})
    unknown = await client.post(VERIFY, json={"token": "y" * 43})
    wrong_code = await client.post(VERIFY, json={"email": user.email, "code": "000000"})

    for response in (again, unknown, wrong_code):
        assert_problem(response, 400, "invalid_verification_token")


async def test_a_new_verification_mail_kills_the_earlier_one(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    [first] = await mailbox.wait_for(user.email)

    response = await client.post(RESEND, headers=user.headers)

    assert response.status_code == 202, response.text
    assert response.content == b""
    second = await mailbox.latest(user.email, 2)
    assert token_in(second) != token_in(first)
    assert_problem(
        await client.post(VERIFY, json={"token": token_in(first)}),
        400,
        "invalid_verification_token",
    )
    assert (await client.post(VERIFY, json={"token": token_in(second)})).status_code == 204


async def test_asking_again_once_verified_is_409(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    [mail] = await mailbox.wait_for(user.email)
    await client.post(VERIFY, json={"token": token_in(mail)})

    response = await client.post(RESEND, headers=user.headers)

    assert_problem(response, 409, "already_verified")


async def test_asking_needs_a_token(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post(RESEND), 401, "not_authenticated")


async def test_past_the_per_address_limit_asking_is_429_with_retry_after(
    client: httpx.AsyncClient, user: Account
) -> None:
    answers = [await client.post(RESEND, headers=user.headers) for _ in range(4)]

    assert [answer.status_code for answer in answers[:3]] == [202, 202, 202]
    assert_problem(answers[3], 429, "too_many_requests")
    assert 0 < int(answers[3].headers["Retry-After"]) <= 900


async def test_an_email_change_unverifies_mails_the_new_address_and_tells_the_old(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    [first] = await mailbox.wait_for(user.email)
    await client.post(VERIFY, json={"token": token_in(first)})
    new_email = f"moved-{uuid.uuid4().hex[:8]}@example.com"

    changed = await client.patch(
        "/api/v1/users/me",
        json={"email": new_email, "current_password": user.password},
        headers=user.headers,
    )

    assert changed.status_code == 200, changed.text
    assert changed.json()["email_verified"] is False
    notice = await mailbox.latest(user.email, 2)
    assert notice["Subject"] == "The email address of your account was changed"
    assert new_email not in text_of(notice)  # masked: m***@example.com
    assert f"{new_email[0]}***@example.com" in text_of(notice)
    [verification] = await mailbox.wait_for(new_email)
    assert verification["Subject"] == VERIFY_SUBJECT
    assert (await client.post(VERIFY, json={"token": token_in(verification)})).status_code == 204
    assert (await me(client, user))["email_verified"] is True


async def test_a_token_mailed_to_the_old_address_is_refused_after_an_email_change(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    [mail] = await mailbox.wait_for(user.email)
    await client.patch(
        "/api/v1/users/me",
        json={
            "email": f"moved-{uuid.uuid4().hex[:8]}@example.com",
            "current_password": user.password,
        },
        headers=user.headers,
    )

    response = await client.post(VERIFY, json={"token": token_in(mail)})

    assert_problem(response, 400, "invalid_verification_token")


async def test_a_password_change_sends_the_notice(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    await mailbox.wait_for(user.email)

    changed = await client.patch(
        "/api/v1/users/me",
        json={"password": "another fine passphrase", "current_password": user.password},
        headers=user.headers,
    )

    assert changed.status_code == 200, changed.text
    notice = await mailbox.latest(user.email, 2)
    assert notice["Subject"] == "Your password was changed"


async def test_with_verified_email_required_only_verified_accounts_log_in(
    database_url: str, tmp_path: Path, mailbox: Mailbox
) -> None:
    settings = make_settings(
        database_url, tmp_path, require_verified_email=True, **mailbox.settings
    )
    async with serving(settings) as (_, client):
        account = await register(client)
        credentials = {"email": account.email, "password": account.password}
        unverified = await client.post("/api/v1/auth/login", json=credentials)
        wrong = await client.post(
            "/api/v1/auth/login", json=credentials | {"password": "not the password at all"}
        )
        [mail] = await mailbox.wait_for(account.email)
        await client.post(VERIFY, json={"token": token_in(mail)})
        verified = await client.post("/api/v1/auth/login", json=credentials)

    assert_problem(unverified, 403, "email_not_verified")
    assert_problem(wrong, 401, "invalid_credentials")  # the state is told only to the owner
    assert verified.status_code == 200, verified.text


async def test_the_send_limit_is_shared_by_every_process(settings: Settings, user: Account) -> None:
    # Two more apps on the same database: three processes, one count per address.
    async with serving(settings) as (_, first), serving(settings) as (_, second):
        answers = [
            await process.post(RESEND, headers=user.headers)
            for process in (first, second, first, second)
        ]

    assert [answer.status_code for answer in answers[:3]] == [202, 202, 202]
    assert_problem(answers[3], 429, "too_many_requests")


async def test_verifying_records_email_verified_once(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    [mail] = await mailbox.wait_for(user.email)
    assert (await client.post(VERIFY, json={"token": token_in(mail)})).status_code == 204

    events = await my_events(client, user)

    assert types_of(events)[0] == "email_verified"
    assert types_of(events).count("email_verified") == 1
    assert events[0]["actor_id"] == user.id
