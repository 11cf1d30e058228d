"""argon2-cffi's own verify throughput, with no server: the bound on login throughput.

    python bench/argon2_alone.py THREADS SECONDS   (prints hashes per second)

Uses the server's settings (ARGON2_* from the environment), `THREADS` threads verifying
at once, as the server's hashing slots do; bench/run.py pins it to the server's core.
"""

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher

from kernel.settings import load_settings


def throughput(threads: int, seconds: float) -> float:
    settings = load_settings()
    hasher = PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
    )
    stored = hasher.hash("benchmark passphrase 2026")
    count = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def verify_until_deadline() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            hasher.verify(stored, "benchmark passphrase 2026")
            with lock:
                count += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(threads):
            pool.submit(verify_until_deadline)
    return count / (time.perf_counter() - started)


if __name__ == "__main__":
    print(round(throughput(int(sys.argv[1]), float(sys.argv[2])), 3))
