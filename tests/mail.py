"""A real SMTP server on loopback (aiosmtpd), and what the mails it received say.

The service under test delivers to it over SMTP exactly as it would to a real relay;
tests read the received messages, and take tokens and codes from them as a user would.
"""

import email
import email.policy
import re
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession

from tests.servers import free_port
from tests.waiting import wait_until

TOKEN = re.compile(r"(?<![A-Za-z0-9_-])([A-Za-z0-9_-]{43})(?![A-Za-z0-9_-])")
# A code is six digits standing alone: the digits ending a token (…HB708478) are not one.
CODE = re.compile(r"(?<![A-Za-z0-9_-])(\d{6})(?![A-Za-z0-9_-])")
DELIVERY_SECONDS = 20.0


class Mailbox:
    """Everything the SMTP server accepted; `refuse_next` makes it answer an error instead."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[EmailMessage] = []
        self.refusals: list[str] = []  # answers given instead of accepting, in order
        self.refuse_next: list[str] = []  # e.g. "451 4.3.0 try later", consumed one per mail
        self.refuse_always: str | None = None
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    # aiosmtpd handler hook: runs on the server's own thread and loop.
    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:  # noqa: N802, ARG002
        with self._lock:
            refusal = self.refuse_next.pop(0) if self.refuse_next else self.refuse_always
            if refusal:
                self.refusals.append(refusal)
                return refusal
            content = envelope.original_content or b""
            message = email.message_from_bytes(content, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            self.received.append(message)
        return "250 2.0.0 OK"

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def settings(self) -> dict[str, Any]:
        """What points the service at this server, with quick retries."""
        return {
            "smtp_host": "127.0.0.1",
            "smtp_port": self.port,
            "smtp_tls": "none",
            "smtp_timeout_seconds": 5,
            "mail_poll_seconds": 0.1,
            "mail_retry_seconds": 0.1,
        }

    def to(self, address: str) -> list[EmailMessage]:
        with self._lock:
            return [message for message in self.received if message["To"] == address]

    async def wait_for(self, address: str, count: int = 1) -> list[EmailMessage]:
        """The first `count` mails to `address`, once they have all arrived."""
        await wait_until(
            lambda: len(self.to(address)) >= count,
            within=DELIVERY_SECONDS,
            what=f"{count} mail(s) to {address} (received: {self.summary()})",
        )
        return self.to(address)[:count]

    async def latest(self, address: str, count: int) -> EmailMessage:
        return (await self.wait_for(address, count))[count - 1]

    def summary(self) -> list[str]:
        with self._lock:
            return [f"{message['To']}: {message['Subject']}" for message in self.received]


def mailbox_running(port: int | None = None) -> Iterator[Mailbox]:
    mailbox = Mailbox(port)
    mailbox.start()
    try:
        yield mailbox
    finally:
        mailbox.stop()


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None, "no text/plain part"
    return str(part.get_content())


def html_of(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None, "no text/html part"
    return str(part.get_content())


def token_in(message: EmailMessage) -> str:
    found = TOKEN.findall(text_of(message))
    assert found, f"no token in {text_of(message)!r}"
    return str(found[0])


def code_in(message: EmailMessage) -> str:
    found = CODE.findall(text_of(message))
    assert len(found) == 1, f"not exactly one code in {text_of(message)!r}"
    return str(found[0])
