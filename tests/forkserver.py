"""`userapi` processes forked from one that has already imported the service.

A `userapi` process spends most of its CPU importing (the framework, the ORM, Alembic,
the slices): about 0.8 s of each, and the suite starts some two hundred. Each pytest
worker therefore starts one forkserver, which imports what `userapi` imports, once, and
then forks a child per command. The child is a real process with its own pid, session,
descriptors, working directory and environment, and runs the console script's own
`sys.exit(main())`; only the imports are inherited instead of repeated.

What a fork cannot give is a fresh interpreter: what is decided as an interpreter starts
comes from the forkserver (the `-X` options, the PYTHON* variables, the hash seed, the
code itself), and so does what a preloaded module read as it was imported. The child
opens stdout and stderr as a new interpreter would with its environment
(PYTHONUNBUFFERED, PYTHONDONTWRITEBYTECODE); a command whose environment differs from
the forkserver's in any other PYTHON* variable, or in PROMETHEUS_MULTIPROC_DIR or TZ
(a test running a copy of the repository sets PYTHONPATH), runs as a fresh `userapi`
process, as do the README's walkthrough and the commands run through another program.
Both kinds write UTF-8, whatever the locale.

The protocol, over a SOCK_SEQPACKET Unix socket per child: the request (JSON: args,
env, cwd, new session, open-files limit) with the child's stdout and stderr as SCM_RIGHTS
descriptors (its stdin is /dev/null); the answer is the child's pid, then, when it
exits, its status.
The exited child stays a zombie until the client closes the connection, so its pid
(and process group) cannot be reused while a test may still signal it.
"""

import asyncio
import contextlib
import io
import json
import os
import resource
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

USERAPI = str(Path(sys.executable).parent / "userapi")
_MAX_MESSAGE = 1 << 20
START_TIMEOUT_SECONDS = 120.0  # a loaded CI machine imports slowly
ANSWER_TIMEOUT_SECONDS = 30.0  # from a request to the child's pid: one fork
# The environment the forkserver starts with: what its children inherit of start-up.
_STARTED_WITH = dict(os.environ)
# Read when a preloaded module is imported, so fixed in the forkserver for its children:
# prometheus_client picks its value class by it; time.tzname is set from TZ.
_READ_AT_IMPORT = frozenset({"PROMETHEUS_MULTIPROC_DIR", "TZ"})
_WORKER = 0  # the forkserver's stdin: the pytest worker holds its other end
# Imported once in the forkserver: what `userapi serve`, `migrate` and the others import.
_PRELOADED = (
    "kernel.cli",
    "kernel.app",
    "kernel.migrations",
    "kernel.edge",
    "kernel.logs",
    "kernel.mail_delivery",
    "uvicorn",
    "uvicorn.main",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.protocols.http.httptools_impl",
    "sqlalchemy.dialects.sqlite.aiosqlite",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "aiosqlite",
    "asyncpg",
)


class ForkserverError(RuntimeError):
    """The forkserver could not start or answer."""


# --- the forkserver --------------------------------------------------------------------


def _exit_status(pid: int) -> int | None:
    """The exited child's status as subprocess reports it, leaving it a zombie."""
    found = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if found is None or found.si_pid == 0:
        return None
    return found.si_status if found.si_code == os.CLD_EXITED else -found.si_status


def limit_open_files(limit: int) -> None:
    """This process's soft `ulimit -n` becomes `limit` (in a child, before it starts)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def _fresh_stdio(env: Mapping[str, str]) -> None:
    """stdout and stderr as a new interpreter with this environment would open them: block
    buffered (stderr line buffered), or written through under PYTHONUNBUFFERED."""
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    for fd, name, errors in ((1, "stdout", "strict"), (2, "stderr", "backslashreplace")):
        raw = io.FileIO(fd, "w", closefd=False)
        buffer: Any = raw if unbuffered else io.BufferedWriter(raw)
        line_buffering = name == "stderr" or raw.isatty()
        stream = io.TextIOWrapper(
            buffer, "utf-8", errors, line_buffering=line_buffering, write_through=unbuffered
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))


def _run_child(request: dict[str, Any], fds: list[int], inherited: list[Any]) -> None:
    """In the forked child: become the requested `userapi` process, and run it."""
    stdin = os.open(os.devnull, os.O_RDONLY)
    for target, fd in enumerate([stdin, *fds]):
        os.dup2(fd, target)
        os.close(fd)
    for each in inherited:  # the forkserver's sockets and selector: none is the child's
        each.close()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if request["new_session"]:
        os.setsid()
    if request["open_files"] is not None:
        limit_open_files(request["open_files"])
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    _fresh_stdio(request["env"])
    sys.argv = [USERAPI, *request["args"]]
    from kernel.cli import main

    main()
    sys.exit()  # as the console script's sys.exit(main()) does


def serve(listening_path: str) -> None:
    """Import, then fork a child per request until stdin (the pytest worker) closes."""
    import importlib

    # As the console script's interpreter has it (not tests/, which holds a `kernel`).
    sys.path[0] = str(Path(USERAPI).parent)
    for name in _PRELOADED:
        importlib.import_module(name)
    import gc

    gc.freeze()  # the children inherit the imports as they are, untouched by collections
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(listening_path)
    listener.listen(64)
    wakeup_read, wakeup_write = socket.socketpair()
    wakeup_read.setblocking(False)
    wakeup_write.setblocking(False)
    signal.set_wakeup_fd(wakeup_write.fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wake-up byte is the news
    running: dict[socket.socket, int] = {}  # a client's connection -> its child, not exited
    exited: dict[socket.socket, int] = {}  # the same, exited and told: zombies, kept
    released: set[int] = set()  # children whose client has gone: reaped once they exit
    with selectors.DefaultSelector() as selector:

        def drop(connection: socket.socket) -> None:
            """The client has gone (or cannot be told): its child is released."""
            selector.unregister(connection)
            connection.close()
            pid = running.pop(connection, None) or exited.pop(connection)
            released.add(pid)

        def start(connection: socket.socket) -> None:
            message, fds, _, _ = socket.recv_fds(connection, _MAX_MESSAGE, 2)
            try:
                request = json.loads(message)
                if len(fds) != 2:
                    raise ValueError(f"{len(fds)} descriptors, not stdout and stderr")
            except ValueError as error:
                for fd in fds:
                    os.close(fd)
                with contextlib.suppress(OSError):
                    connection.sendall(json.dumps({"error": str(error)}).encode())
                connection.close()
                return
            inherited = [listener, wakeup_read, wakeup_write, selector, *running, *exited]
            pid = os.fork()
            if pid == 0:
                _run_child(request, fds, [*inherited, connection])
            for fd in fds:
                os.close(fd)
            running[connection] = pid
            selector.register(connection, selectors.EVENT_READ)
            try:
                connection.sendall(json.dumps({"pid": pid}).encode())
            except OSError:
                drop(connection)

        selector.register(listener, selectors.EVENT_READ)
        selector.register(wakeup_read, selectors.EVENT_READ)
        selector.register(_WORKER, selectors.EVENT_READ)
        print("ready", flush=True)
        while True:
            for key, _ in selector.select():
                if key.fileobj == _WORKER:
                    if not os.read(_WORKER, 1):
                        return  # the worker is gone
                elif key.fileobj is listener:
                    connection, _ = listener.accept()
                    start(connection)
                elif key.fileobj is wakeup_read:
                    with contextlib.suppress(BlockingIOError):
                        wakeup_read.recv(4096)
                else:  # a client sends nothing after its request: readable means gone
                    drop(key.fileobj)  # type: ignore[arg-type]
            for connection, pid in list(running.items()):
                if (status := _exit_status(pid)) is None:
                    continue
                del running[connection]
                exited[connection] = pid
                try:
                    connection.sendall(json.dumps({"returncode": status}).encode())
                except OSError:
                    drop(connection)
            for pid in list(released):
                if _exit_status(pid) is not None:
                    os.waitpid(pid, 0)
                    released.discard(pid)


# --- the client, in the pytest worker --------------------------------------------------


class ForkedProcess:
    """A forked `userapi` process, as much of asyncio.subprocess.Process as tests use."""

    def __init__(self, connection: socket.socket, pid: int) -> None:
        self._connection = connection
        self.pid = pid
        self._returncode: int | None = None
        self._exit: asyncio.Future[int] | None = None  # shared by the waiters of one loop

    def _read_status(self) -> bool:
        """Take the exit status if the forkserver has sent it; whether it has."""
        try:
            answer = self._connection.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        if not answer:
            raise ForkserverError(f"the forkserver went away while pid {self.pid} ran")
        self._returncode = int(json.loads(answer)["returncode"])
        return True

    @property
    def returncode(self) -> int | None:
        if self._returncode is None:
            self._read_status()
        return self._returncode

    async def wait(self) -> int:
        if self.returncode is not None:
            return self.returncode
        loop = asyncio.get_running_loop()
        if self._exit is None or self._exit.get_loop() is not loop:
            self._exit = exit_ = loop.create_future()
            fd = self._connection.fileno()

            def readable() -> None:
                try:
                    if not self._read_status():
                        return
                    if not exit_.done():
                        exit_.set_result(self._returncode)
                except ForkserverError as error:
                    if not exit_.done():
                        exit_.set_exception(error)
                loop.remove_reader(fd)

            loop.add_reader(fd, readable)
        return await asyncio.shield(self._exit)

    def send_signal(self, number: int) -> None:
        # Until the test lets go of it, an exited child is a zombie: its pid is not reused.
        if self._returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __del__(self) -> None:
        self._connection.close()  # lets the forkserver reap it


class _Forkserver:
    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="userapi-forkserver-")
        self.path = str(Path(self._folder.name) / "socket")
        self.process = subprocess.Popen(
            [sys.executable, __file__, self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_STARTED_WITH,
        )
        assert self.process.stdout is not None
        # After its imports: a second or so, once per worker.
        started = select.select([self.process.stdout], [], [], START_TIMEOUT_SECONDS)[0]
        if not started or self.process.stdout.readline() != b"ready\n":
            self.process.kill()
            raise ForkserverError(f"the forkserver did not start (exit {self.process.wait()})")

    def fork(
        self,
        args: list[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        fds: tuple[int, int],
        new_session: bool,
        open_files: int | None,
    ) -> ForkedProcess:
        request = {
            "args": args,
            "env": dict(env),
            "cwd": str(cwd),
            "new_session": new_session,
            "open_files": open_files,
        }
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        connection.settimeout(ANSWER_TIMEOUT_SECONDS)
        try:
            connection.connect(self.path)
            socket.send_fds(connection, [json.dumps(request).encode()], list(fds))
            answer = json.loads(connection.recv(4096) or b"{}")
        except (OSError, ValueError) as error:
            connection.close()
            raise ForkserverError(f"the forkserver did not answer: {error}") from error
        if "pid" not in answer:
            connection.close()
            raise ForkserverError(f"the forkserver did not fork: {answer.get('error')}")
        connection.setblocking(False)
        return ForkedProcess(connection, int(answer["pid"]))


_forkserver: _Forkserver | None = None


def forks(program: str, env: Mapping[str, str]) -> bool:
    """Whether this command can be forked rather than started: `userapi`, with the
    forkserver's own values of what an interpreter reads only as it starts (but
    PYTHONUNBUFFERED and PYTHONDONTWRITEBYTECODE, which the child applies itself)."""
    if program != USERAPI:
        return False
    names = {name for name in [*env, *_STARTED_WITH] if _read_at_start(name)}
    return all(env.get(name) == _STARTED_WITH.get(name) for name in names)


def _read_at_start(name: str) -> bool:
    if name in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"):
        return False
    return name.startswith("PYTHON") or name in _READ_AT_IMPORT


def fork_userapi(
    args: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    stdout: int,
    stderr: int,
    new_session: bool = False,
    open_files: int | None = None,
) -> ForkedProcess:
    """`userapi ARGS`, forked from this worker's forkserver (started on first use),
    its stdin /dev/null, its output to these descriptors."""
    global _forkserver
    if _forkserver is None or _forkserver.process.poll() is not None:
        _forkserver = _Forkserver()
    return _forkserver.fork(
        args,
        env=env,
        cwd=cwd,
        fds=(stdout, stderr),
        new_session=new_session,
        open_files=open_files,
    )


if __name__ == "__main__":
    serve(sys.argv[1])
