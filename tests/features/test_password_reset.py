"""POST /api/v1/auth/password-reset and /confirm, against a real SMTP server (API.md v1.1,
"Email: recovery, verification, notices"): the token and the code come from the mail."""

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from kernel.settings import Settings
from tests.conftest import make_settings
from tests.factories import (
    Account,
    all_events,
    assert_problem,
    login,
    make_user,
    my_events,
    refresh,
    types_of,
)
from tests.mail import Mailbox, code_in, html_of, text_of, token_in
from tests.waiting import poll

REQUEST = "/api/v1/auth/password-reset"
CONFIRM = "/api/v1/auth/password-reset/confirm"
RESET_LINK = "https://app.example.com/reset-password?token={token}"
NEW_PASSWORD = "a brand new passphrase for this test"
RESET_SUBJECT = "Reset your password"


@pytest.fixture
def settings(database_url: str, tmp_path: Path, mailbox: Mailbox) -> Settings:
    return make_settings(database_url, tmp_path, password_reset_url=RESET_LINK, **mailbox.settings)


def resets(mailbox: Mailbox, address: str) -> list[str]:
    return [str(m["Subject"]) for m in mailbox.to(address) if m["Subject"] == RESET_SUBJECT]


async def reset_mail(client: httpx.AsyncClient, mailbox: Mailbox, account: Account, nth: int = 1):  # type: ignore[no-untyped-def]
    """Ask for a reset and wait for the nth reset mail to the account's address."""
    response = await client.post(REQUEST, json={"email": account.email})
    assert response.status_code == 202, response.text
    return await mailbox.latest(account.email, await _index_of_reset(mailbox, account, nth))


async def _index_of_reset(mailbox: Mailbox, account: Account, nth: int) -> int:
    # Registration sends a verification first: find how many mails precede the nth reset.
    def count() -> int:
        seen = 0
        for index, message in enumerate(mailbox.to(account.email), start=1):
            seen += message["Subject"] == RESET_SUBJECT
            if seen == nth:
                return index
        return 0

    results = await poll(
        lambda: asyncio.sleep(0, count()), until=bool, within=20, what=f"reset mail #{nth}"
    )
    return results[-1]


async def log_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/api/v1/auth/login", json={"email": email, "password": password})


# --- the flows ---------------------------------------------------------------------------


async def test_the_link_token_sets_a_new_password(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    mail = await reset_mail(client, mailbox, user)
    assert RESET_LINK.format(token=token_in(mail)) in text_of(mail)
    assert RESET_LINK.format(token=token_in(mail)) in html_of(mail)

    response = await client.post(
        CONFIRM, json={"token": token_in(mail), "new_password": NEW_PASSWORD}
    )

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert (await log_in(client, user.email, NEW_PASSWORD)).status_code == 200
    assert_problem(await log_in(client, user.email, user.password), 401, "invalid_credentials")


async def test_the_email_and_code_set_a_new_password(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    mail = await reset_mail(client, mailbox, user)

    response = await client.post(
        CONFIRM, json={"email": user.email, "code": code_in(mail), "new_password": NEW_PASSWORD}
    )

    assert response.status_code == 204, response.text
    assert (await log_in(client, user.email, NEW_PASSWORD)).status_code == 200


async def test_a_completed_reset_ends_every_session(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    other_device = await login(
        client, Account(id=user.id, email=user.email, password=user.password)
    )
    mail = await reset_mail(client, mailbox, user)

    await client.post(CONFIRM, json={"token": token_in(mail), "new_password": NEW_PASSWORD})

    for device in (user, other_device):
        me = await client.get("/api/v1/users/me", headers=device.headers)
        assert_problem(me, 401, "invalid_token")
        assert_problem(await refresh(client, device.refresh_token), 401, "invalid_token")


async def test_a_completed_reset_sends_the_password_changed_notice(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    mail = await reset_mail(client, mailbox, user)
    before = len(mailbox.to(user.email))

    await client.post(CONFIRM, json={"token": token_in(mail), "new_password": NEW_PASSWORD})

    notice = await mailbox.latest(user.email, before + 1)
    assert notice["Subject"] == "Your password was changed"
    assert CONFIRM not in text_of(notice)


async def test_a_completed_reset_verifies_the_address_it_reached(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    mail = await reset_mail(client, mailbox, user)

    await client.post(CONFIRM, json={"token": token_in(mail), "new_password": NEW_PASSWORD})

    fresh = await login(client, Account(id=user.id, email=user.email, password=NEW_PASSWORD))
    me = await client.get("/api/v1/users/me", headers=fresh.headers)
    assert me.json()["email_verified"] is True


async def test_a_completed_reset_gives_a_locked_out_owner_a_fresh_budget(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    for _ in range(6):
        await log_in(client, user.email, "somebody guessing wrong")
    assert_problem(await log_in(client, user.email, user.password), 429, "too_many_attempts")
    mail = await reset_mail(client, mailbox, user)

    await client.post(CONFIRM, json={"token": token_in(mail), "new_password": NEW_PASSWORD})

    assert (await log_in(client, user.email, NEW_PASSWORD)).status_code == 200


# --- what the request says, and sends, about addresses --------------------------------------


def _comparable(response: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    varying = {"x-request-id", "date"}
    headers = {name: value for name, value in response.headers.items() if name not in varying}
    return response.status_code, response.content, headers


async def test_unknown_and_deactivated_addresses_get_the_same_answer_and_no_mail(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account, other_user: Account
) -> None:
    deactivated = other_user
    response = await client.post(
        "/api/v1/users/me/deactivate",
        json={"current_password": deactivated.password},
        headers=deactivated.headers,
    )
    assert response.status_code == 200
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.com"

    answers = [
        await client.post(REQUEST, json={"email": address})
        for address in (unknown, deactivated.email, user.email)
    ]

    assert answers[0].status_code == 202
    assert _comparable(answers[0]) == _comparable(answers[1]) == _comparable(answers[2])
    # Mails leave in the order they were queued: once the known address has its reset,
    # any reset for the other two would have been sent before it.
    await reset_mail_arrived(mailbox, user)
    assert mailbox.to(unknown) == []
    assert resets(mailbox, deactivated.email) == []


async def reset_mail_arrived(mailbox: Mailbox, account: Account) -> None:
    await _index_of_reset(mailbox, account, 1)


async def test_past_the_per_address_limit_requests_still_answer_202_and_send_nothing(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account, other_user: Account
) -> None:
    answers = [(await client.post(REQUEST, json={"email": user.email})) for _ in range(4)]
    await client.post(REQUEST, json={"email": other_user.email})

    assert [answer.status_code for answer in answers] == [202] * 4
    assert _comparable(answers[3]) == _comparable(answers[0])
    await reset_mail_arrived(mailbox, other_user)  # queued after all four
    assert len(resets(mailbox, user.email)) == 3


async def test_past_the_per_ip_limit_requests_get_429_with_retry_after(
    database_url: str, tmp_path: Path, mailbox: Mailbox
) -> None:
    from tests.factories import serving

    settings = make_settings(database_url, tmp_path, mail_send_limit_per_ip=2, **mailbox.settings)
    async with serving(settings) as (_, client):
        answers = [
            await client.post(REQUEST, json={"email": f"a{n}@example.com"}) for n in range(3)
        ]

    assert [answer.status_code for answer in answers[:2]] == [202, 202]
    assert_problem(answers[2], 429, "too_many_requests")
    assert 0 < int(answers[2].headers["Retry-After"]) <= 900


# --- tokens and codes that must not work -------------------------------------------------


async def test_a_token_works_once(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    token = token_in(await reset_mail(client, mailbox, user))
    first = await client.post(CONFIRM, json={"token": token, "new_password": NEW_PASSWORD})

    again = await client.post(
        CONFIRM, json={"token": token, "new_password": "yet another passphrase here"}
    )

    assert first.status_code == 204
    assert_problem(again, 400, "invalid_reset_token")
    assert (await log_in(client, user.email, NEW_PASSWORD)).status_code == 200


async def test_of_two_confirmations_racing_exactly_one_succeeds(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    token = token_in(await reset_mail(client, mailbox, user))
    passwords = ["first racing passphrase", "second racing passphrase"]

    answers = await asyncio.gather(
        *(client.post(CONFIRM, json={"token": token, "new_password": p}) for p in passwords)
    )

    assert sorted(answer.status_code for answer in answers) == [204, 400]
    winner = passwords[[answer.status_code for answer in answers].index(204)]
    assert (await log_in(client, user.email, winner)).status_code == 200


async def test_a_new_request_kills_the_earlier_token(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    first = token_in(await reset_mail(client, mailbox, user, nth=1))
    await reset_mail(client, mailbox, user, nth=2)

    response = await client.post(CONFIRM, json={"token": first, "new_password": NEW_PASSWORD})

    assert_problem(response, 400, "invalid_reset_token")


async def test_five_wrong_codes_kill_the_reset(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    mail = await reset_mail(client, mailbox, user)
    right = code_in(mail)
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    body = {"email": user.email, "new_password": NEW_PASSWORD}

    tries = await asyncio.gather(
        *(client.post(CONFIRM, json=body | {"code": wrong}) for _ in range(8))
    )
    after = await client.post(CONFIRM, json=body | {"code": right})

    for answer in tries:
        assert_problem(answer, 400, "invalid_reset_token")
    assert_problem(after, 400, "invalid_reset_token")
    assert_problem(
        await client.post(CONFIRM, json={"token": token_in(mail), "new_password": NEW_PASSWORD}),
        400,
        "invalid_reset_token",
    )


async def test_four_wrong_codes_leave_the_right_one_working(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    right = code_in(await reset_mail(client, mailbox, user))
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    body = {"email": user.email, "new_password": NEW_PASSWORD}
    for _ in range(4):
        assert_problem(
            await client.post(CONFIRM, json=body | {"code": wrong}), 400, "invalid_reset_token"
        )

    assert (await client.post(CONFIRM, json=body | {"code": right})).status_code == 204


async def test_an_expired_token_is_refused(
    database_url: str, tmp_path: Path, mailbox: Mailbox
) -> None:
    from tests.factories import serving

    settings = make_settings(
        database_url, tmp_path, password_reset_ttl_seconds=1, **mailbox.settings
    )
    async with serving(settings) as (_, client):
        account = await make_user(client)
        token = token_in(await reset_mail(client, mailbox, account))
        # A rejected password changes nothing (422) while the token lives; once it is
        # expired the token itself is refused (400).
        answers = await poll(
            lambda: client.post(CONFIRM, json={"token": token, "new_password": "password123"}),
            until=lambda answer: answer.status_code != 422,
            within=10,
            what="the token to expire",
        )

    assert_problem(answers[-1], 400, "invalid_reset_token")


async def test_a_rejected_new_password_changes_nothing_and_keeps_the_token(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    token = token_in(await reset_mail(client, mailbox, user))

    weak = await client.post(CONFIRM, json={"token": token, "new_password": "password123"})

    assert_problem(weak, 422, "validation_error")
    assert (await log_in(client, user.email, user.password)).status_code == 200
    ok = await client.post(CONFIRM, json={"token": token, "new_password": NEW_PASSWORD})
    assert ok.status_code == 204


async def test_a_reset_mailed_before_an_email_change_is_dead_after_it(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    token = token_in(await reset_mail(client, mailbox, user))
    changed = await client.patch(
        "/api/v1/users/me",
        json={
            "email": f"moved-{uuid.uuid4().hex[:8]}@example.com",
            "current_password": user.password,
        },
        headers=user.headers,
    )
    assert changed.status_code == 200, changed.text

    response = await client.post(CONFIRM, json={"token": token, "new_password": NEW_PASSWORD})

    assert_problem(response, 400, "invalid_reset_token")


@pytest.mark.parametrize(
    "body",
    [
        {"new_password": NEW_PASSWORD},
        {"token": "t", "email": "a@example.com", "code": "123456", "new_password": NEW_PASSWORD},
        {"email": "a@example.com", "new_password": NEW_PASSWORD},
        {"code": "123456", "new_password": NEW_PASSWORD},
        {"email": "a@example.com", "code": "12345", "new_password": NEW_PASSWORD},
        {"email": "a@example.com", "code": "12345x", "new_password": NEW_PASSWORD},
        {"token": "t"},
    ],
    ids=[
        "no-proof",
        "both-proofs",
        "email-only",
        "code-only",
        "short-code",
        "letter-in-code",
        "no-password",
    ],
)
async def test_a_confirmation_needs_exactly_one_proof_and_a_password(
    client: httpx.AsyncClient, body: dict[str, str]
) -> None:
    assert_problem(await client.post(CONFIRM, json=body), 422, "validation_error")


async def test_an_unknown_token_or_code_is_refused(
    client: httpx.AsyncClient, user: Account
) -> None:
    by_token = await client.post(CONFIRM, json={"token": "x" * 43, "new_password": NEW_PASSWORD})
    by_code = await client.post(
        CONFIRM, json={"email": user.email, "code": "000000", "new_password": NEW_PASSWORD}
    )

    assert_problem(by_token, 400, "invalid_reset_token")
    assert_problem(by_code, 400, "invalid_reset_token")


async def test_a_reset_mailed_before_a_deactivation_is_dead_after_reactivation(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account, admin: Account
) -> None:
    token = token_in(await reset_mail(client, mailbox, user))
    deactivated = await client.post(
        "/api/v1/users/me/deactivate",
        json={"current_password": user.password},
        headers=user.headers,
    )
    reactivated = await client.patch(
        f"/api/v1/users/{user.id}", json={"is_active": True}, headers=admin.headers
    )
    assert (deactivated.status_code, reactivated.status_code) == (200, 200)

    response = await client.post(CONFIRM, json={"token": token, "new_password": NEW_PASSWORD})

    assert_problem(response, 400, "invalid_reset_token")


# --- security events ---------------------------------------------------------------------


async def test_a_reset_mail_records_password_reset_requested_for_known_active_accounts_only(
    client: httpx.AsyncClient, mailbox: Mailbox, admin: Account, user: Account, other_user: Account
) -> None:
    deactivated = await client.post(
        f"/api/v1/users/{other_user.id}/deactivate", headers=admin.headers
    )
    assert deactivated.status_code == 200
    for address in (f"nobody-{uuid.uuid4().hex[:8]}@example.com", other_user.email):
        assert (await client.post(REQUEST, json={"email": address})).status_code == 202

    await reset_mail(client, mailbox, user)  # mails leave in order: the others are done

    requested = await all_events(client, admin, type="password_reset_requested")
    assert [(e["user_id"], e["actor_id"], e["ip"]) for e in requested] == [(user.id, None, None)]


async def test_a_completed_reset_records_password_reset(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    mail = await reset_mail(client, mailbox, user)
    response = await client.post(
        CONFIRM,
        json={"token": token_in(mail), "new_password": NEW_PASSWORD},
        headers={"User-Agent": "reset page"},
    )
    assert response.status_code == 204, response.text
    user.password = NEW_PASSWORD

    events = await my_events(client, await login(client, user))

    assert types_of(events)[1:3] == ["password_reset", "password_reset_requested"]
    assert (events[1]["actor_id"], events[1]["user_agent"]) == (user.id, "reset page")


async def test_a_refused_confirmation_records_nothing(
    client: httpx.AsyncClient, mailbox: Mailbox, user: Account
) -> None:
    mail = await reset_mail(client, mailbox, user)
    forged = token_in(mail)[::-1]
    response = await client.post(CONFIRM, json={"token": forged, "new_password": NEW_PASSWORD})
    assert_problem(response, 400, "invalid_reset_token")

    assert "password_reset" not in types_of(await my_events(client, user))
