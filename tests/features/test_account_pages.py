"""GET /account/verify-email and /account/reset-password: the pages mailed links open by
default, and the links that point at them."""

import re
from pathlib import Path

import httpx
import pytest

from kernel.settings import Settings
from tests.conftest import make_settings
from tests.factories import register, serving
from tests.mail import Mailbox, text_of, token_in
from tests.waiting import wait_until

PAGES = ["/account/verify-email", "/account/reset-password"]


@pytest.fixture
def settings(database_url: str, tmp_path: Path, mailbox: Mailbox) -> Settings:
    return make_settings(database_url, tmp_path, **mailbox.settings)


async def test_by_default_a_verification_mail_links_to_the_services_own_page(
    client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    account = await register(client)
    [mail] = await mailbox.wait_for(account.email)

    link = f"http://127.0.0.1:8000/account/verify-email?token={token_in(mail)}"

    assert link in text_of(mail)


async def test_a_reset_mail_links_to_the_page_at_public_url(
    database_url: str, tmp_path: Path, mailbox: Mailbox
) -> None:
    settings = make_settings(
        database_url, tmp_path, public_url="https://accounts.example.com/", **mailbox.settings
    )
    async with serving(settings) as (_, client):
        account = await register(client)
        await client.post("/api/v1/auth/password-reset", json={"email": account.email})
        mail = await mailbox.latest(account.email, 2)

    link = f"https://accounts.example.com/account/reset-password?token={token_in(mail)}"
    assert link in text_of(mail)


@pytest.mark.parametrize("page", PAGES)
async def test_a_page_is_static_html_that_never_echoes_the_token(
    client: httpx.AsyncClient, page: str
) -> None:
    token = "<script>alert(1)</script>"

    response = await client.get(page, params={"token": token})

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "alert" not in response.text
    assert response.text == (await client.get(page)).text


@pytest.mark.parametrize("page", PAGES)
async def test_a_page_runs_only_its_own_script_and_leaks_no_referrer(
    client: httpx.AsyncClient, page: str
) -> None:
    response = await client.get(page)

    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    for asset in re.findall(r'(?:src|href)="(/account/[^"]+)"', response.text):
        fetched = await client.get(asset)
        assert fetched.status_code == 200, asset
        assert fetched.headers["content-type"].startswith(("text/javascript", "text/css"))


@pytest.mark.parametrize("page", PAGES)
async def test_a_page_posts_to_an_operation_the_api_has(
    client: httpx.AsyncClient, page: str
) -> None:
    document = (await client.get("/openapi.json")).json()

    [endpoint] = re.findall(r'data-endpoint="([^"]+)"', (await client.get(page)).text)

    assert "post" in document["paths"][endpoint]


async def test_a_development_mail_file_shows_its_link_as_written(
    database_url: str, tmp_path: Path
) -> None:
    # No SMTP_HOST: the development backend writes DATA_DIR/mail/<id>.eml. Opened in any
    # editor, the link must be there whole (not quoted-printable), to be clicked.
    settings = make_settings(database_url, tmp_path, mail_poll_seconds=0.1)
    folder = tmp_path / "mail"
    async with serving(settings) as (_, client):
        await register(client)
        await wait_until(
            lambda: folder.is_dir() and any(folder.glob("*.eml")),
            within=20,
            what="the mail file",
        )

    [mail_file] = folder.glob("*.eml")
    raw = mail_file.read_text("utf-8")
    assert re.search(r"http://127\.0\.0\.1:8000/account/verify-email\?token=[\w-]{43}\n", raw)
