"""The edge (kernel.edge) against a real `userapi serve`, over real sockets: the attacks of
issue 12 (connections that never finish a request, huge request heads), each answered in
bounded time, with the timeouts made short through the settings.

The server's database plays no part before a request reaches the app: these run on SQLite.
"""

import asyncio
import contextlib
import json
import select
import shutil
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kernel.edge import MAX_HEAD_BYTES
from tests.factories import registration
from tests.servers import Server, running_server
from tests.waiting import wait_until

# Bounds on how long a test waits for what must happen; never how long it should take.
ANSWER_WITHIN = 15.0
SHORT = "1"  # seconds: the timeout under test
LONG = "300"  # seconds: a timeout that must not be the one acting
TRICKLE_PAUSE = 0.2  # the attacker's pace: one byte per pause
HEALTH = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"
# The attack: far more connections than the server may open files (its `ulimit -n`).
OPEN_FILES = 256
HELD_CONNECTIONS = 300


@pytest.fixture
def sqlite_url(sqlite_template: Path, sqlite_folder: Path) -> str:
    copy = sqlite_folder / "userapi.db"
    shutil.copyfile(sqlite_template, copy)
    return f"sqlite+aiosqlite:///{copy}"


@contextlib.asynccontextmanager
async def serving(
    sqlite_url: str,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    open_files: int | None = None,
) -> AsyncIterator[Server]:
    async with running_server(sqlite_url, tmp_path, env=env, open_files=open_files) as server:
        yield server


class Connection:
    """One raw client connection: what it sends, and everything the server answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: Server) -> "Connection":
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_closed(self, within: float = ANSWER_WITHIN) -> bytes:
        """Everything the server sends until it closes; fails if it keeps the connection."""
        received = b""
        try:
            async with asyncio.timeout(within):
                while chunk := await self.reader.read(65536):
                    received += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed all the same
        except TimeoutError:
            raise AssertionError(
                f"the server kept the connection open for {within} s (received {received!r})"
            ) from None
        return received

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """One response on a connection that stays open (it must carry Content-Length)."""
        async with asyncio.timeout(ANSWER_WITHIN):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status, headers = parse_head(head)
            body = await self.reader.readexactly(int(headers["content-length"]))
        return status, headers, body

    def close(self) -> None:
        self.writer.close()


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").strip().split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def assert_edge_problem(raw: bytes, status: int, code: str) -> dict[str, str]:
    """A whole problem+json answer from the server itself, closing the connection."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, f"no complete response: {raw!r}"
    answered, headers = parse_head(head)
    assert answered == status, raw
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert headers["x-request-id"]
    assert "server" not in headers
    problem = json.loads(body)
    assert (problem["status"], problem["code"]) == (status, code)
    return headers


async def trickle(connection: Connection, data: bytes) -> int:
    """Send `data` one byte at a time, as slowly as an attacker would; the bytes sent
    before the server closed the connection."""
    for sent, byte in enumerate(data):
        try:
            await connection.send(bytes([byte]))
        except (ConnectionResetError, BrokenPipeError):
            return sent
        await asyncio.sleep(TRICKLE_PAUSE)
    return len(data)


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    sqlite_url: str, tmp_path: Path
) -> None:
    env = {"HEADER_TIMEOUT_SECONDS": SHORT, "KEEP_ALIVE_TIMEOUT_SECONDS": LONG}
    async with serving(sqlite_url, tmp_path, env) as server:
        silent = await Connection.open(server)
        # Nothing was asked, so nothing is answered: the connection is just closed.
        assert await silent.until_closed() == b""


async def test_a_head_trickled_byte_by_byte_is_answered_408_and_closed(
    sqlite_url: str, tmp_path: Path
) -> None:
    env = {"HEADER_TIMEOUT_SECONDS": SHORT, "KEEP_ALIVE_TIMEOUT_SECONDS": LONG}
    async with serving(sqlite_url, tmp_path, env) as server:
        slow = await Connection.open(server)
        head = b"GET /health HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 1000 + b"\r\n\r\n"
        sending = asyncio.create_task(trickle(slow, head))
        assert_edge_problem(await slow.until_closed(), 408, "request_timeout")
        # Every byte kept the connection busy, and it was closed all the same, long before
        # the head could be complete.
        assert await sending < len(head)


async def test_the_header_timeout_also_bounds_the_next_request_on_a_kept_alive_connection(
    sqlite_url: str, tmp_path: Path
) -> None:
    env = {"HEADER_TIMEOUT_SECONDS": SHORT, "KEEP_ALIVE_TIMEOUT_SECONDS": LONG}
    async with serving(sqlite_url, tmp_path, env) as server:
        connection = await Connection.open(server)
        await connection.send(HEALTH)
        status, headers, _ = await connection.response()
        assert status == 200
        assert "server" not in headers
        await connection.send(b"GET /health HTTP/1.1\r\nHost: te")  # and no more
        assert_edge_problem(await connection.until_closed(), 408, "request_timeout")


async def test_an_idle_kept_alive_connection_is_closed(sqlite_url: str, tmp_path: Path) -> None:
    env = {"HEADER_TIMEOUT_SECONDS": LONG, "KEEP_ALIVE_TIMEOUT_SECONDS": SHORT}
    async with serving(sqlite_url, tmp_path, env) as server:
        connection = await Connection.open(server)
        await connection.send(HEALTH)
        assert (await connection.response())[0] == 200
        assert await connection.until_closed() == b""


async def test_a_trickled_body_is_answered_408_and_closed(sqlite_url: str, tmp_path: Path) -> None:
    env = {"HEADER_TIMEOUT_SECONDS": LONG, "BODY_TIMEOUT_SECONDS": SHORT}
    async with serving(sqlite_url, tmp_path, env) as server:
        slow = await Connection.open(server)
        body = json.dumps({"email": "ada@example.com", "password": "x" * 200}).encode()
        await slow.send(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        sending = asyncio.create_task(trickle(slow, body))
        assert_edge_problem(await slow.until_closed(), 408, "request_timeout")
        assert await sending < len(body)


async def test_a_refused_pipelined_request_waits_for_the_answer_before_it(
    sqlite_url: str, tmp_path: Path
) -> None:
    # The parser reads ahead of a request still being answered: what it finds wrong with
    # the next one must not take the first one's place on the wire.
    env = {"HEADER_TIMEOUT_SECONDS": LONG, "BODY_TIMEOUT_SECONDS": SHORT}
    body = json.dumps(registration()).encode()
    first = (
        b"POST /api/v1/auth/register HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    second_never_finished = (
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    database = sqlite3.connect(sqlite_url.split(":///", 1)[1], isolation_level=None)
    async with serving(sqlite_url, tmp_path, env) as server:
        connection = await Connection.open(server)
        database.execute("BEGIN IMMEDIATE")  # the registration waits for this write lock
        await connection.send(first + second_never_finished)
        # Long enough for the second request's body timeout to pass while the first waits.
        await asyncio.sleep(3 * float(SHORT))
        database.execute("ROLLBACK")

        status, _, answer = await connection.response()
        assert status == 201, answer
        assert_edge_problem(await connection.until_closed(), 408, "request_timeout")
    database.close()


def head_of(size: int) -> bytes:
    """A complete GET /health head (request line and header fields) of exactly `size` bytes."""
    start, end = b"GET /health HTTP/1.1\r\nHost: test\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


async def test_a_head_over_16_kib_is_refused_431_before_it_is_complete(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with serving(sqlite_url, tmp_path, {"HEADER_TIMEOUT_SECONDS": LONG}) as server:
        at_the_limit = await Connection.open(server)
        await at_the_limit.send(head_of(MAX_HEAD_BYTES))
        assert (await at_the_limit.response())[0] == 200

        arriving_whole = await Connection.open(server)
        await arriving_whole.send(head_of(MAX_HEAD_BYTES + 1))
        assert_edge_problem(await arriving_whole.until_closed(), 431, "headers_too_large")

        # 17 KiB of a header, never finished: the answer cannot wait for the end of it.
        unfinished = await Connection.open(server)
        await unfinished.send(head_of(17 * 1024).removesuffix(b"\r\n\r\n"))
        assert_edge_problem(await unfinished.until_closed(), 431, "headers_too_large")


def send_until_answered(port: int, start: bytes, chunk: bytes, total: int) -> tuple[int, bytes]:
    """Send `start`, then `chunk` after `chunk` until `total` bytes are sent or the server
    answers; the bytes sent, and all that the server sent until it closed.

    A plain blocking socket, in a thread: before each chunk it asks whether an answer came,
    and what the server sent stays readable even after the server resets the connection.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN) as attack:
        attack.sendall(start)
        sent = 0
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            while sent < total and not select.select([attack], [], [], 0)[0]:
                attack.sendall(chunk)
                sent += len(chunk)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while data := attack.recv(65536):
                received += data
        return sent, received


async def test_an_8_mib_header_is_refused_while_the_client_is_still_sending_it(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with serving(sqlite_url, tmp_path, {"HEADER_TIMEOUT_SECONDS": LONG}) as server:
        start, total = b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: ", 8 << 20
        sent, answer = await asyncio.to_thread(
            send_until_answered, server.port, start, b"a" * 65536, total
        )
        assert_edge_problem(answer, 431, "headers_too_large")
        assert sent < total, "the server answered only once the whole header was sent"
        async with httpx.AsyncClient(base_url=server.base_url, timeout=ANSWER_WITHIN) as client:
            assert (await client.get("/health")).status_code == 200


async def test_a_malformed_request_gets_a_problem_json_400(sqlite_url: str, tmp_path: Path) -> None:
    async with serving(sqlite_url, tmp_path) as server:
        connection = await Connection.open(server)
        await connection.send(b"GET /health HTTP/1.1\r\nHost test\r\n\r\n")
        assert_edge_problem(await connection.until_closed(), 400, "bad_request")


async def test_health_answers_while_more_connections_are_held_than_the_server_has_files(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The issue's attack, scaled down: connections that never send a request, more than
    the server process may open files. The oldest of them make room for new ones."""
    env = {"HEADER_TIMEOUT_SECONDS": LONG, "KEEP_ALIVE_TIMEOUT_SECONDS": LONG}
    async with serving(sqlite_url, tmp_path, env, open_files=OPEN_FILES) as server:
        held = [await Connection.open(server) for _ in range(HELD_CONNECTIONS)]
        closed = [asyncio.create_task(connection.until_closed(within=60)) for connection in held]
        try:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=ANSWER_WITHIN) as client:
                assert (await client.get("/health")).status_code == 200
            # Within the cap (half the open files by default) the rest stay open.
            cap = OPEN_FILES // 2
            await wait_until(
                lambda: sum(task.done() for task in closed) >= HELD_CONNECTIONS - cap,
                within=ANSWER_WITHIN,
                what=f"the server closing all but {cap} of the held connections",
            )
        finally:
            for task in closed:
                task.cancel()
            for connection in held:
                connection.close()


async def test_past_the_cap_with_every_connection_busy_new_ones_get_503(
    sqlite_url: str, tmp_path: Path
) -> None:
    env = {"MAX_CONNECTIONS": "20", "BODY_TIMEOUT_SECONDS": LONG}
    async with serving(sqlite_url, tmp_path, env) as server:
        # Requests whose bodies are on their way: nothing to close to make room.
        busy = [await Connection.open(server) for _ in range(20)]
        for connection in busy:
            await connection.send(
                b"POST /api/v1/auth/login HTTP/1.1\r\nHost: test\r\n"
                b"Content-Type: application/json\r\nContent-Length: 10\r\n\r\n{"
            )
        await wait_until(
            server.has_read_everything_sent,
            within=ANSWER_WITHIN,
            what="the server reading every request head",
        )
        refused = await Connection.open(server)
        headers = assert_edge_problem(await refused.until_closed(), 503, "server_busy")
        assert headers["retry-after"] == "1"

        for connection in busy:
            connection.close()
        async with httpx.AsyncClient(base_url=server.base_url, timeout=ANSWER_WITHIN) as client:

            async def healthy() -> bool:
                try:
                    return (await client.get("/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(healthy, within=ANSWER_WITHIN, what="/health once the load is gone")


async def test_at_the_cap_connections_that_never_sent_a_request_are_closed_first(
    sqlite_url: str, tmp_path: Path
) -> None:
    cap, silent_count = 10, 30
    env = {
        "MAX_CONNECTIONS": str(cap),
        "HEADER_TIMEOUT_SECONDS": LONG,
        "KEEP_ALIVE_TIMEOUT_SECONDS": LONG,
    }
    async with serving(sqlite_url, tmp_path, env) as server:
        kept_alive = await Connection.open(server)
        await kept_alive.send(HEALTH)
        assert (await kept_alive.response())[0] == 200
        silent = [await Connection.open(server) for _ in range(silent_count)]
        closed = [asyncio.create_task(connection.until_closed(within=60)) for connection in silent]
        try:
            await wait_until(
                lambda: sum(task.done() for task in closed) >= silent_count - (cap - 1),
                within=ANSWER_WITHIN,
                what="the server closing the silent connections past the cap",
            )
            # The oldest connection of all, but it has been serving requests: it stays.
            await kept_alive.send(HEALTH)
            assert (await kept_alive.response())[0] == 200
        finally:
            for task in closed:
                task.cancel()
            for connection in silent:
                connection.close()
