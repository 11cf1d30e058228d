"""GET /account/verify-email and GET /account/reset-password: the pages mailed links open.

An app with its own screens points EMAIL_VERIFICATION_URL and PASSWORD_RESET_URL at
them (a web page or an app's deep link); these built-in pages are the default, so the
links in a mail work with nothing else deployed. Each page is static HTML with one
script (pages/account.js) that reads the token from the address, removes it from the
address bar, and posts it, on a click, to the JSON API (verify-email, or
password-reset/confirm with the new password). Nothing from the request is written
into the page; the headers forbid other scripts, framing and referrers (the token is
in the URL).
"""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(tags=["pages"])
root_router = APIRouter(tags=["pages"], include_in_schema=False)
PAGES = Path(__file__).parent / "pages"
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; "
        "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


def _file(name: str, media_type: str) -> Response:
    return Response((PAGES / name).read_bytes(), media_type=media_type, headers=PAGE_HEADERS)


@root_router.get("/account/verify-email")
async def verification_page() -> Response:
    """The page a verification link opens."""
    return _file("verify-email.html", "text/html; charset=utf-8")


@root_router.get("/account/reset-password")
async def password_reset_page() -> Response:
    """The page a password-reset link opens."""
    return _file("reset-password.html", "text/html; charset=utf-8")


@root_router.get("/account/account.js")
async def pages_script() -> Response:
    return _file("account.js", "text/javascript; charset=utf-8")


@root_router.get("/account/account.css")
async def pages_style() -> Response:
    return _file("account.css", "text/css; charset=utf-8")
