"""create_app(): settings -> database -> middleware -> error handlers -> health -> slices."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from kernel.api_docs import install_docs
from kernel.callers import CallerReads
from kernel.client_ip import ClientAddressMiddleware
from kernel.db import Database, metadata
from kernel.email_tokens import EmailTokens
from kernel.errors import (
    RETRY_AFTER_OUTAGE,
    DatabaseUnavailable,
    SchemaNotReady,
    install_error_handlers,
    is_outage,
    problem_responses,
)
from kernel.guesses import PasswordGuesses
from kernel.hashing import PasswordHashing
from kernel.logs import configure_logging
from kernel.mail_delivery import MailSender, outbox_depth
from kernel.media_types import require_declared_media_type
from kernel.metrics import CONTENT_TYPE, Metrics, OutboxDepth
from kernel.middleware import (
    BodyGuardMiddleware,
    ProblemCORSMiddleware,
    RequestContextMiddleware,
)
from kernel.migrations import SchemaReadiness
from kernel.openapi import install_openapi
from kernel.rate_limits import PerIPRateLimit
from kernel.send_limits import SendLimits
from kernel.sessions import RefreshTokens
from kernel.settings import Settings, load_settings
from kernel.signing_keys import Keyring
from kernel.slices import mount_slices, refuse_methods_a_literal_path_lacks
from kernel.tokens import AccessTokens

log = logging.getLogger("userapi")


class Health(BaseModel):
    status: str


async def _log_schema_problem(schema: SchemaReadiness, database: Database) -> None:
    """Say at start-up, once and loudly, what /ready will refuse on."""
    try:
        problem = await schema.problem(database)
    except (SQLAlchemyError, DatabaseUnavailable, OSError) as error:
        # Unreachable: /ready says so on every probe, and the keyring has warned already.
        log.warning("database schema not checked: %s", type(error).__name__)
        return
    if problem is not None:
        log.error("not ready: %s", problem)


async def _request_fits_its_route(request: Request) -> None:
    # One dependency for both checks: FastAPI's cost is per dependency, on every request.
    refuse_methods_a_literal_path_lacks(request)
    require_declared_media_type(request)


def _operation_id(route: APIRoute) -> str:
    # operationId = the route function's name ("login", "update_me"): what generated
    # clients call their methods, so it should read well.
    return route.name.removesuffix("_route")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings)
    metrics = Metrics(settings.metrics_token) if settings.metrics_enabled else None
    database = Database(settings)
    if metrics is not None:
        metrics.watch_pool(database.engine)
    if settings.env == "production" and database.is_sqlite:
        log.warning(
            "ENV=production on SQLite: this runs on one machine only (its processes share "
            "the file); to run several machines, use PostgreSQL (DATABASE_URL=postgresql://…)"
        )
    hashing = PasswordHashing(settings, metrics.hashing if metrics else None)
    schema = SchemaReadiness(metadata)
    keyring = Keyring(settings)
    mail_sender = (
        MailSender(database, settings, attempts=metrics.mail_attempts if metrics else None)
        if settings.mail_sender_enabled
        else None
    )
    rate_limit = PerIPRateLimit(database, settings)
    caller_reads = CallerReads(database)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await hashing.warm_up()
        # Creates the first signing key if there is none; then re-reads the set in the
        # background, so a rotation reaches this process without a restart.
        await keyring.start(database)
        await _log_schema_problem(schema, database)
        if mail_sender is not None:
            await mail_sender.start()
        yield
        if mail_sender is not None:
            await mail_sender.stop()
        await keyring.stop()
        await rate_limit.close()
        caller_reads.close()
        await database.dispose()
        if metrics is not None:
            metrics.worker_exiting()

    app = FastAPI(
        title="userapi",
        version="1",
        summary="User accounts for REST clients and mobile-app backends.",
        lifespan=lifespan,
        # /docs is ours (kernel.api_docs), served without a CDN; there is no /redoc.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        dependencies=[Depends(_request_fits_its_route)],
        generate_unique_id_function=_operation_id,
        # API.md: a trailing slash is 404, never a redirect. Starlette's redirect points
        # at the Host header the client sent, and a 307 has the client resend its
        # credentials there. Every router's routes end up in this one, so this is all.
        redirect_slashes=False,
        # The service's metrics are Prometheus' (kernel.metrics). FastAPI's own
        # OpenTelemetry asked the tracer provider and the environment on every request
        # (4% of GET /users/me's CPU on PostgreSQL, bench/profiles) for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # The slice routes are built once per process and shared by its apps (kernel.slices
    # `_mount`), so an override would reach no route: refused rather than ignored.
    app.dependency_overrides = MappingProxyType({})  # type: ignore[assignment]
    app.state.settings = settings
    app.state.database = database
    app.state.hashing = hashing
    app.state.guesses = PasswordGuesses(database, hashing, settings)
    app.state.access_tokens = AccessTokens(settings, keyring)
    app.state.caller_reads = caller_reads
    app.state.refresh_tokens = RefreshTokens(settings)
    app.state.email_tokens = EmailTokens(database, settings)
    app.state.send_limits = SendLimits(settings)
    app.state.rate_limit = rate_limit

    # Each add_middleware wraps the ones before it: the body guard is innermost, so its
    # early 413/422/500 answers still get CORS headers; the request id is outermost but
    # for the client address, so every response, CORS preflights included, gets an id
    # and an access-log line.
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
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    # Outside even that: the access log line names the client the rule resolved.
    app.add_middleware(ClientAddressMiddleware, trusted_proxies=settings.trusted_proxies)
    install_error_handlers(app)

    @app.get("/health", tags=["operations"])
    async def health() -> Health:
        """Liveness: the process is up and serving.

        Touches no database: for liveness probes, which should restart a stuck process.
        """
        return Health(status="ok")

    @app.get(
        "/ready",
        tags=["operations"],
        responses=problem_responses(DatabaseUnavailable, SchemaNotReady),
    )
    async def ready(request: Request) -> Health:
        """Readiness: the database answers and has every table and column this code uses.

        At the newest migration, or at a later release's (migrations only add, so a
        rolling deploy keeps old processes ready). For readiness probes and load
        balancers: 503 while this process cannot serve.
        """
        db: Database = request.app.state.database
        async with db.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        problem = await schema.problem(db)
        if problem is not None:
            raise SchemaNotReady(f"Not ready: {problem}.", headers=RETRY_AFTER_OUTAGE)
        return Health(status="ok")

    if metrics is not None:
        _install_metrics_route(app, metrics)
    mount_slices(app)
    install_openapi(app)
    if app.openapi_url:
        install_docs(app, app.openapi_url)
    return app


def _install_metrics_route(app: FastAPI, metrics: Metrics) -> None:
    """GET /metrics, only when METRICS_ENABLED; absent, the path is a 404 like any other.
    Not in the OpenAPI document: it is for the operator's scraper, not for clients."""

    @app.get("/metrics", include_in_schema=False)
    async def metrics_page(request: Request) -> Response:
        metrics.allows(request.headers)
        database: Database = request.app.state.database
        outbox: OutboxDepth | None = None
        try:
            async with database.session(writes=False) as session:
                outbox = OutboxDepth(*await outbox_depth(session))
        except (DatabaseUnavailable, sa_exc.DBAPIError, sa_exc.TimeoutError) as error:
            # During an outage the other metrics matter most: they are still served.
            if not isinstance(error, DatabaseUnavailable) and not is_outage(error):
                raise
        return Response(metrics.exposition(outbox), media_type=CONTENT_TYPE)


def __getattr__(name: str) -> Any:
    # `uvicorn kernel.app:app` works, yet importing this module builds nothing.
    if name == "app":
        application = create_app()
        globals()["app"] = application  # built once, on first use
        return application
    raise AttributeError(name)
