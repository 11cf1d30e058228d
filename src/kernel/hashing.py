"""argon2id hashing off the event loop, behind a limiter sized for memory and shared
fairly between clients.

Fair sharing needs two things. FairSlots gives a newcomer from another address the
next slot to free, so it waits at most one hash. And its hash must then not share the
cores with the flood's: each hash runs ARGON2_PARALLELISM lanes in threads of its own,
so with a slot per CPU (2 slots of 4 lanes on 2 cores) the newcomer's hash ran beside
another at about half speed. Settings.hashing_slots therefore allows one slot per
ARGON2_PARALLELISM CPUs: one hash already keeps those cores busy, so there are no fewer
hashes a second, and a lone hash runs at full speed. bench/ip_flood.py (30 unknown-email
logins a second from one address, per-IP limit lifted, 2 loaded cores): the user's login
took 4.1x its idle latency with 2 slots (1.1 s), 1.7x with 1 (0.6 s); medians of 3
interleaved runs, and 6.1x vs 1.6x in a second set. Real logins a second, 8 at once from
one address: 3.6 with 2 slots, 4.1 with 1.
Running the flood's hashes at a lower priority instead (nice 19 or SCHED_IDLE threads
for a client already holding a slot) measured 2.3x and 2.8x, for more code.
"""

import asyncio
import os
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from typing import TypeVar

import anyio
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from kernel.client_ip import current_client
from kernel.errors import ServerBusy
from kernel.metrics import HashingGauges
from kernel.settings import Settings

_DUMMY_PASSWORD = "not a real password; timing only"  # noqa: S105 (hashed for timing only)


T = TypeVar("T")


def _yield_the_cpu() -> None:
    """Run this hashing thread in the idle scheduling class (Linux), where it gets a CPU
    only when nothing else wants it (HASH_THREAD_PRIORITY=idle). Logins share cores with
    the event loop; at normal priority the OS splits a core between an argon2 thread and
    the loop, and reads wait behind the hash (/users/me p99 2.3x its idle value during
    an 8-client login storm). The price: every other busy process on the machine comes
    first too; on a shared, loaded machine logins ran at 0.29x the normal-priority rate,
    hence not the default."""
    if hasattr(os, "SCHED_IDLE"):  # elsewhere the thread keeps the normal priority
        with suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


class HashingSlot:
    """One of the limited argon2 slots, held: its work runs in a hashing thread."""

    def __init__(
        self, hasher: PasswordHasher, dummy_hash: str, threads: ThreadPoolExecutor
    ) -> None:
        self._hasher = hasher
        self._dummy_hash = dummy_hash
        self._threads = threads

    async def _in_thread(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, work)

    async def hash(self, password: str) -> str:
        return await self._in_thread(lambda: self._hasher.hash(password))

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """Whether it matches; None (no such account) does the same work and is False."""

        def check() -> bool:
            try:
                return self._hasher.verify(stored_hash or self._dummy_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await self._in_thread(check) and stored_hash is not None


class FairSlots:
    """`capacity` slots; when one frees, the waiting client holding the fewest gets it.

    A plain FIFO queue lets one address that floods logins stand in front of everyone:
    every other client waits behind its whole queue (issue 12: 30 logins a second from
    one address made real users wait 10 s, then 503). Here a newcomer from another
    address takes the next slot to free, so it waits at most one hash, however long the
    flood's queue is. Among clients holding as many slots, the one served least
    recently (or never) goes first; one client's own requests keep their order. Nothing
    is held back while slots are free: alone, one client may use them all.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._in_use = 0
        self._held: Counter[str | None] = Counter()
        self._waiting: dict[str | None, deque[asyncio.Future[None]]] = {}
        # When each client holding or waiting was last given a slot (a grant's number).
        self._last_served: dict[str | None, int] = {}
        self._grants = 0

    async def acquire(self, client: str | None) -> None:
        """A slot for `client`, however long it takes (the caller bounds the wait)."""
        if self._in_use < self._capacity:
            self._grant(client)
            return
        granted = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(client, deque()).append(granted)
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                self.release(client)  # handed over as the wait ended: pass it on
            else:
                granted.cancel()  # skipped by the next hand-over
            raise

    def release(self, client: str | None) -> None:
        self._in_use -= 1
        self._held[client] -= 1
        if self._held[client] <= 0:
            del self._held[client]
        self._hand_over()
        self._forget_if_idle(client)

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return sum(not f.done() for queue in self._waiting.values() for f in queue)

    def _grant(self, client: str | None) -> None:
        self._in_use += 1
        self._held[client] += 1
        self._grants += 1
        self._last_served[client] = self._grants

    def _hand_over(self) -> None:
        while self._in_use < self._capacity and self._waiting:
            client = min(
                self._waiting,
                key=lambda waiting: (self._held[waiting], self._last_served.get(waiting, 0)),
            )
            queue = self._waiting[client]
            granted = queue.popleft()
            if not queue:
                del self._waiting[client]
            if granted.done():
                self._forget_if_idle(client)
                continue  # its wait timed out or was cancelled
            granted.set_result(None)
            self._grant(client)

    def _forget_if_idle(self, client: str | None) -> None:
        # Bounded by the clients holding or waiting, not by every address ever seen.
        if client not in self._held and client not in self._waiting:
            self._last_served.pop(client, None)


class PasswordHashing:
    """Every hash and verify runs in a worker thread, at most `hashing_slots` at once in
    this process (see Settings.hashing_slots for how workers share the budget), shared
    between client addresses by FairSlots (the caller is kernel.client_ip.current_client).

    argon2id is memory-hard on purpose: unbounded, a burst of logins would exhaust memory;
    on the event loop, one login would stall every other request.
    """

    def __init__(self, settings: Settings, gauges: HashingGauges | None = None) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self._slots = FairSlots(settings.hashing_slots)
        # Threads of their own, as many as slots: even a hash whose request was cancelled
        # cannot exceed the memory bound; and their priority is theirs alone.
        idle = settings.hash_thread_priority == "idle"
        self._threads = ThreadPoolExecutor(
            settings.hashing_slots,
            thread_name_prefix="argon2",
            initializer=_yield_the_cpu if idle else None,
        )
        self._wait_seconds = settings.hash_wait_seconds
        self._dummy_hash = ""
        self._gauges = gauges  # /metrics, when enabled
        if gauges is not None:
            gauges.slots.set(settings.hashing_slots)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[HashingSlot]:
        """Hold a slot, or answer 503 server_busy after HASH_WAIT_SECONDS without one."""
        gauges = self._gauges
        if gauges is not None:
            gauges.waiting.inc()
        client = current_client.get()
        try:
            with anyio.fail_after(self._wait_seconds):
                await self._slots.acquire(client)
        except TimeoutError:
            if gauges is not None:
                gauges.server_busy.inc()
            raise ServerBusy(
                headers={"Retry-After": str(max(1, round(self._wait_seconds)))}
            ) from None
        finally:
            if gauges is not None:
                gauges.waiting.dec()
        if gauges is not None:
            gauges.busy.inc()
        try:
            yield HashingSlot(self._hasher, self._dummy_hash, self._threads)
        finally:
            self._slots.release(client)
            if gauges is not None:
                gauges.busy.dec()

    async def warm_up(self) -> None:
        """Prepare the hash that unknown-email logins verify against (equal timing)."""
        if not self._dummy_hash:
            async with self.slot() as slot:
                self._dummy_hash = await slot.hash(_DUMMY_PASSWORD)

    async def hash(self, password: str) -> str:
        async with self.slot() as slot:
            return await slot.hash(password)

    @property
    def slots_busy(self) -> int:
        return self._slots.in_use

    @property
    def requests_waiting(self) -> int:
        """Requests queued for a slot right now."""
        return self._slots.waiting

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True
