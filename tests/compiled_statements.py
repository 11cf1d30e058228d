"""One cache of compiled SQL for every engine a test process builds.

SQLAlchemy caches each statement's compiled SQL per engine, keyed by the engine's
dialect object. A production process builds one engine and compiles each statement once;
a pytest worker builds an app, hence an engine, per test, and compiled everything again
each time: in tests/features that was 15% of the worker's CPU, and sharing the cache cut
a test that builds an app, two accounts and three requests from 168 to 134 ms of CPU on
PostgreSQL, 165 to 123 on SQLite (interleaved rounds of 40).

`share_compiled_statements()` gives every connection of the process one cache (the
`compiled_cache` execution option) whose keys name the dialect by what shapes its SQL
(its class and server version, among others) instead of by identity. The ORM's
unit of work (session.add, then flush) passes a cache of its own, each mapper's
`_compiled_cache` (100 entries keyed by dialect object): each mapper gets the shared
one. Engines of the same kind compile alike: the kernel builds every engine of a
backend with the same dialect options. A key whose layout is not the expected one is
kept as it is, so a SQLAlchemy release that changes the layout makes the cache per
engine again, never wrong.
"""

from collections.abc import Hashable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.util import LRUCache
from sqlmodel.main import default_registry

from kernel.slices import load_tables

# Comfortably more statements than the kernel and every slice have, on both backends.
_CAPACITY = 4_000


def _dialect_kind(dialect: Dialect) -> Hashable:
    return (
        type(dialect),
        dialect.server_version_info,
        dialect.paramstyle,
        dialect.positional,
        dialect.label_length,
        dialect.max_identifier_length,
    )


class _CompiledByKind:
    """What SQLAlchemy asks of a compiled cache: `get`, and `[key] = compiled`."""

    def __init__(self) -> None:
        self._compiled: LRUCache[Any, Any] = LRUCache(_CAPACITY)

    @staticmethod
    def _key(key: Any) -> Any:
        if isinstance(key, tuple) and key and isinstance(key[0], Dialect):
            return (_dialect_kind(key[0]), *key[1:])
        return key

    def get(self, key: Any, default: Any = None) -> Any:
        return self._compiled.get(self._key(key), default)

    def __setitem__(self, key: Any, compiled: Any) -> None:
        self._compiled[self._key(key)] = compiled


_SHARED = _CompiledByKind()


def _use_shared_cache(connection: Connection) -> None:
    connection.execution_options(compiled_cache=_SHARED)


def share_compiled_statements() -> None:
    """From now on, every engine of this process compiles into the one cache."""
    if not event.contains(Engine, "engine_connect", _use_shared_cache):
        event.listen(Engine, "engine_connect", _use_shared_cache)
    load_tables()  # every mapper the kernel and the slices define
    for mapper in default_registry.mappers:
        # `_compiled_cache` is a memoized attribute: what the instance holds wins.
        vars(mapper)["_compiled_cache"] = _SHARED
