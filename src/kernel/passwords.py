"""argon2id hashing off the event loop, behind a limiter sized for memory."""

from collections.abc import Callable
from typing import TypeVar

import anyio
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from kernel.errors import ServerBusy
from kernel.settings import Settings

T = TypeVar("T")


class PasswordHashing:
    """Every hash and verify runs in a worker thread, at most `hashing_slots` at once in
    this process (see Settings.hashing_slots for how workers share the budget).

    argon2id is memory-hard on purpose: unbounded, a burst of logins would exhaust memory;
    on the event loop, one login would stall every other request.
    """

    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self._slots = anyio.CapacityLimiter(settings.hashing_slots)
        self._wait_seconds = settings.hash_wait_seconds
        self._dummy_hash = ""

    async def _in_worker(self, work: Callable[[], T]) -> T:
        try:
            with anyio.fail_after(self._wait_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise ServerBusy(
                headers={"Retry-After": str(max(1, round(self._wait_seconds)))}
            ) from None
        try:
            return await anyio.to_thread.run_sync(work)
        finally:
            self._slots.release()

    async def warm_up(self) -> None:
        """Prepare the hash that unknown-email logins verify against (equal timing)."""
        if not self._dummy_hash:
            self._dummy_hash = await self._in_worker(
                lambda: self._hasher.hash("not a real password; timing only")
            )

    async def hash(self, password: str) -> str:
        return await self._in_worker(lambda: self._hasher.hash(password))

    async def verify(self, stored_hash: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(stored_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await self._in_worker(check)

    async def burn_verify(self, password: str) -> None:
        """Do the same argon2 work as a real verify, for an email that does not exist."""
        await self.warm_up()
        await self.verify(self._dummy_hash, password)

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True
