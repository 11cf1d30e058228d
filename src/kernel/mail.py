"""The outbox: a mail is a row written in the transaction of the change that causes it.

A rolled-back change leaves no mail; a committed one always has its mail, which
`kernel.mail_delivery` sends afterwards (from every `userapi serve` process, or from
`userapi send-mail`). Mails are rendered from Jinja2 templates that live next to the code
that sends them: NAME.subject.txt, NAME.txt and NAME.html (the HTML autoescaped). No
template shows text a user typed (a name): mails go to addresses nobody has verified
yet, and the service must not carry a stranger's words, a phishing link say, to them.

A mail can also be written now and prepared when it is sent (`queue_mail_prepared_later`
with a preparer registered by `prepare_when_sent`): a request then does the same work
whoever the address belongs to, and the preparer decides later whether it is sent at
all. The password-reset request uses it, so its timing does not tell who has an account.
"""

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jinja2
from sqlalchemy import Index, Text, event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from kernel.db import SECRET_COLUMN, UTCDateTime, utc_now
from kernel.email_tokens import EmailTokens
from kernel.settings import Settings

MailStatus = Literal["pending", "sent", "failed"]
# Shared mails (verification, password changed) live here; a slice's own live in its folder.
KERNEL_TEMPLATES = Path(__file__).resolve().parent / "mail_templates"


class OutboxMail(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    # The template's name: what `userapi outbox` shows instead of the body.
    kind: str = Field(max_length=64)
    to_address: str = Field(max_length=320)
    # Whom it is about, when anyone: erasure and export find a user's mails by it.
    user_id: uuid.UUID | None = Field(
        default=None, foreign_key="users.id", index=True, ondelete="SET NULL"
    )
    subject: str = Field(max_length=500)
    # The bodies hold links and codes: emptied once the mail is sent or has failed.
    text_body: str = Field(sa_type=Text, sa_column_kwargs=SECRET_COLUMN)
    html_body: str = Field(sa_type=Text, sa_column_kwargs=SECRET_COLUMN)
    status: str = Field(default="pending", max_length=10)
    # False: subject and bodies are written by the kind's preparer when it is sent.
    prepared: bool = Field(default=True)
    attempts: int = Field(default=0)
    next_attempt_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    # A sender's lease: while it is in the future, no other sender takes the mail.
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Deleted, not kept, once sent or failed: a mail whose address must not outlive it
    # (the notice of an erasure).
    forget_when_done: bool = Field(default=False)


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    text: str
    html: str


@cache
def _environment(folder: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails, never mails a blank
        keep_trailing_newline=True,
    )


def render_mail(folder: Path, name: str, context: dict[str, Any]) -> RenderedMail:
    environment = _environment(folder)
    subject = environment.get_template(f"{name}.subject.txt").render(context)
    return RenderedMail(
        subject=" ".join(subject.split()),  # one line: a newline would forge a header
        text=environment.get_template(f"{name}.txt").render(context),
        html=environment.get_template(f"{name}.html").render(context),
    )


@dataclass(frozen=True)
class MailPreparation:
    """What a preparer may use: the sender's settings and mailed-secret issuer."""

    settings: Settings
    email_tokens: EmailTokens


@dataclass(frozen=True)
class PreparedMail:
    rendered: RenderedMail
    user_id: uuid.UUID | None


# Given the session of the sender's transaction, the mail as queued: the mail to send,
# or None to drop it unsent.
Preparer = Callable[[AsyncSession, OutboxMail, MailPreparation], Awaitable[PreparedMail | None]]
_preparers: dict[str, Preparer] = {}


def prepare_when_sent(kind: str, preparer: Preparer) -> None:
    """Register the preparer of a kind of mail queued with `queue_mail_prepared_later`
    (a slice does it at import; every process that sends mail imports the slices)."""
    _preparers[kind] = preparer


def preparer_of(kind: str) -> Preparer | None:
    return _preparers.get(kind)


# Set by every running sender in this process; woken when a transaction that queued a
# mail commits, so the mail leaves at once rather than at the next poll.
_wake_callbacks: set[Any] = set()


def on_mail_committed(callback: Any) -> None:
    _wake_callbacks.add(callback)


def forget_mail_callback(callback: Any) -> None:
    _wake_callbacks.discard(callback)


def _wake_senders(_: Session) -> None:
    for callback in list(_wake_callbacks):
        callback()


def queue_mail(
    session: AsyncSession,
    *,
    to: str,
    templates: Path,
    kind: str,
    context: dict[str, Any],
    user_id: uuid.UUID | None = None,
    forget_when_done: bool = False,
) -> OutboxMail:
    """Queue a mail in the caller's transaction: it exists if and only if that commits."""
    rendered = render_mail(templates, kind, context)
    mail = OutboxMail(
        kind=kind,
        to_address=to,
        user_id=user_id,
        subject=rendered.subject,
        text_body=rendered.text,
        html_body=rendered.html,
        forget_when_done=forget_when_done,
    )
    _add(session, mail)
    return mail


def queue_mail_prepared_later(session: AsyncSession, *, to: str, kind: str) -> OutboxMail:
    """Queue a mail whose content (and whether it goes at all) its preparer decides."""
    mail = OutboxMail(
        kind=kind, to_address=to, subject="", text_body="", html_body="", prepared=False
    )
    _add(session, mail)
    return mail


def _add(session: AsyncSession, mail: OutboxMail) -> None:
    session.add(mail)
    if not event.contains(session.sync_session, "after_commit", _wake_senders):
        event.listen(session.sync_session, "after_commit", _wake_senders, once=True)
