"""The outbox as a client and an operator see it: mails leave over real SMTP (tests/mail.py),
by the in-process sender or `userapi send-mail`, and `userapi outbox` shows what is stuck.

A mail exists exactly when the change that caused it commits; it survives a mail server
that is down, is retried after a transient refusal, fails visibly after a permanent one,
and is delivered once even when two senders share the database.
"""

import asyncio
import email
import email.policy
import re
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import update
from sqlmodel import col

from kernel.db import Database, utc_now
from kernel.mail import OutboxMail
from kernel.settings import Settings
from tests.conftest import make_settings
from tests.factories import assert_problem, login, register, serving
from tests.forkserver import USERAPI
from tests.kernel.helpers import slice_folder, unique_name
from tests.mail import Mailbox, code_in, text_of, token_in
from tests.servers import (
    START_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    CliResult,
    log_tail,
    run_cli,
    server_env,
)
from tests.waiting import poll, wait_until

VERIFICATION_SUBJECT = "Confirm your email address"
OUTBOX_SECONDS = 30.0  # bounds waiting for the outbox to reach a state (each look: a process)
RETRY_AFTER_OUTAGE_SECONDS = 60.0


def new_email(prefix: str = "mail") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


def mail_env(mailbox: Mailbox, **extra: str) -> dict[str, str]:
    """The environment variables that point a `userapi` process at this SMTP server."""
    return {name.upper(): str(value) for name, value in mailbox.settings.items()} | extra


async def userapi(
    database_url: str, workdir: Path, *args: str, env: Mapping[str, str] | None = None
) -> CliResult:
    """`userapi ARGS` on the test database; it must succeed."""
    result = await run_cli(*args, env=server_env(database_url, **(env or {})), cwd=workdir)
    assert result.returncode == 0, f"userapi {' '.join(args)}: {result.stderr}"
    return result


def outbox_lines(result: CliResult, address: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if f"to {address} " in line]


async def outbox_until(
    database_url: str,
    workdir: Path,
    what: str,
    until: Callable[[CliResult], bool],
    env: Mapping[str, str] | None = None,
) -> CliResult:
    """`userapi outbox`, run again until its output satisfies `until`."""
    results = await poll(
        lambda: userapi(database_url, workdir, "outbox", env=env),
        until=until,
        within=OUTBOX_SECONDS,
        what=what,
        interval=0.1,
    )
    return results[-1]


def nothing_pending(result: CliResult) -> bool:
    return "0 pending, 0 failed" in result.stdout


# --- 1. a rolled-back change sends nothing ------------------------------------------------

ROLLBACK_SLICE = '''
"""Probe for tests/kernel/test_mail_delivery.py: queues a mail, then refuses the request."""

from fastapi import APIRouter, Response

from kernel.db import SessionDep
from kernel.errors import ProblemError
from kernel.mail import KERNEL_TEMPLATES, queue_mail

router = APIRouter()


class ProbeRefused(ProblemError):
    status, code, detail = 409, "probe_refused", "The probe queued a mail, then refused."


@router.post("/{path}", status_code=204, response_class=Response)
async def probe(session: SessionDep, to: str) -> Response:
    queue_mail(
        session,
        to=to,
        templates=KERNEL_TEMPLATES,
        kind="password_changed",
        context={{"first_name": "Probe"}},
    )
    await session.flush()  # the row is written: only the rollback can undo it
    raise ProbeRefused()
'''


async def test_a_rolled_back_change_sends_no_mail(
    database_url: str, tmp_path: Path, more_features: Path, mailbox: Mailbox
) -> None:
    name = unique_name("kernel_mail_probe")
    path = f"/api/v1/{name.replace('_', '-')}"
    settings = make_settings(database_url, tmp_path, **mailbox.settings)
    rolled_back, committed = new_email("rolled-back"), new_email("committed")
    with slice_folder(more_features, name, ROLLBACK_SLICE.format(path=name.replace("_", "-"))):
        async with serving(settings) as (_, client):
            refused = await client.post(path, params={"to": rolled_back})
            assert_problem(refused, 409, "probe_refused")

            await register(client, email=committed)  # queued after the refused one

            # Mails leave in the order they were queued: had the refused request's mail
            # been kept, it would have arrived before this one.
            [mail] = await mailbox.wait_for(committed)
            assert mail["Subject"] == VERIFICATION_SUBJECT
            assert mailbox.to(rolled_back) == []
            assert mailbox.summary() == [f"{committed}: {VERIFICATION_SUBJECT}"]
    outbox = await userapi(database_url, tmp_path, "outbox")
    assert rolled_back not in outbox.stdout


# --- 2. the SMTP server is down -------------------------------------------------------------


async def test_a_mail_waits_for_a_mail_server_that_is_down(
    database_url: str, tmp_path: Path
) -> None:
    mailbox = Mailbox()  # its port is chosen, nothing listens on it yet
    # Many attempts, so that the mail is still pending however long the server stays down.
    settings = make_settings(database_url, tmp_path, **mailbox.settings, mail_max_attempts=100)
    address = new_email("down")
    try:
        async with serving(settings) as (_, client):
            response = await client.post(
                "/api/v1/auth/register",
                json={
                    "email": address,
                    "password": "correct horse battery staple",
                    "first_name": "Ada",
                    "last_name": "Lovelace",
                },
            )
            assert response.status_code == 201, response.text  # the change commits anyway

            outbox = await outbox_until(
                database_url,
                tmp_path,
                f"a pending mail to {address} with the error of an attempt",
                lambda result: any("last error" in line for line in outbox_lines(result, address)),
            )
            [line] = outbox_lines(outbox, address)
            assert " pending " in line
            assert "email_verification" in line
            assert f"port {mailbox.port}" in line  # the error says where it could not connect
            assert "1 pending, 0 failed" in outbox.stdout

            mailbox.start()
            # The next try comes after a backoff that has grown while the server was down
            # (about as long again as it was down): longer than a mail normally takes.
            await wait_until(
                lambda: len(mailbox.to(address)) >= 1,
                within=RETRY_AFTER_OUTAGE_SECONDS,
                what=f"the mail to {address} delivered once the server is up",
            )
            [mail] = mailbox.to(address)

            assert mail["Subject"] == VERIFICATION_SUBJECT
            await outbox_until(database_url, tmp_path, "nothing left pending", nothing_pending)
            assert len(mailbox.to(address)) == 1
    finally:
        mailbox.stop()


# --- 3. two senders on one database -------------------------------------------------------


STARTED_LINE = "INFO userapi.mail mail sender started: "


@dataclass
class SendMailProcess:
    process: asyncio.subprocess.Process
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def report(self) -> str:
        return f"--- userapi send-mail (pid {self.process.pid}) ---\n{log_tail(self.log_path)}"

    async def stop(self) -> int:
        """SIGTERM once it has started, as an orchestrator stops it; its exit status.

        A worker whose partner delivered everything may still be starting up; stopped
        then, it would die of the signal, having done nothing."""
        await wait_until(
            lambda: self.process.returncode is not None or STARTED_LINE in self.log(),
            within=START_TIMEOUT_SECONDS,
            what=f"send-mail started\n{self.report()}",
        )
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                return await self.process.wait()
        except TimeoutError:
            raise AssertionError(f"send-mail ignored SIGTERM\n{self.report()}") from None


@asynccontextmanager
async def sending_mail(
    workdir: Path, env: Mapping[str, str], count: int
) -> AsyncIterator[list[SendMailProcess]]:
    """`count` `userapi send-mail` processes, killed and reaped however the test ends."""
    senders: list[SendMailProcess] = []
    try:
        for number in range(1, count + 1):
            log_path = workdir / f"send-mail-{number}.log"
            with log_path.open("wb") as log:
                process = await asyncio.create_subprocess_exec(
                    USERAPI,
                    "send-mail",
                    cwd=workdir,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                )
            senders.append(SendMailProcess(process, log_path))
        yield senders
    except Exception as error:
        for sender in senders:
            error.add_note(sender.report())
        raise
    finally:
        for sender in senders:
            if sender.process.returncode is None:
                sender.process.kill()
            await sender.process.wait()


MAILS = 30
SENT_LINE = re.compile(r"INFO userapi\.mail mail ([0-9a-f-]{36}) \(\w+\) sent to ")


def sent_in_log(log: str) -> list[str]:
    """The Message-IDs of the mails a `userapi send-mail` log says it sent."""
    return [f"<{uuid.UUID(found).hex}@userapi>" for found in SENT_LINE.findall(log)]


async def test_two_send_mail_processes_deliver_each_mail_exactly_once(
    database_url: str, tmp_path: Path, mailbox: Mailbox
) -> None:
    settings = make_settings(database_url, tmp_path, mail_sender_enabled=False)
    addresses = [new_email(f"pair-{number}") for number in range(MAILS)]
    async with serving(settings) as (_, client):
        for address in addresses:
            await register(client, email=address)
    queued = await userapi(database_url, tmp_path, "outbox")
    assert f"{MAILS} pending, 0 failed" in queued.stdout
    assert mailbox.received == []  # nothing sends until the workers start

    env = server_env(database_url, **mail_env(mailbox))
    async with sending_mail(tmp_path, env, 2) as senders:
        await wait_until(
            lambda: len(mailbox.received) >= MAILS,
            within=60,
            what=f"{MAILS} mails delivered (received {len(mailbox.received)})",
        )
        await outbox_until(database_url, tmp_path, "nothing left pending", nothing_pending)
        statuses = [await sender.stop() for sender in senders]
        reports = "\n".join(sender.report() for sender in senders)

    assert statuses == [0, 0], reports
    message_ids = [str(message["Message-ID"]) for message in mailbox.received]
    assert len(message_ids) == MAILS, reports
    assert len(set(message_ids)) == MAILS, f"a mail was delivered twice\n{reports}"
    assert sorted(str(message["To"]) for message in mailbox.received) == sorted(addresses)
    # What the operator reads: each mail logged as sent once, by one of the two workers.
    logged = [sent_in_log(sender.log()) for sender in senders]
    split = f"sent by each worker: {[len(each) for each in logged]}"
    every_logged = [mail_id for each in logged for mail_id in each]
    assert sorted(every_logged) == sorted(message_ids), f"{split}\n{reports}"


# --- 4. and 5. refusals ---------------------------------------------------------------------


async def test_a_permanent_refusal_fails_visibly_after_the_configured_attempts(
    database_url: str, tmp_path: Path, mailbox: Mailbox
) -> None:
    refusal = "550 5.1.1 no such user"
    mailbox.refuse_always = refusal
    settings = make_settings(
        database_url, tmp_path, **mailbox.settings, mail_permanent_failure_attempts=2
    )
    refused, later = new_email("refused"), new_email("later")
    async with serving(settings) as (_, client):
        await register(client, email=refused)

        outbox = await outbox_until(
            database_url,
            tmp_path,
            f"the mail to {refused} failed",
            lambda result: any(" failed " in line for line in outbox_lines(result, refused)),
        )
        [line] = outbox_lines(outbox, refused)
        assert f"last error: {refusal}" in line
        assert "attempts 2" in line
        assert "next try" not in line  # a failed mail is never tried again
        assert "0 pending, 1 failed" in outbox.stdout
        assert mailbox.refusals == [refusal, refusal]

        # The sender goes on working: a later mail is delivered, and the failed one is not
        # tried again (it would be delivered now that the server accepts mail).
        mailbox.refuse_always = None
        await register(client, email=later)
        await mailbox.wait_for(later)
        await outbox_until(
            database_url,
            tmp_path,
            "only the failed mail left",
            lambda result: "0 pending, 1 failed" in result.stdout,
        )

    assert mailbox.refusals == [refusal, refusal]
    assert mailbox.to(refused) == []


async def test_a_transient_refusal_is_retried_then_delivered(
    database_url: str, tmp_path: Path, mailbox: Mailbox
) -> None:
    refusal = "451 4.3.0 try later"
    mailbox.refuse_next = [refusal, refusal]
    settings = make_settings(database_url, tmp_path, **mailbox.settings)
    address = new_email("retried")
    async with serving(settings) as (_, client):
        account = await login(client, await register(client, email=address))

        [mail] = await mailbox.wait_for(address)

        assert mailbox.refusals == [refusal, refusal]
        await outbox_until(database_url, tmp_path, "nothing left pending", nothing_pending)
        # The retried mail is the real thing: its token verifies the address.
        verified = await client.post("/api/v1/auth/verify-email", json={"token": token_in(mail)})
        assert verified.status_code == 204, verified.text
        me = await client.get("/api/v1/users/me", headers=account.headers)
        assert me.json()["email_verified"] is True
    assert len(mailbox.to(address)) == 1


# --- 6. the development backend -------------------------------------------------------------


def eml_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.eml")) if folder.is_dir() else []


async def test_without_smtp_host_mails_are_written_to_files_that_work(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path)  # no SMTP_HOST: the development default
    assert settings.resolved_mail_backend == "log"
    folder = tmp_path / "mail"
    async with serving(settings) as (_, client):
        account = await login(client, await register(client))
        await wait_until(
            lambda: len(eml_files(folder)) == 1, within=20, what=f"a .eml file in {folder}"
        )
        [path] = eml_files(folder)
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        assert message["To"] == account.email
        assert message["Subject"] == VERIFICATION_SUBJECT
        assert path.stem in str(message["Message-ID"])

        verified = await client.post("/api/v1/auth/verify-email", json={"token": token_in(message)})

        assert verified.status_code == 204, verified.text
        me = await client.get("/api/v1/users/me", headers=account.headers)
        assert me.status_code == 200, me.text
        assert me.json()["email_verified"] is True


# --- 7. `userapi outbox` keeps secrets --------------------------------------------------------


async def test_the_outbox_listing_never_shows_a_mails_secrets(
    database_url: str, tmp_path: Path, mailbox: Mailbox
) -> None:
    settings = make_settings(database_url, tmp_path, mail_sender_enabled=False)
    address = new_email("secret")
    async with serving(settings) as (_, client):
        await register(client, email=address)
    listing = await userapi(database_url, tmp_path, "outbox")
    [line] = outbox_lines(listing, address)
    assert " pending " in line
    assert "email_verification" in line
    assert "1 pending, 0 failed" in listing.stdout

    sent = await userapi(database_url, tmp_path, "send-mail", "--once", env=mail_env(mailbox))

    assert "1 mails attempted" in sent.stdout
    [mail] = await mailbox.wait_for(address)
    token, code = token_in(mail), code_in(mail)
    for secret in (token, code, str(mail["Subject"])):
        assert secret not in listing.stdout
        assert secret not in listing.stderr
    assert token not in sent.stdout + sent.stderr
    assert code in text_of(mail)  # the control: the secrets were in the mail itself
    after = await userapi(database_url, tmp_path, "outbox")
    assert nothing_pending(after)


# --- 8. `userapi purge-expired` -------------------------------------------------------------

PURGE_COUNTERS = (
    "expired sessions",
    "expired password attempt counters",
    "expired mailed tokens and codes",
    "expired mail send counters",
    "expired sent or failed mails",
)


async def _age_sent_mail(settings: Settings, address: str, days: int) -> None:
    """As if the mail had been sent `days` ago (the kernel's own table, as purge reads it)."""
    database = Database(settings)
    try:
        async with database.session() as session:
            await session.execute(
                update(OutboxMail)
                .where(col(OutboxMail.to_address) == address)
                .values(sent_at=utc_now() - timedelta(days=days))
            )
    finally:
        await database.dispose()


async def test_purge_expired_reports_and_deletes_old_mails(
    database_url: str, tmp_path: Path, mailbox: Mailbox
) -> None:
    settings = make_settings(database_url, tmp_path, **mailbox.settings)
    old, recent = new_email("old"), new_email("recent")
    async with serving(settings) as (_, client):
        await register(client, email=old)
        await register(client, email=recent)
        await mailbox.wait_for(old)
        await mailbox.wait_for(recent)
    await outbox_until(database_url, tmp_path, "nothing left pending", nothing_pending)
    await _age_sent_mail(settings, old, days=8)  # past the week a sent mail is kept

    first = await userapi(database_url, tmp_path, "purge-expired")
    second = await userapi(database_url, tmp_path, "purge-expired")

    for counter in PURGE_COUNTERS:
        assert counter in first.stdout, first.stdout
        assert f"0 {counter} deleted" in second.stdout, second.stdout
    assert "1 expired sent or failed mails deleted" in first.stdout
