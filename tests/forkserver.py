"""`userapi` processes forked from one that has already imported the service.

A `userapi` process spends most of its CPU importing (the framework, the ORM, Alembic,
the slices): about 0.8 s of each, and the suite starts some two hundred. Each pytest
worker therefore starts one forkserver, which imports what `userapi` imports, once, and
then forks a child per command. The child is a real process with its own pid, session,
descriptors, working directory and environment, and runs the console script's own
`sys.exit(main())`; only the imports are inherited instead of repeated.

What a fork cannot give is a fresh interpreter, so whatever is decided at interpreter
start-up comes from the forkserver: the `-X` options, `PYTHON*` variables such as
PYTHONUNBUFFERED, and the code itself. A command whose environment sets PYTHONPATH (a
test running a copy of the repository) or any other PYTHON* variable differently from
the forkserver's therefore runs as a fresh `userapi` process, as do the README's
walkthrough and the commands run through another program.

The protocol, over a SOCK_SEQPACKET Unix socket per child: the request (JSON: args,
env, cwd, new session, open-files limit) with the child's stdout and stderr as SCM_RIGHTS
descriptors (its stdin is /dev/null); the answer is the child's pid, then, when it
exits, its status.
The exited child stays a zombie until the client closes the connection, so its pid
(and process group) cannot be reused while a test may still signal it.
"""

import asyncio
import contextlib
import json
import os
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


def _run_child(request: dict[str, Any], fds: list[int], closing: list[socket.socket]) -> None:
    """In the forked child: become the requested `userapi` process, and run it."""
    for sock in closing:
        sock.close()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if request["new_session"]:
        os.setsid()
    if request["open_files"] is not None:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (request["open_files"], hard))
    stdin = os.open(os.devnull, os.O_RDONLY)
    for target, fd in enumerate([stdin, *fds]):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
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
    clients: dict[socket.socket, int] = {}  # connection -> child pid
    reported: set[int] = set()
    orphans: set[int] = set()  # children whose client left before they exited
    with selectors.DefaultSelector() as selector:
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
                    message, fds, _, _ = socket.recv_fds(connection, _MAX_MESSAGE, 2)
                    closing = [listener, wakeup_read, wakeup_write, *clients, connection]
                    pid = os.fork()
                    if pid == 0:
                        _run_child(json.loads(message), fds, closing)
                    for fd in fds:
                        os.close(fd)
                    connection.sendall(json.dumps({"pid": pid}).encode())
                    clients[connection] = pid
                    selector.register(connection, selectors.EVENT_READ)
                elif key.fileobj is wakeup_read:
                    with contextlib.suppress(BlockingIOError):
                        wakeup_read.recv(4096)
                else:  # a client closed its connection: its child may be reaped
                    connection = key.fileobj  # type: ignore[assignment]
                    selector.unregister(connection)
                    pid = clients.pop(connection)
                    connection.close()
                    orphans.add(pid)
            for connection, pid in clients.items():
                if pid not in reported and (status := _exit_status(pid)) is not None:
                    reported.add(pid)
                    connection.sendall(json.dumps({"returncode": status}).encode())
            for pid in list(orphans):
                if _exit_status(pid) is not None:
                    os.waitpid(pid, 0)
                    orphans.discard(pid)
                    reported.discard(pid)


# --- the client, in the pytest worker --------------------------------------------------


class ForkedProcess:
    """A forked `userapi` process, as much of asyncio.subprocess.Process as tests use."""

    def __init__(self, connection: socket.socket, pid: int) -> None:
        self._connection = connection
        self.pid = pid
        self._returncode: int | None = None

    def _take(self, answer: bytes) -> int:
        if not answer:
            raise ForkserverError(f"the forkserver went away while pid {self.pid} ran")
        self._returncode = int(json.loads(answer)["returncode"])
        return self._returncode

    @property
    def returncode(self) -> int | None:
        if self._returncode is None:
            with contextlib.suppress(BlockingIOError):
                self._take(self._connection.recv(4096, socket.MSG_DONTWAIT))
        return self._returncode

    async def wait(self) -> int:
        if self.returncode is not None:
            return self._returncode  # type: ignore[return-value]
        loop = asyncio.get_running_loop()
        return self._take(await loop.sock_recv(self._connection, 4096))

    def send_signal(self, number: int) -> None:
        if self.returncode is None:  # an exited child is a zombie: nothing to signal
            os.kill(self.pid, number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

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
            env=dict(os.environ),
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()  # after its imports: about a second, once
        if ready != b"ready\n":
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
        try:
            connection.connect(self.path)
            socket.send_fds(connection, [json.dumps(request).encode()], list(fds))
            answer = connection.recv(4096)
        except OSError as error:
            connection.close()
            raise ForkserverError(f"the forkserver did not answer: {error}") from error
        if not answer:
            connection.close()
            raise ForkserverError("the forkserver closed the connection without a pid")
        connection.setblocking(False)
        return ForkedProcess(connection, int(json.loads(answer)["pid"]))


_forkserver: _Forkserver | None = None


def forks(program: str, env: Mapping[str, str]) -> bool:
    """Whether this command can be forked rather than started: `userapi`, with nothing
    in its environment that a fresh interpreter would read differently."""
    if program != USERAPI:
        return False
    ours = {name: value for name, value in os.environ.items() if name.startswith("PYTHON")}
    theirs = {name: value for name, value in env.items() if name.startswith("PYTHON")}
    return all(ours.get(name) == value for name, value in theirs.items())


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
