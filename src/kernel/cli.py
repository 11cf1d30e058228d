"""The `userapi` command: serve | migrate | create-admin | purge-expired | keys | send-mail |
outbox | new-feature."""

from __future__ import annotations

import argparse
import asyncio
import gc
import keyword
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

# Each command imports what it needs when it runs: the web framework, the ORM and Alembic
# cost most of a second of CPU to import, which `--help`, `new-feature` or a start-up
# refused for a bad setting would otherwise pay for nothing.
if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy.exc import DBAPIError

    from kernel.mail_delivery import OutboxEntry
    from kernel.settings import Settings
    from kernel.signing_keys import SigningKey
    from kernel.users import Registration, User

SCAFFOLD = Path(__file__).resolve().parent / "scaffold"
# At most 40 characters: the scaffold's lines then fit ruff's 100 columns as generated.
MAX_FEATURE_NAME = 40
_SLICE_NAME = re.compile(rf"^[a-z][a-z0-9_]{{0,{MAX_FEATURE_NAME - 1}}}$")


class CommandError(Exception):
    """A failure the operator can fix; printed as one line, exit status 1."""


# The collector's thresholds as the interpreter set them, before main() changes them.
_COLLECTION_THRESHOLDS = gc.get_threshold()
# Importing the framework, the ORM, Alembic and the slices makes some 130,000 objects
# the collector tracks (len(gc.get_objects())), nearly all living as long as the process.
# At the default thresholds it walks them again and again while they are being made:
# about a sixth of a command's start-up CPU (`import kernel.app, kernel.migrations` in a
# new process: 1.78 s median at the defaults, 1.50 s at these; five rounds each, side by
# side). mypy makes the same trade.
# Only start-up is long enough to matter for most commands; the long-running ones go
# back to the defaults once their code is in (_starting_up, then _started).
_START_UP_THRESHOLDS = (200_000, 30, 30)


def _starting_up() -> None:
    """Before a process imports what it runs: collect young objects at the start-up pace."""
    gc.set_threshold(*_START_UP_THRESHOLDS)


def _started() -> None:
    """A long-running command has imported what it runs: what start-up made is set apart
    from the collector's walks for good (it lives as long as the process), and the
    collector is back at its usual pace for what the work makes."""
    gc.freeze()
    gc.set_threshold(*_COLLECTION_THRESHOLDS)


def serving_app() -> FastAPI:
    """The app `userapi serve` runs: uvicorn calls this in each worker. A worker of
    `--workers N` is a new interpreter that never ran main(), and imports the app here."""
    _starting_up()
    from kernel.app import create_app

    app = create_app()
    _started()
    return app


async def _migrate(settings: Settings) -> str | None:
    """Apply pending migrations; the revision the database is at afterwards."""
    from kernel import migrations
    from kernel.db import Database

    database = Database(settings)
    try:
        await migrations.upgrade(database)
        return await migrations.current_revision(database)
    finally:
        await database.dispose()


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from kernel.edge import EdgeProtocol
    from kernel.logs import configure_logging

    host, port = args.host or settings.host, args.port or settings.port
    workers = args.workers or settings.web_concurrency
    if settings.auto_migrate:
        # Once here, before the workers start, rather than once per worker.
        asyncio.run(_migrate(settings))
    # The workers inherit it: they split the hashing memory budget between them.
    os.environ["WEB_CONCURRENCY"] = str(workers)
    if not settings.public_url and settings.env != "production":
        # Mailed links in development open the pages of this very server.
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
        os.environ["PUBLIC_URL"] = f"http://{shown}:{port}"
    configure_logging(settings)
    with _metrics_folder(settings, workers):
        uvicorn.run(
            "kernel.cli:serving_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            # The limits a hostile connection meets before the app sees a request
            # (kernel.edge).
            http=EdgeProtocol,
            timeout_keep_alive=settings.keep_alive_timeout_seconds,
            backlog=settings.listen_backlog,
            # No route speaks WebSocket, and an upgraded connection would leave EdgeProtocol.
            ws="none",
            server_header=False,  # no response names the software it runs on
            # Kept: RFC 9110 6.6.1 asks an origin server with a clock for Date; it names nothing.
            date_header=True,
            # X-Forwarded-For and -Proto are the app's to read (kernel.client_ip), from
            # TRUSTED_PROXIES only; uvicorn's own handling would trust loopback and apply
            # the headers a second time.
            proxy_headers=False,
            timeout_graceful_shutdown=30,
            access_log=False,  # our middleware logs each request with its request id
            log_config=None,  # uvicorn's lines go through our handler (LOG_FORMAT) too
        )


@contextmanager
def _metrics_folder(settings: Settings, workers: int) -> Iterator[None]:
    """With metrics and several workers: a fresh PROMETHEUS_MULTIPROC_DIR for this run.

    The workers (new processes) see it before they import prometheus-client, which is
    when the library picks its multiprocess mode; values left from an earlier run would
    be counted again, so the folder is new each time and removed afterwards. A folder
    the operator set is theirs: used as it is, never removed.
    """
    from kernel.metrics import MULTIPROC_DIR_VARIABLE

    if not settings.metrics_enabled or workers < 2 or os.environ.get(MULTIPROC_DIR_VARIABLE):
        yield
        return
    folder = tempfile.mkdtemp(prefix="userapi-metrics-")
    os.environ[MULTIPROC_DIR_VARIABLE] = folder
    try:
        yield
    finally:
        del os.environ[MULTIPROC_DIR_VARIABLE]
        shutil.rmtree(folder, ignore_errors=True)


async def _purge_expired(settings: Settings) -> dict[str, int]:
    from kernel.db import Database
    from kernel.email_tokens import purge_spent_email_tokens
    from kernel.events import purge_old_events
    from kernel.guesses import purge_expired_attempts
    from kernel.mail_delivery import purge_old_mail
    from kernel.send_limits import purge_expired_send_counts
    from kernel.sessions import purge_expired_sessions

    database = Database(settings)
    try:
        async with database.session() as session:
            return {
                "sessions": await purge_expired_sessions(session),
                "password attempt counters": await purge_expired_attempts(session, settings),
                "mailed tokens and codes": await purge_spent_email_tokens(session),
                "mail send counters": await purge_expired_send_counts(session, settings),
                "sent or failed mails": await purge_old_mail(session),
                "security events": await purge_old_events(session, settings),
            }
    finally:
        await database.dispose()


async def _send_mail(settings: Settings, once: bool) -> int:
    import signal

    from kernel import migrations
    from kernel.db import Database
    from kernel.logs import configure_logging
    from kernel.mail_delivery import MailSender
    from kernel.slices import load_slices

    # Its log is what an operator sees of it: each mail sent or failed, and (with no
    # SMTP_HOST) the development mails themselves. The same format as `userapi serve`.
    configure_logging(settings)
    load_slices()  # their mail preparers (kernel.mail.prepare_when_sent)
    database = Database(settings)
    sender = MailSender(database, settings)
    _started()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # The mail being sent is finished first: cut off, it would go out twice.
        loop.add_signal_handler(signum, sender.request_stop)
    try:
        if settings.auto_migrate:
            await migrations.upgrade(database)
        if once:
            return await sender.deliver_due()
        await sender.run_forever()
        return 0
    finally:
        await database.dispose()


async def _outbox(settings: Settings) -> list[OutboxEntry]:
    from kernel.db import Database
    from kernel.mail_delivery import outbox_entries

    database = Database(settings)
    try:
        async with database.session(writes=False) as session:
            return await outbox_entries(session)
    finally:
        await database.dispose()


def _outbox_line(entry: OutboxEntry) -> str:
    # Never the subject or the bodies: they may carry links and codes.
    error = f"  last error: {entry.last_error}" if entry.last_error else ""
    when = "" if entry.status == "failed" else f"  next try {entry.next_attempt_at.isoformat()}"
    return (
        f"{entry.id}  {entry.status:<7}  {entry.kind:<20}  to {entry.to_address}  "
        f"queued {entry.created_at.isoformat()}  attempts {entry.attempts}{when}{error}"
    )


async def _keys(settings: Settings, action: str) -> list[SigningKey]:
    if settings.jwt_algorithm == "HS256":
        raise CommandError(
            "JWT_ALGORITHM=HS256 signs with SECRET_KEY: rotate it with SECRET_KEY_PREVIOUS"
        )
    from kernel import migrations
    from kernel.db import Database
    from kernel.signing_keys import listed, rotate

    database = Database(settings)
    try:
        if settings.auto_migrate:
            await migrations.upgrade(database)
        async with database.session() as session:
            if action == "rotate":
                return [await rotate(session, settings)]
            return await listed(session)
    finally:
        await database.dispose()


def _key_line(key: SigningKey) -> str:
    # Public facts only: the private key is never printed.
    retired = key.retired_at.isoformat() if key.retired_at else "-"
    expires = key.expires_at.isoformat() if key.expires_at else "-"
    return (
        f"{key.kid}  {key.algorithm:<5}  signs from {key.signs_from.isoformat()}  "
        f"retired {retired}  leaves the JWKS {expires}"
    )


def _registration(args: argparse.Namespace, password: str) -> Registration:
    """The same checks as POST /auth/register, each refusal as one line."""
    from pydantic import ValidationError

    from kernel.users import Registration

    try:
        return Registration(
            email=args.email,
            password=password,
            first_name=args.first_name,
            last_name=args.last_name,
        )
    except ValidationError as error:
        issue = error.errors()[0]
        field = str(issue["loc"][0]).replace("_", " ") if issue["loc"] else "input"
        raise CommandError(f"invalid {field}: {issue['msg']}") from None


async def _create_admin(settings: Settings, registration: Registration) -> User:
    from kernel import migrations
    from kernel.db import Database
    from kernel.errors import EmailTaken
    from kernel.hashing import PasswordHashing
    from kernel.users import create_user

    database = Database(settings)
    try:
        if settings.auto_migrate:
            await migrations.upgrade(database)
        async with database.session() as session:
            return await create_user(
                session,
                registration,
                hashing=PasswordHashing(settings),
                min_password_length=settings.password_min_length,
                is_superuser=True,
                email_verified=True,  # the operator vouches for the address
            )
    except EmailTaken:
        email = registration.email
        raise CommandError(f"{email} is already registered (promote it with --promote)") from None
    finally:
        await database.dispose()


async def _promote(settings: Settings, email: str) -> User:
    from pydantic import TypeAdapter, ValidationError

    from kernel.db import Database
    from kernel.events import EventType, record_event
    from kernel.fields import Email
    from kernel.users import find_user_by_email

    try:
        email = TypeAdapter(Email).validate_python(email)
    except ValidationError as error:
        raise CommandError(f"invalid email: {error.errors()[0]['msg']}") from None
    database = Database(settings)
    try:
        async with database.session() as session:
            user = await find_user_by_email(session, email)
            if user is None:
                raise CommandError(f"no account is registered as {email}")
            if not user.is_superuser:
                user.is_superuser = True
                user.touch()
                # The operator at the command line: the system, no actor.
                record_event(session, EventType.promoted, user_id=user.id, actor_id=None)
            return user
    finally:
        await database.dispose()


def _new_feature(name: str, root: Path) -> list[Path]:
    """Copy the scaffold into ROOT/features/NAME and ROOT/tests/features (ROOT: the project)."""
    if not _SLICE_NAME.match(name) or keyword.iskeyword(name):
        raise CommandError(
            f"invalid feature name {name!r}: use snake_case of at most {MAX_FEATURE_NAME}"
            " characters, like saved_searches"
        )
    if not (root / "features").is_dir():
        raise CommandError(f"{root} has no features/ folder: run this from the project root")
    target = root / "features" / name
    if target.exists():
        raise CommandError(f"{target} already exists")
    written = []
    target.mkdir()
    for source, destination in (
        (SCAFFOLD / "slice.py.tmpl", target / "slice.py"),
        (SCAFFOLD / "test_slice.py.tmpl", root / "tests" / "features" / f"test_{name}.py"),
    ):
        if destination.parent.is_dir() and not destination.exists():
            text = source.read_text()
            for placeholder, value in (
                ("{{name}}", name),
                ("{{Name}}", "".join(part.title() for part in name.split("_"))),
                ("{{path}}", name.replace("_", "-")),
            ):
                text = text.replace(placeholder, value)
            destination.write_text(text)
            written.append(destination)
    (target / "__init__.py").write_text("")
    return written


def _bounded(name: str, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} is a whole number from {low} to {high}")
        return value

    return parse


_port = _bounded("a port", 1, 65535)
_workers = _bounded("the number of workers", 1, 256)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="userapi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="apply pending migrations, then serve HTTP",
        description="Apply pending migrations (unless AUTO_MIGRATE=false), then serve HTTP.",
    )
    serve.add_argument("--host", help="the address to listen on (default: $HOST, else 127.0.0.1)")
    serve.add_argument(
        "--port", type=_port, help="the TCP port to listen on (default: $PORT, else 8000)"
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        help="worker processes on this machine (default: $WEB_CONCURRENCY, else 1)",
    )
    commands.add_parser("migrate", help="apply pending migrations")
    commands.add_parser(
        "purge-expired", help="delete expired refresh tokens and other expired rows"
    )
    admin = commands.add_parser(
        "create-admin", help="create an administrator account, or promote an existing one"
    )
    target = admin.add_mutually_exclusive_group(required=True)
    target.add_argument("--email", help="the new administrator's email")
    target.add_argument("--promote", metavar="EMAIL", help="make this existing account an admin")
    admin.add_argument(
        "--password", help="default: the USERAPI_ADMIN_PASSWORD environment variable"
    )
    admin.add_argument("--first-name", default="Admin")
    admin.add_argument("--last-name", default="User")
    keys = commands.add_parser("keys", help="the keys that sign access tokens")
    keys_action = keys.add_subparsers(dest="action", required=True)
    keys_action.add_parser(
        "rotate",
        help="publish a new key now; it signs after KEY_PUBLISH_SECONDS, the old one retires",
    )
    keys_action.add_parser("list", help="every key, with when it signs, retires and leaves")
    send_mail = commands.add_parser(
        "send-mail", help="deliver the outbox until stopped (a dedicated mail worker)"
    )
    send_mail.add_argument("--once", action="store_true", help="deliver what is due now, then exit")
    commands.add_parser("outbox", help="list pending and failed mails (never their contents)")
    feature = commands.add_parser(
        "new-feature", help="copy the slice template to features/NAME (run it in the project root)"
    )
    feature.add_argument("name")
    return parser


# SQLSTATE classes that mean the server is there but will not have us: connection
# exceptions, bad credentials, no such database, too many connections, starting up or
# shutting down. Any other database error is a bug, and keeps its traceback.
_REFUSED_SQLSTATE_CLASSES = ("08", "28", "3D", "53", "57")


def _location(settings: Settings) -> str:
    """Where the database is, for an operator: host:port/name, never the password."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


def _reason(error: BaseException | None) -> str:
    if error is None:
        return "no answer"
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


def _schema_problem(settings: Settings) -> str | None:
    """Why the database cannot serve this code (kernel.migrations), asked only after a
    command failed in SQL; None when the schema is fine or cannot even be checked."""
    from kernel import migrations
    from kernel.db import Database, metadata
    from kernel.slices import load_tables

    async def ask() -> str | None:
        load_tables()
        database = Database(settings)
        try:
            return await migrations.SchemaReadiness(metadata).problem(database)
        finally:
            await database.dispose()

    try:
        return asyncio.run(ask())
    except Exception:  # the command's own failure is the one to report
        return None


def _refused(error: DBAPIError) -> bool:
    sqlstate = str(getattr(error.orig, "sqlstate", None) or "")
    return sqlstate[:2] in _REFUSED_SQLSTATE_CLASSES


def main(argv: list[str] | None = None) -> None:
    _starting_up()
    args = _parser().parse_args(argv)
    # The one-line failure below says what the connection warning would: not both.
    logging.getLogger("userapi.db").addHandler(logging.NullHandler())
    try:
        if args.command == "new-feature":
            for path in _new_feature(args.name, Path.cwd()):
                print(f"created {path}")
            return
        from kernel.settings import load_settings

        # A bad setting stops here (SettingsError), before anything heavy is imported.
        _run(args, load_settings())
    except CommandError as error:
        _fail(str(error))


def _run(args: argparse.Namespace, settings: Settings) -> None:
    from sqlalchemy.exc import DBAPIError

    from kernel.errors import DatabaseUnavailable, InvalidInput, ProblemError

    try:
        if args.command == "serve":
            _serve(args, settings)
        elif args.command == "migrate":
            # Not necessarily this code's newest: a later release may have migrated it.
            print(f"database at {asyncio.run(_migrate(settings))}")
        elif args.command == "purge-expired":
            for name, count in asyncio.run(_purge_expired(settings)).items():
                print(f"{count} expired {name} deleted")
        elif args.command == "keys":
            keys = asyncio.run(_keys(settings, args.action))
            if args.action == "rotate":
                print(f"published {keys[0].kid}; it signs from {keys[0].signs_from.isoformat()}")
            for key in keys if args.action == "list" else []:
                print(_key_line(key))
        elif args.command == "send-mail":
            attempted = asyncio.run(_send_mail(settings, args.once))
            if args.once:
                print(f"{attempted} mails attempted")
        elif args.command == "outbox":
            entries = asyncio.run(_outbox(settings))
            for entry in entries:
                print(_outbox_line(entry))
            pending = sum(entry.status == "pending" for entry in entries)
            print(f"{pending} pending, {len(entries) - pending} failed")
        elif args.command == "create-admin" and args.promote:
            admin = asyncio.run(_promote(settings, args.promote))
            state = "" if admin.is_active else " (deactivated: reactivate it to sign in)"
            print(f"promoted {admin.email} ({admin.id}) to admin{state}")
        elif args.command == "create-admin":
            password = args.password or os.environ.get("USERAPI_ADMIN_PASSWORD", "")
            if not password:
                raise CommandError("give --password or set USERAPI_ADMIN_PASSWORD")
            admin = asyncio.run(_create_admin(settings, _registration(args, password)))
            print(f"created admin {admin.email} ({admin.id})")
    except DatabaseUnavailable as error:
        _fail(f"cannot reach the database at {_location(settings)} ({_reason(error.__cause__)})")
    except DBAPIError as error:
        if not _refused(error):
            # A table or column missing (never migrated, or AUTO_MIGRATE=false) is the
            # operator's to fix, and they are told how; only then is anything a bug.
            problem = _schema_problem(settings)
            if problem is None:
                raise
            _fail(f"the database at {_location(settings)} is not ready: {problem}")
        refusal = str(error.orig).strip().splitlines()[:1] or [type(error.orig).__name__]
        _fail(f"the database at {_location(settings)} refused the connection: {refusal[0]}")
    except InvalidInput as error:
        issue = error.errors[0] if error.errors else None
        _fail(f"invalid {issue.loc[-1]}: {issue.msg}" if issue else error.message)
    except ProblemError as error:  # email_taken, database_unavailable, ...
        _fail(error.message)


def _fail(message: str) -> NoReturn:
    print(f"userapi: {message}", file=sys.stderr)
    raise SystemExit(1)
