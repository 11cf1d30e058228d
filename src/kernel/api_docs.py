"""GET /docs: Swagger UI 5, served by this app, so the page works with no internet access.

FastAPI's own /docs loads Swagger UI from a CDN: on an offline or locked-down network the
page stays blank. Swagger UI's files come from the `fastapi-offline` package, which ships
them and follows Swagger UI's releases; the page and its start-up script are ours, so the
Content-Security-Policy can allow scripts from this origin only. "Authorize" uses the
OAuth2 password flow of the document's security scheme (tokenUrl: the login route).
"""

import html
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse

from kernel.errors import ProblemError

DOCS_PATH = "/docs"
ASSETS_PATH = f"{DOCS_PATH}/assets"
_OURS = Path(__file__).parent / "api_docs_page"
_SWAGGER_UI = Path(fastapi_offline.__file__).parent / "static"
# Every file the page loads, by the name it asks for: nothing else is served from here.
_JS, _CSS = "text/javascript; charset=utf-8", "text/css; charset=utf-8"
_ASSETS = {
    "swagger-ui-bundle.js": (_SWAGGER_UI / "swagger-ui-bundle.js", _JS),
    "swagger-ui.css": (_SWAGGER_UI / "swagger-ui.css", _CSS),
    "favicon.png": (_SWAGGER_UI / "favicon.png", "image/png"),
    "docs.js": (_OURS / "docs.js", _JS),
}
# Swagger UI sets styles from script (allowed) and draws its icons from data: URIs; it
# fetches the document and sends "Try it out" requests to this origin only.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class AssetNotFound(ProblemError):
    status, code, detail = 404, "not_found", "Not Found"


def install_docs(app: FastAPI, openapi_url: str) -> None:
    page = (_OURS / "docs.html").read_text()

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return HTMLResponse(
            page.format(
                title=html.escape(f"{app.title} - Swagger UI"),
                assets=html.escape(root + ASSETS_PATH),
                openapi_url=html.escape(root + openapi_url),
            ),
            headers=PAGE_HEADERS,
        )

    @app.get(f"{ASSETS_PATH}/{{name}}", include_in_schema=False)
    async def swagger_ui_asset(name: str) -> FileResponse:
        if name not in _ASSETS:
            raise AssetNotFound()
        path, media_type = _ASSETS[name]
        return FileResponse(path, media_type=media_type, headers=PAGE_HEADERS)
