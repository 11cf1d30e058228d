"""Delivering the outbox: at least once per mail, by any number of senders at once.

A sender claims one due mail with a conditional UPDATE that sets a lease
(`claimed_until`); on PostgreSQL the candidate row is picked `FOR UPDATE SKIP LOCKED`,
so concurrent senders never wait on, or take, each other's mail. It sends with no
transaction open, then records the outcome under the same lease. A sender that dies
mid-send leaves a lease that expires: the mail is tried again (the Message-ID stays
the same, so a receiving server can tell a duplicate).

Failures are retried with exponential backoff (MAIL_RETRY_SECONDS doubling, capped at
an hour); a 5xx answer is permanent and gives up after MAIL_PERMANENT_FAILURE_ATTEMPTS,
anything else after MAIL_MAX_ATTEMPTS. A failed mail stays in the outbox, visible to
`userapi outbox`, with its last error; its bodies (links, codes) are emptied.
"""

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Protocol

import aiosmtplib
from prometheus_client import Counter
from sqlalchemy import ColumnElement, Select, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from kernel.db import Database, deleted_count, utc_now
from kernel.email_tokens import EmailTokens
from kernel.mail import (
    MailPreparation,
    OutboxMail,
    forget_mail_callback,
    on_mail_committed,
    preparer_of,
)
from kernel.settings import Settings

log = logging.getLogger("userapi.mail")
STOP_GRACE_SECONDS = 10
LEASE = timedelta(minutes=5)  # longer than any SMTP exchange (SMTP_TIMEOUT_SECONDS <= 300)
MAX_BACKOFF_SECONDS = 3600
SENT_RETENTION = timedelta(days=7)
FAILED_RETENTION = timedelta(days=30)


class MailBackend(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class PermanentFailure(Exception):
    """The server refused the mail for good (a 5xx answer)."""


class SmtpBackend:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def send(self, message: EmailMessage) -> None:
        settings = self._settings
        try:
            await aiosmtplib.send(
                message,
                hostname=settings.smtp_host,
                port=settings.resolved_smtp_port,
                username=settings.smtp_username or None,
                password=settings.smtp_password or None,
                use_tls=settings.smtp_tls == "tls",
                start_tls=settings.smtp_tls == "starttls",
                timeout=settings.smtp_timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            if all(500 <= refusal.code < 600 for refusal in error.recipients):
                raise PermanentFailure(_smtp_error(error)) from error
            raise
        except aiosmtplib.SMTPResponseException as error:
            if 500 <= error.code < 600:
                raise PermanentFailure(_smtp_error(error)) from error
            raise


def _smtp_error(error: aiosmtplib.SMTPException) -> str:
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        return "; ".join(f"{each.code} {each.message}" for each in error.recipients)
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return f"{error.code} {error.message}"
    return str(error)


class LogBackend:
    """The development backend: each mail in the log and as DATA_DIR/mail/<id>.eml.

    It shows links and codes on purpose, so that the service works with no mail server;
    production refuses it unless MAIL_BACKEND=log is set.
    """

    def __init__(self, settings: Settings) -> None:
        self._folder = settings.data_dir / "mail"

    async def send(self, message: EmailMessage) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        name = str(message["Message-ID"]).strip("<>").split("@")[0]
        path = self._folder / f"{name}.eml"
        path.write_bytes(bytes(message))
        text = message.get_body(("plain",))
        body = text.get_content() if text is not None else ""
        log.info(
            "mail to %s subject %r written to %s\n%s", message["To"], message["Subject"], path, body
        )


def mail_backend(settings: Settings) -> MailBackend:
    if settings.resolved_mail_backend == "smtp":
        return SmtpBackend(settings)
    return LogBackend(settings)


def build_message(mail: OutboxMail, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to_address
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(mail.created_at)
    # The same on every attempt: a receiver can drop a copy sent twice after a crash.
    message["Message-ID"] = f"<{mail.id.hex}@userapi>"
    # Unencoded when lines allow (every relay today takes 8BITMIME): a mail a person can
    # read, and a link they can click, even opened as a file. Quoted-printable otherwise.
    message.set_content(mail.text_body, cte=_transfer_encoding(mail.text_body))
    message.add_alternative(mail.html_body, subtype="html", cte=_transfer_encoding(mail.html_body))
    return message


def _transfer_encoding(body: str) -> str:
    if any(len(line.encode()) > 998 for line in body.splitlines()):  # RFC 5322 line limit
        return "quoted-printable"
    return "7bit" if body.isascii() else "8bit"


@dataclass(frozen=True)
class _Claim:
    mail: OutboxMail
    lease: datetime


class MailSender:
    """Delivers due mails until stopped; one per process (app lifespan, `userapi send-mail`)."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        backend: MailBackend | None = None,
        attempts: Counter | None = None,
    ) -> None:
        self._database = database
        self._attempts = attempts  # /metrics, by outcome
        self._settings = settings
        self._backend = backend or mail_backend(settings)
        self._preparation = MailPreparation(settings, EmailTokens(database, settings))
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        on_mail_committed(self._wake.set)
        self._task = asyncio.create_task(self._run(), name="mail sender")

    def request_stop(self) -> None:
        """Finish the mail being sent, if any, then stop (SIGTERM, shutdown)."""
        self._stopping = True
        self._wake.set()

    async def stop(self) -> None:
        forget_mail_callback(self._wake.set)
        self.request_stop()
        if self._task is None:
            return
        # A mail the server is accepting right now is let finish: cut off, it would stay
        # claimed for the lease and then go out a second time.
        done, _ = await asyncio.wait({self._task}, timeout=STOP_GRACE_SECONDS)
        if not done:
            log.warning("mail sender still busy after %d s: stopped", STOP_GRACE_SECONDS)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def run_forever(self) -> None:
        """`userapi send-mail`: poll until request_stop()."""
        # Logged once SIGTERM finishes the current mail and exits 0 (the command installs
        # that handler first): a SIGTERM before this line ends a process that has claimed
        # nothing yet, by the signal.
        log.info(
            "mail sender started: outbox polled every %g s, mail sent by %s",
            self._settings.mail_poll_seconds,
            self._settings.resolved_mail_backend,
        )
        await self._run()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # A database outage, most likely: logged without a traceback, retried.
                log.warning("mail sender: %s: %s", type(error).__name__, error)
            try:
                async with asyncio.timeout(self._settings.mail_poll_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def deliver_due(self) -> int:
        """Send every mail due now, one at a time; how many were attempted."""
        attempted = 0
        while not self._stopping and await self._anything_due():
            claim = await self._claim()
            if claim is None:
                break  # another sender took what was due
            attempted += 1
            try:
                ready = claim.mail.prepared or await self._prepare(claim)
            except Exception as error:
                # A preparer's bug: counted as a failed attempt, so it ends failed, visible.
                log.exception("mail %s (%s): preparing failed", claim.mail.id, claim.mail.kind)
                await self._record_outcome(claim, f"{type(error).__name__}: {error}", False)
                continue
            if ready:
                await self._deliver(claim)
        return attempted

    async def _prepare(self, claim: _Claim) -> bool:
        """Have the kind's preparer write the mail; False when it is dropped instead."""
        mail = claim.mail
        ours = (col(OutboxMail.id) == mail.id, col(OutboxMail.claimed_until) == claim.lease)
        preparer = preparer_of(mail.kind)
        async with self._database.session() as session:
            if preparer is None:
                error = f"no preparer for mail kind {mail.kind!r} in this process"
                log.error("mail %s: %s", mail.id, error)
                await session.execute(
                    update(OutboxMail)
                    .where(*ours)
                    .values(status="failed", claimed_until=None, last_error=error)
                )
                return False
            prepared = await preparer(session, mail, self._preparation)
            if prepared is None:
                await session.execute(delete(OutboxMail).where(*ours))
                return False
            values = {
                "subject": prepared.rendered.subject,
                "text_body": prepared.rendered.text,
                "html_body": prepared.rendered.html,
                "user_id": prepared.user_id,
                "prepared": True,
            }
            await session.execute(update(OutboxMail).where(*ours).values(**values))
        for name, value in values.items():
            setattr(mail, name, value)
        return True

    async def _anything_due(self) -> bool:
        # A plain read first: on SQLite, claiming takes the write lock, which an idle
        # poll must not do every few seconds.
        async with self._database.session(writes=False) as session:
            return (await session.scalar(_due(utc_now()).limit(1))) is not None

    async def _claim(self) -> _Claim | None:
        now = utc_now()
        lease = now + LEASE
        async with self._database.session() as session:
            candidate = _due(now).limit(1)
            if not self._database.is_sqlite:
                candidate = candidate.with_for_update(skip_locked=True)
            mail = await session.scalar(
                update(OutboxMail)
                .where(col(OutboxMail.id) == candidate.scalar_subquery(), *_due_conditions(now))
                .values(claimed_until=lease, attempts=col(OutboxMail.attempts) + 1)
                .returning(OutboxMail)
            )
            return _Claim(mail, lease) if mail is not None else None

    async def _record_outcome(self, claim: _Claim, error: str | None, permanent: bool) -> None:
        async with self._database.session() as session:
            outcome = await _record(session, claim, error, permanent, self._settings)
        if self._attempts is not None:
            self._attempts.labels(outcome).inc()

    async def _deliver(self, claim: _Claim) -> None:
        mail = claim.mail
        error: str | None = None
        permanent = False
        try:
            await self._backend.send(build_message(mail, self._settings.mail_from))
        except PermanentFailure as failure:
            error, permanent = str(failure), True
        except aiosmtplib.SMTPException as failure:
            error = f"{type(failure).__name__}: {_smtp_error(failure)}"
        except (OSError, TimeoutError) as failure:
            error = f"{type(failure).__name__}: {failure}"
        except Exception as failure:
            # Not a delivery error but a bug: logged with its traceback, and still counted,
            # so the mail ends failed instead of being retried forever.
            log.exception("mail %s (%s): sending failed", mail.id, mail.kind)
            error = f"{type(failure).__name__}: {failure}"
        await self._record_outcome(claim, error, permanent)
        if error is None:
            # A mail whose address must not outlive it (an erasure's notice) is not logged.
            to = "an address not logged" if mail.forget_when_done else mail.to_address
            log.info("mail %s (%s) sent to %s", mail.id, mail.kind, to)
        else:
            log.warning(
                "mail %s (%s) attempt %d failed: %s", mail.id, mail.kind, mail.attempts, error
            )


def _due_conditions(now: datetime) -> tuple[ColumnElement[bool], ...]:
    return (
        col(OutboxMail.status) == "pending",
        col(OutboxMail.next_attempt_at) <= now,
        or_(col(OutboxMail.claimed_until).is_(None), col(OutboxMail.claimed_until) <= now),
    )


def _due(now: datetime) -> Select[uuid.UUID]:
    return (
        select(col(OutboxMail.id))
        .where(*_due_conditions(now))
        .order_by(col(OutboxMail.next_attempt_at), col(OutboxMail.id))
    )


async def _record(
    session: AsyncSession, claim: _Claim, error: str | None, permanent: bool, settings: Settings
) -> str:
    """Record how the attempt went; "sent", "failed" (given up) or "retry"."""
    mail, now = claim.mail, utc_now()
    ours = (col(OutboxMail.id) == mail.id, col(OutboxMail.claimed_until) == claim.lease)
    if error is None:
        outcome = {"status": "sent", "sent_at": now, "last_error": None}
    else:
        limit = (
            settings.mail_permanent_failure_attempts if permanent else settings.mail_max_attempts
        )
        if mail.attempts >= limit:
            outcome = {"status": "failed", "last_error": error[:500]}
        else:
            backoff = min(
                MAX_BACKOFF_SECONDS, settings.mail_retry_seconds * 2 ** (mail.attempts - 1)
            )
            jitter = random.uniform(0.9, 1.1)  # noqa: S311 (spreading retries, not a secret)
            outcome = {
                "next_attempt_at": now + timedelta(seconds=backoff * jitter),
                "last_error": error[:500],
            }
    if outcome.get("status") in ("sent", "failed"):
        if mail.forget_when_done:
            await session.execute(delete(OutboxMail).where(*ours))
            return str(outcome["status"])
        outcome |= {"text_body": "", "html_body": ""}  # the links and codes go
    await session.execute(update(OutboxMail).where(*ours).values(claimed_until=None, **outcome))
    return str(outcome.get("status", "retry"))


@dataclass(frozen=True)
class OutboxEntry:
    """What `userapi outbox` shows of a mail: never its bodies."""

    id: uuid.UUID
    kind: str
    to_address: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_error: str | None


async def outbox_entries(session: AsyncSession) -> list[OutboxEntry]:
    rows = await session.scalars(
        select(OutboxMail)
        .where(col(OutboxMail.status).in_(("pending", "failed")))
        .order_by(col(OutboxMail.created_at), col(OutboxMail.id))
    )
    return [
        OutboxEntry(
            id=mail.id,
            kind=mail.kind,
            to_address=mail.to_address,
            status=mail.status,
            attempts=mail.attempts,
            created_at=mail.created_at,
            next_attempt_at=mail.next_attempt_at,
            last_error=mail.last_error,
        )
        for mail in rows
    ]


async def purge_old_mail(session: AsyncSession) -> int:
    now = utc_now()
    result = await session.execute(
        delete(OutboxMail).where(
            or_(
                (col(OutboxMail.status) == "sent")
                & (col(OutboxMail.sent_at) <= now - SENT_RETENTION),
                (col(OutboxMail.status) == "failed")
                & (col(OutboxMail.created_at) <= now - FAILED_RETENTION),
            )
        )
    )
    return deleted_count(result)


async def outbox_depth(session: AsyncSession) -> tuple[int, int, datetime | None]:
    """Pending and failed mails, and when the oldest pending one was queued (/metrics)."""
    rows = await session.execute(
        select(col(OutboxMail.status), func.count(), func.min(col(OutboxMail.created_at)))
        .where(col(OutboxMail.status).in_(("pending", "failed")))
        .group_by(col(OutboxMail.status))
    )
    counts = {status: (count, oldest) for status, count, oldest in rows}
    pending, oldest = counts.get("pending", (0, None))
    failed, _ = counts.get("failed", (0, None))
    return pending, failed, oldest
