"""Find every slice under features/ and mount it: the kernel knows no feature by name.

A slice is a package `features/<name>/` (an `__init__.py`) holding `slice.py`, whose
module-level `router: APIRouter` is mounted under /api/v1. A slice that must answer at
a path fixed by a standard (`/.well-known/...`) also declares `root_router: APIRouter`,
mounted at the root with the same checks. Names starting with `_` are
skipped (drafts, helpers). Anything else is refused at start-up with one line naming it:
a folder that is not a package or has no slice.py, a stray module, a slice without a
router, and two routes that claim the same method and path or the same operation id
(a copied slice would otherwise silently replace the original).
"""

import importlib
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Route, compile_path
from starlette.types import Scope

import features
from kernel.errors import MethodNotAllowed

API_PREFIX = "/api/v1"
# The one route the kernel names: OAuth2's password flow must point at a token URL, and
# API.md fixes it. Everything else about login lives in its slice.
LOGIN_PATH = f"{API_PREFIX}/auth/login"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


class SliceError(RuntimeError):
    """A slice folder that cannot be mounted: start-up stops rather than run without it."""


def _slice_folders() -> dict[str, Path]:
    folders: dict[str, Path] = {}
    for root in map(Path, features.__path__):
        for entry in sorted(root.iterdir()):
            if entry.name.startswith(("_", ".")):
                continue
            where = f"{root.name}/{entry.name}"
            if not entry.is_dir():
                if entry.suffix == ".py":
                    raise SliceError(f"{where}: a slice is a folder holding slice.py")
                continue
            if not _IDENTIFIER.match(entry.name):
                raise SliceError(f"{where}: a slice name is snake_case (or starts with _)")
            if not (entry / "__init__.py").is_file():
                raise SliceError(f"{where} is not a package: add an empty __init__.py")
            if not (entry / "slice.py").is_file():
                raise SliceError(f"{where} has no slice.py (start its name with _ to skip it)")
            if entry.name in folders:
                raise SliceError(f"two slice folders named {entry.name}: {folders[entry.name]}")
            folders[entry.name] = entry
    return folders


def slice_names() -> list[str]:
    """Every slice under features/, sorted so mounting order is deterministic."""
    return sorted(_slice_folders())


def load_slices() -> list[ModuleType]:
    """Import each `features.<name>.slice`; also registers the slice's own tables."""
    modules = []
    for name in slice_names():
        module = importlib.import_module(f"{features.__name__}.{name}.slice")
        if not isinstance(getattr(module, "router", None), APIRouter):
            raise SliceError(f"{module.__name__} has no module-level `router: APIRouter`")
        if not isinstance(getattr(module, "root_router", APIRouter()), APIRouter):
            raise SliceError(f"{module.__name__}: `root_router` must be an APIRouter")
        modules.append(module)
    return modules


def load_tables() -> None:
    """Import the kernel's tables and every slice's, for Alembic and for tests."""
    import kernel.email_tokens
    import kernel.events
    import kernel.guesses
    import kernel.mail
    import kernel.send_limits
    import kernel.sessions
    import kernel.signing_keys  # noqa: F401

    load_slices()


class _Claims:
    """Which slice mounted each route and operation id, to refuse a second claim."""

    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], str, frozenset[str], str]] = []
        self._operation_ids: dict[str, str] = {}

    def add(self, methods: frozenset[str], path: str, operation_id: str, owner: str) -> None:
        for pattern, _, earlier_methods, earlier_owner in self._routes:
            shared = earlier_methods & methods
            # The earlier route matches this one's path: requests never reach this one.
            if shared and pattern.match(path):
                raise SliceError(
                    f"{'/'.join(sorted(shared))} {path} is claimed by {earlier_owner} "
                    f"and by {owner}"
                )
        if operation_id in self._operation_ids:
            raise SliceError(
                f"operation id {operation_id!r} is used by {self._operation_ids[operation_id]} "
                f"and by {owner}"
            )
        self._operation_ids[operation_id] = owner
        self._routes.append((compile_path(path)[0], path, methods, owner))

    def literal_paths(self) -> dict[str, frozenset[str]]:
        """The methods of each path without parameters."""
        paths: dict[str, frozenset[str]] = {}
        for _, path, methods, _ in self._routes:
            if "{" not in path:
                paths[path] = paths.get(path, frozenset()) | methods
        return paths

    def methods_by_path(self) -> list[tuple[re.Pattern[str], bool, frozenset[str]]]:
        """(pattern, whether the path is literal, methods) of every route."""
        return [(pattern, "{" not in path, methods) for pattern, path, methods, _ in self._routes]


def mounted_routers(module: ModuleType) -> list[tuple[str, APIRouter]]:
    """A slice's routers with their prefixes: `router` under /api/v1, `root_router` at /."""
    routers = [(API_PREFIX, module.router)]
    if isinstance(root := getattr(module, "root_router", None), APIRouter):
        routers.append(("", root))
    return routers


def mount_slices(app: FastAPI) -> None:
    claims = _Claims()
    # The path template of every route, by its endpoint (what the router leaves in the
    # request's scope): the request log and the metrics name a route by its template.
    templates: dict[Any, str] = {}
    for route in app.router.routes:
        if isinstance(route, Route):
            templates[route.endpoint] = route.path
        if isinstance(route, APIRoute):
            claims.add(frozenset(route.methods or ()), route.path, route.unique_id, "the kernel")
    for module in load_slices():
        owner = f"slice {module.__name__.split('.')[1]}"
        for prefix, router in mounted_routers(module):
            for route in router.routes:
                if isinstance(route, APIRoute):
                    operation_id = route.operation_id or app.router.generate_unique_id_function(
                        route
                    )
                    claims.add(
                        frozenset(route.methods or ()), prefix + route.path, operation_id, owner
                    )
                    templates.setdefault(route.endpoint, prefix + route.path)
            for route in router.routes:
                _mount(app, prefix, route)
    # Which methods each path takes: a 405 must list all of them in Allow, and two
    # slices may share a path (GET and PATCH /users/me).
    app.state.slice_methods = claims.methods_by_path()
    app.state.literal_paths = claims.literal_paths()
    app.state.route_templates = templates


# Each slice route as mounted, built once per process: building an APIRoute (its
# dependency tree, its pydantic validators and serialisers) is most of what create_app
# costs (30% of the CPU of the in-process tests, which build an app each). Keyed by what
# the build reads from the app's router, so an app set up otherwise gets routes of its own.
# A route is named by its id() (routes compare by value), and kept beside what was built
# from it, so that id is never reused by another route while the entry exists (a test
# that forgets a probe slice's module would otherwise free it).
_MountKey = tuple[int, str, tuple[Any, ...], Any]
_mounted: dict[_MountKey, tuple[APIRoute, APIRoute]] = {}


def _mount(app: FastAPI, prefix: str, route: BaseRoute) -> None:
    """The slice's route, added to the app's own router under the prefix.

    Not `app.include_router`: FastAPI (0.16x) keeps each included router as a branch it
    walks on every request, one slice after another, so routing cost grew with the
    slice count and with where a slice sorts (12% of GET /users/me's CPU, in profile).
    The route is built as include_router used to build it, with the app router's
    dependencies; the slice router's tags, dependencies and responses are already in it.
    The built route is shared by every app of the process, so it names no app:
    `app.dependency_overrides` has no effect on it (create_app makes that mapping
    read-only, so trying fails loudly).
    """
    if not isinstance(route, APIRoute):
        raise TypeError(f"{route!r}: slices declare API routes only")
    own = app.router
    key = (
        id(route),
        prefix,
        tuple(depends.dependency for depends in own.dependencies),
        own.generate_unique_id_function,
    )
    if key not in _mounted:
        builder = APIRouter(
            dependencies=own.dependencies,
            generate_unique_id_function=own.generate_unique_id_function,
        )
        builder.add_api_route(
            prefix + route.path,
            route.endpoint,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=route.tags,
            dependencies=route.dependencies,
            summary=route.summary,
            description=route.description,
            response_description=route.response_description,
            responses=route.responses,
            deprecated=route.deprecated,
            methods=route.methods,
            operation_id=route.operation_id,
            response_model_include=route.response_model_include,
            response_model_exclude=route.response_model_exclude,
            response_model_by_alias=route.response_model_by_alias,
            response_model_exclude_unset=route.response_model_exclude_unset,
            response_model_exclude_defaults=route.response_model_exclude_defaults,
            response_model_exclude_none=route.response_model_exclude_none,
            include_in_schema=route.include_in_schema,
            response_class=route.response_class,
            name=route.name,
            callbacks=route.callbacks,
            openapi_extra=route.openapi_extra,
            generate_unique_id_function=route.generate_unique_id_function,
        )
        [built] = builder.routes
        assert isinstance(built, APIRoute)
        _mounted[key] = (route, built)
    own.routes.append(_mounted[key][1])


def route_template(scope: Scope) -> str | None:
    """The template of the route that answered ("/api/v1/users/{user_id}"), or None
    when none matched; never the path as sent, which holds ids."""
    app = scope.get("app")
    templates = getattr(getattr(app, "state", None), "route_templates", None) or {}
    template: str | None = templates.get(scope.get("endpoint"))
    return template


def refuse_methods_a_literal_path_lacks(request: Request) -> None:
    """App-wide (kernel.app): a path without parameters is its own resource, as
    /openapi.json shows it.

    DELETE /users/me/sessions/revoke-others would otherwise reach DELETE
    /users/me/sessions/{session_id} and answer 422 for a malformed id: it is a 405.
    """
    allowed = request.app.state.literal_paths.get(request.scope["path"])
    if allowed is not None and request.method not in allowed:
        raise MethodNotAllowed(headers={"Allow": ", ".join(sorted(allowed))})
