"""argon2id hashing off the event loop, behind a limiter sized for memory."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from kernel.errors import ServerBusy
from kernel.metrics import HashingGauges
from kernel.settings import Settings

_DUMMY_PASSWORD = "not a real password; timing only"  # noqa: S105 (hashed for timing only)


class HashingSlot:
    """One of the limited argon2 slots, held: its work runs in a worker thread."""

    def __init__(self, hasher: PasswordHasher, dummy_hash: str) -> None:
        self._hasher = hasher
        self._dummy_hash = dummy_hash

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """Whether it matches; None (no such account) does the same work and is False."""

        def check() -> bool:
            try:
                return self._hasher.verify(stored_hash or self._dummy_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await anyio.to_thread.run_sync(check) and stored_hash is not None


class PasswordHashing:
    """Every hash and verify runs in a worker thread, at most `hashing_slots` at once in
    this process (see Settings.hashing_slots for how workers share the budget).

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
        self._slots = anyio.CapacityLimiter(settings.hashing_slots)
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
        try:
            with anyio.fail_after(self._wait_seconds):
                await self._slots.acquire()
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
            yield HashingSlot(self._hasher, self._dummy_hash)
        finally:
            self._slots.release()
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
        return int(self._slots.borrowed_tokens)

    @property
    def requests_waiting(self) -> int:
        """Requests queued for a slot right now."""
        return self._slots.statistics().tasks_waiting

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True
