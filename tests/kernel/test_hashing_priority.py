"""HASH_THREAD_PRIORITY=idle: argon2 runs in threads of Linux's idle scheduling class
(SCHED_IDLE), so the event loop sharing their core never waits for a hash; by default
they run at normal priority (kernel.hashing). Read from the kernel's own record of a
real `userapi serve` process's threads after a registration and a login.
"""

import os
from pathlib import Path

import httpx

from tests.factories import login, register
from tests.servers import running_server

SCHED_OTHER, SCHED_IDLE = 0, 5  # the policy numbers of sched(7)
POLICY_FIELD = 40  # /proc/PID/task/TID/stat, counted from 0 (proc(5): field 41)


def _policies(pid: int) -> dict[int, int]:
    """Each thread of the process, and its scheduling policy."""
    policies = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        # The fields after the name start at the third (state): shift by two.
        policies[int(task.name)] = int(fields[POLICY_FIELD - 2])
    return policies


async def _thread_policies(
    database_url: str, tmp_path: Path, **env: str
) -> tuple[int, dict[int, int]]:
    async with (
        running_server(database_url, tmp_path, env=env) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as client,
    ):
        account = await login(client, await register(client))
        assert account.access_token
        return server.process.pid, _policies(server.process.pid)


async def test_with_idle_priority_hashing_threads_run_at_sched_idle_and_the_loop_does_not(
    database_url: str, tmp_path: Path
) -> None:
    pid, policies = await _thread_policies(database_url, tmp_path, HASH_THREAD_PRIORITY="idle")

    assert policies[pid] == SCHED_OTHER  # the event loop's thread
    # The threads that hashed the registration and the login (and the warm-up).
    assert SCHED_IDLE in policies.values(), policies
    assert os.sched_getscheduler(0) == SCHED_OTHER  # the test itself is untouched


async def test_by_default_every_thread_runs_at_normal_priority(
    database_url: str, tmp_path: Path
) -> None:
    _, policies = await _thread_policies(database_url, tmp_path)

    assert set(policies.values()) == {SCHED_OTHER}, policies
