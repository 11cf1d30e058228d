"""Find every slice under features/ and mount it: the kernel knows no feature by name."""

import importlib
import pkgutil
import re
from types import ModuleType

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import compile_path

import features

API_PREFIX = "/api/v1"


class SliceError(RuntimeError):
    """A slice folder that cannot be mounted: start-up stops rather than run without it."""


def slice_names() -> list[str]:
    """Every slice package under features/, sorted so mounting order is deterministic."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(features.__path__)
        if info.ispkg and not info.name.startswith("_")
    )


def load_slices() -> list[ModuleType]:
    """Import each `features.<name>.slice`; also registers the slice's own tables."""
    modules = []
    for name in slice_names():
        module = importlib.import_module(f"{features.__name__}.{name}.slice")
        if not isinstance(getattr(module, "router", None), APIRouter):
            raise SliceError(f"{module.__name__} has no module-level `router: APIRouter`")
        modules.append(module)
    return modules


def load_tables() -> None:
    """Import the kernel's tables and every slice's, for Alembic and for tests."""
    import kernel.credentials
    import kernel.tokens  # noqa: F401

    load_slices()


def mount_slices(app: FastAPI) -> None:
    # Which methods each slice path takes: a 405 must list all of them in Allow, and
    # two slices may share a path (GET and PATCH /users/me).
    methods: list[tuple[re.Pattern[str], frozenset[str]]] = []
    for module in load_slices():
        app.include_router(module.router, prefix=API_PREFIX)
        for route in module.router.routes:
            if isinstance(route, APIRoute):
                pattern = compile_path(API_PREFIX + route.path)[0]
                methods.append((pattern, frozenset(route.methods or ())))
    app.state.slice_methods = methods
