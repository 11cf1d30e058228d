"""Waiting for a condition a test can observe, bounded by a timeout, instead of sleeping.

A fixed sleep is either too short on a loaded machine (a flaky test) or longer than
needed everywhere else (a slow one). These poll the state itself and fail with a message
saying what never happened.
"""

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

POLL_INTERVAL_SECONDS = 0.02


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    within: float,
    what: str,
    interval: float = POLL_INTERVAL_SECONDS,
) -> None:
    """Return as soon as `condition()` is true; fail after `within` seconds saying `what`."""
    try:
        async with asyncio.timeout(within):
            while True:
                outcome = condition()
                if await outcome if inspect.isawaitable(outcome) else outcome:
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"not within {within} s: {what}") from None


async def poll(
    probe: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], bool],
    within: float,
    what: str,
    interval: float = POLL_INTERVAL_SECONDS,
) -> list[T]:
    """Every result of `probe()`, called until `until(result)`: the last one is the first
    that satisfies it. Fails after `within` seconds saying `what`."""
    results: list[T] = []
    try:
        async with asyncio.timeout(within):
            while True:
                results.append(await probe())
                if until(results[-1]):
                    return results
                await asyncio.sleep(interval)
    except TimeoutError:
        last = repr(results[-1]) if results else "none"
        raise AssertionError(
            f"not within {within} s: {what} ({len(results)} tries, the last: {last})"
        ) from None
