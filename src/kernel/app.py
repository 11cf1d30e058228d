"""create_app(): settings -> database -> middleware -> error handlers -> health -> slices."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel
from sqlalchemy import text

from kernel.db import Database
from kernel.email_tokens import EmailTokens
from kernel.errors import DatabaseUnavailable, install_error_handlers, problem_responses
from kernel.guesses import PasswordGuesses
from kernel.hashing import PasswordHashing
from kernel.mail_delivery import MailSender
from kernel.media_types import require_declared_media_type
from kernel.middleware import (
    BodyGuardMiddleware,
    ProblemCORSMiddleware,
    RequestContextMiddleware,
)
from kernel.migrations import current_revision, head_revision
from kernel.openapi import install_openapi
from kernel.send_limits import SendLimits
from kernel.sessions import RefreshTokens
from kernel.settings import Settings, load_settings
from kernel.signing_keys import Keyring
from kernel.slices import mount_slices, refuse_methods_a_literal_path_lacks
from kernel.tokens import AccessTokens

log = logging.getLogger("userapi")


class Health(BaseModel):
    status: str


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # /ready asks Alembic for the revision; its per-call "Context impl" line is noise.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    database = Database(settings)
    hashing = PasswordHashing(settings)
    schema_head = head_revision()
    keyring = Keyring(settings)
    mail_sender = MailSender(database, settings) if settings.mail_sender_enabled else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await hashing.warm_up()
        # Creates the first signing key if there is none; then re-reads the set in the
        # background, so a rotation reaches this process without a restart.
        await keyring.start(database)
        if mail_sender is not None:
            await mail_sender.start()
        yield
        if mail_sender is not None:
            await mail_sender.stop()
        await keyring.stop()
        await database.dispose()

    app = FastAPI(
        title="userapi",
        version="1",
        summary="User accounts for REST clients and mobile-app backends.",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        dependencies=[
            Depends(refuse_methods_a_literal_path_lacks),
            Depends(require_declared_media_type),
        ],
        # operationId = the route function's name ("login", "update_me"): what generated
        # clients call their methods, so it should read well.
        generate_unique_id_function=lambda route: route.name.removesuffix("_route"),
        # API.md: a trailing slash is 404, never a redirect. Starlette's redirect points
        # at the Host header the client sent, and a 307 has the client resend its
        # credentials there. Every router's routes end up in this one, so this is all.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.hashing = hashing
    app.state.guesses = PasswordGuesses(database, hashing, settings)
    app.state.access_tokens = AccessTokens(settings, keyring)
    app.state.refresh_tokens = RefreshTokens(settings)
    app.state.email_tokens = EmailTokens(database, settings)
    app.state.send_limits = SendLimits(settings)

    # Each add_middleware wraps the ones before it: the body guard is innermost, so its
    # early 413/422/500 answers still get CORS headers; the request id is outermost, so
    # every response, CORS preflights included, gets an id and an access-log line.
    app.add_middleware(BodyGuardMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            ProblemCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "X-Request-ID"],
            # WWW-Authenticate: every 401 carries it, and browser code may only read
            # the response headers listed here.
            expose_headers=["ETag", "Location", "Retry-After", "WWW-Authenticate", "X-Request-ID"],
        )
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)

    @app.get("/health", tags=["operations"])
    async def health() -> Health:
        """Liveness: the process is up and serving."""
        return Health(status="ok")

    @app.get("/ready", tags=["operations"], responses=problem_responses(DatabaseUnavailable))
    async def ready(request: Request) -> Health:
        """Readiness: the database answers and its schema is at the newest migration."""
        db: Database = request.app.state.database
        async with db.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        if await current_revision(db) != schema_head:
            raise DatabaseUnavailable("The database schema is not at the newest migration.")
        return Health(status="ok")

    mount_slices(app)
    install_openapi(app)
    return app


def __getattr__(name: str) -> Any:
    # `uvicorn kernel.app:app` works, yet importing this module builds nothing.
    if name == "app":
        application = create_app()
        globals()["app"] = application  # built once, on first use
        return application
    raise AttributeError(name)
