"""Real `userapi serve` processes for tests that need what only a process has: a port,
several workers on one database, signals."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.factories import FAST_HASHING, TEST_SECRET

USERAPI = str(Path(sys.executable).parent / "userapi")
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a test server: the test database, the test key, fast hashing."""
    env = {**os.environ, "DATABASE_URL": database_url, "SECRET_KEY": TEST_SECRET, "ENV": "test"}
    env |= {name.upper(): str(value) for name, value in FAST_HASHING.items()}
    return env | extra


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


def run_cli(database_url: str, workdir: Path, *args: str, **env: str) -> str:
    """Run a `userapi` subcommand to completion; its stdout, or an error with its stderr."""
    done = subprocess.run(
        [USERAPI, *args],
        cwd=workdir,
        env=server_env(database_url, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"userapi {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout
