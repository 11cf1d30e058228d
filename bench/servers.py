"""The processes a benchmark run starts: `userapi serve`, and the ceiling app under the
same uvicorn settings (worker count; no proxy headers, Server header or access log),
each optionally pinned to some CPUs; and what the kernel says of their CPU time and memory."""

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
REPOSITORY = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def pinned(command: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *command] if cpus and shutil.which("taskset") else command


class Server:
    """`userapi serve` (or, with `ceiling=True`, bench/ceiling.py) on a free port."""

    def __init__(
        self,
        database_url: str,
        workdir: Path,
        env: dict[str, str],
        *,
        workers: int = 1,
        cpus: str | None = None,
        ceiling: bool = False,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "SECRET_KEY": secrets.token_urlsafe(48), **env}
        if database_url:
            environment["DATABASE_URL"] = database_url
        environment.setdefault("LOG_LEVEL", "WARNING")
        name = "ceiling" if ceiling else "serve"
        port, count = str(self.port), str(workers)
        if ceiling:
            # uvicorn's options as `userapi serve` passes them (kernel.cli), but on
            # uvicorn's own httptools protocol: the edge's limits are userapi's cost.
            command = [str(BIN / "uvicorn"), "bench.ceiling:app", "--app-dir", str(REPOSITORY)]
            command += ["--port", port, "--workers", count, "--no-access-log"]
            command += ["--no-proxy-headers", "--no-server-header", "--ws", "none"]
        else:
            command = [str(BIN / "userapi"), "serve", "--port", port, "--workers", count]
        self.command = pinned(command, cpus)
        self.log_path = workdir / f"{name}-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=workdir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_bytes().decode("utf-8", "replace").rstrip()
        return "\n".join(text.splitlines()[-lines:]) or "(nothing)"

    async def wait_ready(self, path: str = "/ready") -> None:
        """Until `path` answers 200; at once if the server exits, with its log either way."""
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS), httpx.AsyncClient() as client:
                while self.process.poll() is None:
                    try:
                        if (await client.get(f"{self.base}{path}")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
            why = f"exited with status {self.process.returncode}"
        except TimeoutError:
            why = f"did not become ready within {START_TIMEOUT_SECONDS:.0f} s"
        raise RuntimeError(
            f"{' '.join(self.command)} {why}; the end of its log:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and its worker processes so far."""
        return sum(_cpu_ticks(pid) for pid in _tree(self.process.pid)) / CLOCK_TICKS


def _tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            found += _tree(int(child))
    return found


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def status_kib(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status: VmRSS now, VmHWM the peak so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0
