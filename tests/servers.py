"""The `userapi` command as a real process: one-off subcommands, and `userapi serve` for
tests that need what only a process has: a port, several workers on one database, signals.

Each is forked from the pytest worker's forkserver (tests/forkserver.py), which has
already imported what `userapi` imports, unless its environment needs a fresh
interpreter. A server's output goes to a log file in the test's working directory.
Start-up fails fast when the process exits before it is healthy, and every failure to
start, to stop, or of the test itself while a server runs carries the tail of that log.
"""

import asyncio
import contextlib
import os
import signal
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.factories import FAST_HASHING, GENEROUS_RATE, TEST_SECRET
from tests.forkserver import USERAPI, ForkedProcess, fork_userapi, forks, limit_open_files

CLI_TIMEOUT_SECONDS = 120.0
# Generous: a loaded CI machine runs migrations and imports slowly. A server that dies
# is noticed at once, so this bounds only a start-up that hangs.
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0
PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 40
ESTABLISHED, LISTEN = "01", "0A"  # TCP states as /proc/net/tcp writes them


class ProcessError(AssertionError):
    """A `userapi` process that did not start, stop or finish as the test needs."""


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
        "RATE_LIMIT_PER_IP": GENEROUS_RATE,
    }
    env |= {name.upper(): str(value) for name, value in FAST_HASHING.items()}
    return env | values


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a test server: ours, plus the test database, key and fast hashing."""
    return dict(os.environ) | cli_env(DATABASE_URL=database_url, ENV="test", **extra)


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join(kept) if kept else "(nothing)"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no log file)"
    return tail(text, lines)


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(*args: str, env: Mapping[str, str], cwd: Path) -> CliResult:
    """`userapi ARGS` in a subprocess, bounded by a timeout that reports what it printed."""
    return await run_program(USERAPI, *args, env=env, cwd=cwd)


async def run_program(
    program: str,
    *args: str,
    env: Mapping[str, str],
    cwd: Path,
    within: float = CLI_TIMEOUT_SECONDS,
) -> CliResult:
    """PROGRAM ARGS in a subprocess, bounded by a timeout that reports what it printed."""
    if forks(program, env):
        return await _run_forked(list(args), env=env, cwd=cwd, within=within)
    process = await asyncio.create_subprocess_exec(
        program,
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # Shielded, so that on a timeout the output read so far is still collected.
    communicating = asyncio.ensure_future(process.communicate())
    try:
        stdout, stderr = await asyncio.wait_for(asyncio.shield(communicating), within)
    except TimeoutError:
        process.kill()
        stdout, stderr = await asyncio.wait_for(communicating, STOP_TIMEOUT_SECONDS)
        raise _did_not_finish([Path(program).name, *args], within, stdout, stderr) from None
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


def _did_not_finish(
    command: Sequence[str], within: float, stdout: bytes, stderr: bytes
) -> ProcessError:
    return ProcessError(
        f"{' '.join(command)} did not finish within {within:.0f} s\n"
        f"--- stdout (last lines) ---\n{tail(stdout.decode(errors='replace'))}\n"
        f"--- stderr (last lines) ---\n{tail(stderr.decode(errors='replace'))}"
    )


async def _run_forked(
    args: list[str], *, env: Mapping[str, str], cwd: Path, within: float
) -> CliResult:
    """run_program for `userapi`, forked (tests.forkserver); its output goes to files."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        process = fork_userapi(
            args,
            env=env,
            cwd=cwd,
            stdout=stdout.fileno(),
            stderr=stderr.fileno(),
        )

        def printed() -> tuple[bytes, bytes]:
            stdout.seek(0)
            stderr.seek(0)
            return stdout.read(), stderr.read()

        try:
            returncode = await asyncio.wait_for(process.wait(), within)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
            raise _did_not_finish(["userapi", *args], within, *printed()) from None
        out, err = printed()
    return CliResult(returncode, out.decode(), err.decode())


@dataclass
class Server:
    process: asyncio.subprocess.Process | ForkedProcess
    base_url: str
    log_path: Path

    def signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    def describe(self) -> str:
        return f"userapi serve (pid {self.process.pid}, {self.base_url})"

    def log(self) -> bytes:
        """Everything the server has written so far."""
        return self.log_path.read_bytes()

    def log_report(self) -> str:
        heading = f"--- {self.describe()}: last lines of {self.log_path} ---"
        return f"{heading}\n{log_tail(self.log_path)}"

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def has_read_everything_sent(self) -> bool:
        """Whether every byte sent to this server has reached it and been read by it:
        each connection accepted, and no request still waiting in a socket.

        Read from the kernel's TCP table (Linux /proc/net/tcp): on the server's side of
        each connection the receive queue is empty, and on the client's side every byte
        sent is acknowledged. Where there is no such table this says True.
        """
        table = Path("/proc/net/tcp")
        if not table.exists():
            return True
        for line in table.read_text().splitlines()[1:]:
            _, local, remote, state, queues, *_ = line.split()
            unsent, unread = (int(count, 16) for count in queues.split(":"))
            local_port, remote_port = (int(end.rsplit(":", 1)[1], 16) for end in (local, remote))
            # A listening socket's "unread" counts the connections not yet accepted.
            if local_port == self.port and state in {LISTEN, ESTABLISHED} and unread:
                return False
            if remote_port == self.port and state == ESTABLISHED and unsent:
                return False
        return True

    async def wait_exit(self) -> int:
        try:
            async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                return await self.process.wait()
        except TimeoutError:
            raise ProcessError(
                f"{self.describe()} did not exit within {STOP_TIMEOUT_SECONDS:.0f} s\n"
                + self.log_report()
            ) from None


class _PortTaken(ProcessError):
    """The server could not bind its port: something else took it after we chose it."""


def _logs_request(log_path: Path, request_id: str) -> bool:
    try:
        return f"request_id={request_id}".encode() in log_path.read_bytes()
    except FileNotFoundError:
        return False


async def _wait_healthy(server: Server, *, logs_requests: bool) -> None:
    """Until /health answers 200 from this very process (not whoever else has the port).

    The probe sends its own X-Request-ID; the access log line that names it in this
    server's log shows the answer came from this process.
    """
    probe_id = f"start-probe-{uuid.uuid4().hex}"
    try:
        async with (
            asyncio.timeout(START_TIMEOUT_SECONDS),
            httpx.AsyncClient(
                base_url=server.base_url, timeout=2, headers={"X-Request-ID": probe_id}
            ) as client,
        ):
            while server.process.returncode is None:
                try:
                    healthy = (await client.get("/health")).status_code == 200
                except httpx.TransportError:
                    healthy = False
                if healthy and (not logs_requests or _logs_request(server.log_path, probe_id)):
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise ProcessError(
            f"{server.describe()} did not answer /health within "
            f"{START_TIMEOUT_SECONDS:.0f} s\n" + server.log_report()
        ) from None
    code = await server.process.wait()
    port_taken = b"address already in use" in server.log_path.read_bytes()
    raise (_PortTaken if port_taken else ProcessError)(
        f"{server.describe()} exited with status {code} before it was healthy\n"
        + server.log_report()
    )


def _new_log(workdir: Path) -> Path:
    """A log file of its own for each server process: `userapi-serve-N.log`."""
    for number in range(1, 1000):
        path = workdir / f"userapi-serve-{number}.log"
        try:
            path.touch(exist_ok=False)
        except FileExistsError:
            continue
        return path
    raise ProcessError(f"no free userapi-serve-N.log name left in {workdir}")


async def _spawn(
    workdir: Path,
    env: Mapping[str, str],
    port: int,
    args: Sequence[str] = (),
    open_files: int | None = None,
    host_from_env: str | None = None,
) -> Server:
    log_path = _new_log(workdir)
    if host_from_env:  # where to listen, told as a platform tells it: HOST and PORT
        options, env = [], dict(env) | {"HOST": host_from_env, "PORT": str(port)}
    else:
        options = ["--port", str(port)]
    process: asyncio.subprocess.Process | ForkedProcess
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        if forks(USERAPI, env):
            process = fork_userapi(
                ["serve", *options, *args],
                env=env,
                cwd=workdir,
                stdout=log.fileno(),
                stderr=log.fileno(),
                new_session=True,
                open_files=open_files,
            )
        else:
            process = await asyncio.create_subprocess_exec(
                USERAPI,
                "serve",
                *options,
                *args,
                cwd=workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a process group of its own, workers too (_stop)
                preexec_fn=(lambda: limit_open_files(open_files)) if open_files else None,
            )
    return Server(process, f"http://{host_from_env or '127.0.0.1'}:{port}", log_path)


async def _stop(server: Server) -> None:
    """Kill the server and every process it started (`--workers N` has N children, which
    a kill of the parent alone would leave serving the port)."""
    with contextlib.suppress(ProcessLookupError):  # the whole group has exited already
        os.killpg(server.process.pid, signal.SIGKILL)
    await server.process.wait()


@asynccontextmanager
async def serving_process(
    workdir: Path,
    env: Mapping[str, str],
    *,
    port: int | None = None,
    args: Sequence[str] = (),
    open_files: int | None = None,
    host_from_env: str | None = None,
) -> AsyncIterator[Server]:
    """`userapi serve [ARGS]` with exactly this environment, healthy; killed and reaped
    however the test ends. Its output is in `server.log_path`, and in the report of any
    failure. `open_files`: the process's `ulimit -n`, for tests of running out of
    descriptors. With `host_from_env`, it is told where to listen by HOST and PORT, not
    by --port."""
    logs_requests = env.get("LOG_LEVEL", "INFO").upper() in {"INFO", "DEBUG"}
    for attempt in range(1, PORT_ATTEMPTS + 1):
        server = await _spawn(
            workdir, env, port or free_port(), args, open_files, host_from_env=host_from_env
        )
        try:
            await _wait_healthy(server, logs_requests=logs_requests)
            break
        except _PortTaken:
            await _stop(server)
            if port or attempt == PORT_ATTEMPTS:
                raise
        except BaseException:
            await _stop(server)
            raise
    try:
        yield server
    except Exception as error:
        error.add_note(server.log_report())
        raise
    finally:
        await _stop(server)


@asynccontextmanager
async def running_server(
    database_url: str,
    workdir: Path,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    open_files: int | None = None,
) -> AsyncIterator[Server]:
    """`userapi serve [ARGS]` on the test database (see server_env), on a free port."""
    async with serving_process(
        workdir,
        server_env(database_url, **(env or {})),
        port=port,
        args=args,
        open_files=open_files,
    ) as server:
        yield server


@asynccontextmanager
async def running_servers(
    count: int,
    database_url: str,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[list[Server]]:
    """`count` servers as running_server makes them, on one database, started together
    (as replicas of one deployment start): each pays its start-up at the same time, not
    one after another. If one fails to start, the others are stopped as well."""
    async with AsyncExitStack() as stack:

        async def start() -> Server:
            return await stack.enter_async_context(running_server(database_url, workdir, env=env))

        # A TaskGroup cancels (and so stops) the servers still starting when one fails.
        try:
            async with asyncio.TaskGroup() as group:
                starting = [group.create_task(start()) for _ in range(count)]
        except ExceptionGroup as failed:
            if len(failed.exceptions) == 1:  # the report of the one that failed, unwrapped
                raise failed.exceptions[0] from None
            raise
        yield [task.result() for task in starting]
