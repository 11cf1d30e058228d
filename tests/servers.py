"""The `userapi` command as a real process: one-off subcommands, and `userapi serve` for
tests that need what only a process has: a port, several workers on one database, signals."""

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.factories import FAST_HASHING, TEST_SECRET

USERAPI = str(Path(sys.executable).parent / "userapi")
CLI_TIMEOUT_SECONDS = 120.0
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cli_env(**values: str) -> dict[str, str]:
    """A clean environment (nothing inherited that could configure the service), fast argon2."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/"),
        "SECRET_KEY": TEST_SECRET,
    }
    env |= {name.upper(): str(value) for name, value in FAST_HASHING.items()}
    return env | values


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a test server: ours, plus the test database, key and fast hashing."""
    return dict(os.environ) | cli_env(DATABASE_URL=database_url, ENV="test", **extra)


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(*args: str, env: Mapping[str, str], cwd: Path) -> CliResult:
    """`userapi ARGS` in a subprocess, bounded by a timeout."""
    process = await asyncio.create_subprocess_exec(
        USERAPI,
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


@dataclass
class Server:
    process: asyncio.subprocess.Process
    base_url: str

    def signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    async def wait_exit(self) -> int:
        async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
            return await self.process.wait()


async def wait_healthy(base_url: str) -> None:
    async with (
        asyncio.timeout(START_TIMEOUT_SECONDS),
        httpx.AsyncClient(base_url=base_url, timeout=2) as client,
    ):
        while True:
            try:
                if (await client.get("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


@asynccontextmanager
async def running_server(
    database_url: str,
    workdir: Path,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Server]:
    """`userapi serve` on a free port; killed and reaped however the test ends."""
    port = port or free_port()
    process = await asyncio.create_subprocess_exec(
        USERAPI,
        "serve",
        "--port",
        str(port),
        cwd=workdir,
        env=server_env(database_url, **(env or {})),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    server = Server(process, f"http://127.0.0.1:{port}")
    try:
        await wait_healthy(server.base_url)
        yield server
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
