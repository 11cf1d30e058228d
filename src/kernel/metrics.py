"""Prometheus metrics: what each worker counts, and the one page that shows them all.

Off unless METRICS_ENABLED. With several workers (`userapi serve --workers N`) each worker
writes its values to files in PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess
mode, chosen by that variable when the library is first imported) and whichever worker
answers /metrics reads and sums them all: a worker's own registry would show its share
only. Gauges of a worker that has gone are dropped (`livesum`), counters keep its counts.

What depends on the database as a whole (the outbox) is not a per-worker value: it is
read from the database when /metrics is scraped, so every replica reports the same truth.
"""

import glob
import hmac
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from kernel.errors import InvalidToken, NotAuthenticated

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# A client-chosen method must not mint a new time series per request.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"  # a 404 for a path no route has: never the raw path
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db$")


@dataclass(frozen=True)
class HashingGauges:
    """What kernel.hashing reports: capacity, slots held, requests queued, 503s."""

    slots: Gauge
    busy: Gauge
    waiting: Gauge
    server_busy: Counter


@dataclass(frozen=True)
class OutboxDepth:
    """The outbox as the database holds it at scrape time."""

    pending: int
    failed: int
    oldest_pending: datetime | None


class Metrics:
    """One app's metrics. Built in create_app when METRICS_ENABLED; None otherwise."""

    def __init__(self, token: str = "") -> None:
        self._token = token
        self.multiprocess_dir = os.environ.get(MULTIPROC_DIR_VARIABLE) or None
        # registry=None: each scrape builds its own registry (see exposition), and a
        # second app in one process (the tests) must not clash with the first one's names.
        self.requests = Histogram(
            "userapi_http_request_duration_seconds",
            "Requests by method, route template and status, and how long they took.",
            ["method", "route", "status"],
            registry=None,
        )
        self.hashing = HashingGauges(
            slots=Gauge(
                "userapi_hashing_slots",
                "argon2 hashes that may run at once (HASH_CONCURRENCY, summed over workers).",
                registry=None,
                multiprocess_mode="livesum",
            ),
            busy=Gauge(
                "userapi_hashing_slots_busy",
                "argon2 hashes running now.",
                registry=None,
                multiprocess_mode="livesum",
            ),
            waiting=Gauge(
                "userapi_hashing_waiting",
                "Requests waiting for a hashing slot now.",
                registry=None,
                multiprocess_mode="livesum",
            ),
            server_busy=Counter(
                "userapi_server_busy",
                "Requests answered 503 server_busy: no hashing slot within HASH_WAIT_SECONDS.",
                registry=None,
            ),
        )
        self.database_connections = Gauge(
            "userapi_database_connections_in_use",
            "Database connections checked out of the pool now.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.mail_attempts = Counter(
            "userapi_mail_delivery_attempts",
            "Mail delivery attempts by this service's senders, by outcome "
            "(sent; retry: failed, tried again later; failed: given up).",
            ["outcome"],
            registry=None,
        )
        self._own: list[Collector] = [
            self.requests,
            self.hashing.slots,
            self.hashing.busy,
            self.hashing.waiting,
            self.hashing.server_busy,
            self.database_connections,
            self.mail_attempts,
        ]

    def observe_request(self, method: str, route: str, status: str, seconds: float) -> None:
        """The one metrics call per request (RequestContextMiddleware)."""
        method = method if method in _KNOWN_METHODS else "other"
        self.requests.labels(method, route, status).observe(seconds)

    def watch_pool(self, engine: AsyncEngine) -> None:
        """Count connections in use from the pool's own checkout and checkin events."""
        in_use = self.database_connections

        @event.listens_for(engine.sync_engine, "checkout")
        def _out(_: Any, __: ConnectionPoolEntry, ___: PoolProxiedConnection) -> None:
            in_use.inc()

        @event.listens_for(engine.sync_engine, "checkin")
        def _in(_: Any, __: ConnectionPoolEntry) -> None:
            in_use.dec()

    def allows(self, headers: Mapping[str, str]) -> None:
        """With METRICS_TOKEN set, the scraper must send it as a bearer token."""
        if not self._token:
            return
        scheme, _, presented = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise NotAuthenticated()
        if not hmac.compare_digest(presented.strip().encode(), self._token.encode()):
            raise InvalidToken()

    def exposition(self, outbox: OutboxDepth | None) -> bytes:
        """The text format of every metric, summed over this machine's workers."""
        registry = CollectorRegistry()
        if self.multiprocess_dir:
            forget_dead_workers(self.multiprocess_dir)
            MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        else:
            for collector in self._own:
                registry.register(collector)
        if outbox is not None:
            registry.register(_Fixed(_outbox_families(outbox)))
        return generate_latest(registry)

    def worker_exiting(self) -> None:
        """This worker's gauges stop counting (app shutdown)."""
        if self.multiprocess_dir:
            mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]


def forget_dead_workers(folder: str) -> None:
    """Drop the gauges of workers that died without shutting down (killed, out of memory):
    their server restarts them under new process ids, and the old files would count on."""
    for path in glob.glob(os.path.join(folder, "gauge_live*_*.db")):
        match = _LIVE_GAUGE_FILE.search(path)
        if match and not _alive(int(match.group(1))):
            mark_process_dead(int(match.group(1)), folder)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True


class _Fixed:
    """Families computed before the scrape (from the database), as a collector."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _outbox_families(outbox: OutboxDepth) -> Iterator[Metric]:
    mails = GaugeMetricFamily(
        "userapi_outbox_mails",
        "Mails in the outbox by status (pending: still to be sent; failed: given up). "
        "Read from the database: the same on every replica.",
        labels=["status"],
    )
    mails.add_metric(["pending"], outbox.pending)
    mails.add_metric(["failed"], outbox.failed)
    yield mails
    if outbox.oldest_pending is not None:
        yield GaugeMetricFamily(
            "userapi_outbox_oldest_pending_timestamp_seconds",
            "When the oldest pending mail was queued (Unix time).",
            value=outbox.oldest_pending.timestamp(),
        )
