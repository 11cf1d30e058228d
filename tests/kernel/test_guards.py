"""The shape the code must keep (DESIGN.md), checked on the repository itself.

Every slice has its test file and every test file its slice; every route outside the
public list requires the current user; no slice imports another; the kernel names no
slice. Each guard also checks that it looked at something, so it cannot pass vacuously.
"""

import ast
from pathlib import Path
from typing import Any, get_args

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from kernel.deps import CurrentSession, CurrentUser
from kernel.slices import API_PREFIX, load_slices, mounted_routers, slice_names
from tests.kernel.helpers import FEATURES_DIR

REPOSITORY = FEATURES_DIR.parent
KERNEL_DIR = REPOSITORY / "src" / "kernel"
FEATURE_TESTS_DIR = REPOSITORY / "tests" / "features"
PUBLIC_ROUTES = {
    ("POST", f"{API_PREFIX}/auth/register"),
    ("POST", f"{API_PREFIX}/auth/login"),
    ("POST", f"{API_PREFIX}/auth/refresh"),
    ("POST", f"{API_PREFIX}/auth/logout"),
    # Whoever forgot their password, or opens a mailed link, has no token: the mailed
    # secret is the proof.
    ("POST", f"{API_PREFIX}/auth/password-reset"),
    ("POST", f"{API_PREFIX}/auth/password-reset/confirm"),
    ("POST", f"{API_PREFIX}/auth/verify-email"),
    # The static pages those mailed links open (they post to the routes above).
    ("GET", "/account/verify-email"),
    ("GET", "/account/reset-password"),
    ("GET", "/account/account.js"),
    ("GET", "/account/account.css"),
    # What other services fetch to verify our tokens (RFC 7517, RFC 8414): public keys only.
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/.well-known/oauth-authorization-server"),
}


def repository_slices() -> set[str]:
    names = {folder.name for folder in FEATURES_DIR.iterdir() if (folder / "slice.py").is_file()}
    assert len(names) >= 8, names
    return names


def imported_modules(source: Path) -> set[str]:
    tree = ast.parse(source.read_text(), filename=str(source))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


def calls_of(dependant: Dependant) -> set[Any]:
    calls = {dependant.call}
    for child in dependant.dependencies:
        calls |= calls_of(child)
    return calls


def test_every_slice_has_its_test_file() -> None:
    untested = [
        name
        for name in repository_slices()
        if not (FEATURE_TESTS_DIR / f"test_{name}.py").is_file()
    ]

    assert untested == []


def test_every_feature_test_file_has_its_slice() -> None:
    test_files = {path.stem.removeprefix("test_") for path in FEATURE_TESTS_DIR.glob("test_*.py")}
    assert test_files

    assert sorted(test_files - repository_slices()) == []


def test_discovery_finds_exactly_the_slice_folders() -> None:
    assert set(slice_names()) == repository_slices()


def test_every_route_outside_the_public_list_requires_the_current_user() -> None:
    authenticated = {get_args(alias)[1].dependency for alias in (CurrentUser, CurrentSession)}
    routes = [
        (method, f"{prefix}{route.path}", route)
        for module in load_slices()
        for prefix, router in mounted_routers(module)
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in sorted(route.methods or ())
    ]
    assert len(routes) >= 11

    unprotected = [
        f"{method} {path}"
        for method, path, route in routes
        if (method, path) not in PUBLIC_ROUTES and not authenticated & calls_of(route.dependant)
    ]

    assert unprotected == []


def test_no_slice_imports_another() -> None:
    crossings = [
        f"features/{name}/slice.py imports {module}"
        for name in repository_slices()
        for module in imported_modules(FEATURES_DIR / name / "slice.py")
        if module.startswith("features.") and module.split(".")[1] != name
    ]

    assert crossings == []


def test_the_kernel_names_no_slice() -> None:
    sources = sorted(KERNEL_DIR.glob("*.py"))
    assert len(sources) >= 10
    slices = repository_slices()

    named = [
        f"{source.name}: {module}"
        for source in sources
        for module in imported_modules(source)
        if module.startswith("features.") and module.split(".")[1] in slices
    ]
    named += [
        f"{source.name}: {node.value!r}"
        for source in sources
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and any(node.value.startswith(f"features.{name}") for name in slices)
    ]

    assert named == []
