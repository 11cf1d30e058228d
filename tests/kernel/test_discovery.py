"""Slice discovery (DESIGN.md rule 2): discovered, not listed; loud on failure; deterministic.

Every slice folder a test makes lives in a temporary directory: `userapi new-feature` runs
in a temporary project root, and the other cases use the `more_features` folder, which the
`features` package searches for that test only. Nothing is written into the source tree.
"""

import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

import features
from kernel.app import create_app
from kernel.settings import Settings
from kernel.slices import SliceError
from tests.conftest import make_settings, sqlite_copy
from tests.factories import assert_problem, make_user, register, serving
from tests.kernel.helpers import FEATURES_DIR, forget_modules, slice_folder, unique_name
from tests.servers import cli_env, run_cli

ANSWERING_SLICE = '''
from fastapi import APIRouter

router = APIRouter()


@router.get("/{path}")
async def answer_{name}() -> dict[str, str]:
    """Say which slice answered."""
    return {{"slice": "{name}"}}
'''


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty project root (features/, tests/features/) whose slices the app discovers."""
    root = tmp_path / "project"
    (root / "features").mkdir(parents=True)
    (root / "tests" / "features").mkdir(parents=True)
    monkeypatch.setattr(features, "__path__", [*features.__path__, str(root / "features")])
    yield root
    for child in (root / "features").iterdir():
        forget_modules(f"{features.__name__}.{child.name}")


def offline_settings(tmp_path: Path) -> Settings:
    """Settings for an app that is built but never serves (start-up fails before that)."""
    return make_settings(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}", tmp_path)


def answering_slice(name: str, path: str) -> str:
    return ANSWERING_SLICE.format(name=name, path=path)


# --- userapi new-feature ----------------------------------------------------------------


async def test_new_feature_copies_a_slice_and_its_test(project: Path) -> None:
    name = unique_name("kernel_probe")

    result = await run_cli("new-feature", name, env=cli_env(), cwd=project)

    assert result.returncode == 0, result.stderr
    slice_source = (project / "features" / name / "slice.py").read_text()
    test_source = (project / "tests" / "features" / f"test_{name}.py").read_text()
    assert '@router.get("/' + name.replace("_", "-") + '")' in slice_source
    assert f"def test_{name}_counts_active_users" in test_source
    assert (project / "features" / name / "__init__.py").is_file()


async def test_a_slice_made_by_new_feature_is_mounted_without_kernel_edits(
    project: Path, settings: Settings
) -> None:
    name = unique_name("kernel_probe")
    result = await run_cli("new-feature", name, env=cli_env(), cwd=project)
    assert result.returncode == 0, result.stderr

    async with serving(settings) as (_, http):
        account = await make_user(http)
        response = await http.get(f"/api/v1/{name.replace('_', '-')}", headers=account.headers)

    assert response.status_code == 200, response.text
    assert response.json() == {"active_users": 1}


@pytest.mark.parametrize("name", ["Bad-Name", "9lives", "class", "with space"])
async def test_new_feature_refuses_a_name_that_is_not_a_python_identifier(
    project: Path, name: str
) -> None:
    result = await run_cli("new-feature", name, env=cli_env(), cwd=project)

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (project / "features" / name).exists()


async def test_new_feature_refuses_an_existing_slice(project: Path) -> None:
    (project / "features" / "login").mkdir()
    (project / "features" / "login" / "slice.py").write_text("# the real one\n")

    result = await run_cli("new-feature", "login", env=cli_env(), cwd=project)

    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert (project / "features" / "login" / "slice.py").read_text() == "# the real one\n"


async def test_new_feature_outside_a_project_root_says_where_to_run_it(tmp_path: Path) -> None:
    result = await run_cli("new-feature", "saved_searches", env=cli_env(), cwd=tmp_path)

    assert result.returncode == 1
    assert "project root" in result.stderr
    assert not (tmp_path / "features").exists()


# --- loud on failure --------------------------------------------------------------------


@pytest.mark.parametrize(
    "source", ["answer = 42\n", "router = object()\n"], ids=["no_router", "not_an_api_router"]
)
def test_a_slice_without_an_api_router_stops_start_up(
    more_features: Path, tmp_path: Path, source: str
) -> None:
    name = unique_name("routerless")

    with slice_folder(more_features, name, source), pytest.raises(SliceError, match=name):
        create_app(offline_settings(tmp_path))


def test_a_copied_slice_claiming_a_route_of_the_original_stops_start_up(
    more_features: Path, tmp_path: Path
) -> None:
    # Mounted first (sorted by name), a copy of get_user would answer GET /users/me.
    copy = unique_name("aaa_copy")
    source = (FEATURES_DIR / "get_user" / "slice.py").read_text()

    with (
        slice_folder(more_features, copy, source),
        pytest.raises(SliceError, match=f"GET /api/v1/users/me is claimed by slice {copy}"),
    ):
        create_app(offline_settings(tmp_path))


def test_two_slices_on_one_method_and_path_stop_start_up_naming_both(
    more_features: Path, tmp_path: Path
) -> None:
    suffix = unique_name("twice")
    first, last = f"aa_{suffix}", f"zz_{suffix}"
    path = suffix.replace("_", "-")

    with (
        slice_folder(more_features, last, answering_slice(last, path)),
        slice_folder(more_features, first, answering_slice(f"{first}_other", path)),
        pytest.raises(SliceError) as refused,
    ):
        create_app(offline_settings(tmp_path))

    message = str(refused.value)
    assert f"slice {first}" in message
    assert f"slice {last}" in message
    assert len(message.splitlines()) == 1


def test_a_route_shadowed_by_a_path_parameter_stops_start_up(
    more_features: Path, tmp_path: Path
) -> None:
    # PREFIX/{anything}, mounted first, would answer every request meant for PREFIX/literal.
    suffix = unique_name("shadow")
    first, last = f"aa_{suffix}", f"zz_{suffix}"
    prefix = suffix.replace("_", "-")
    catch_all = (
        answering_slice(first, prefix + "/{anything}")
        .replace(f"def answer_{first}", f"def answer_any_{first}")
        .replace("() -> dict", "(anything: str) -> dict")
    )

    with (
        slice_folder(more_features, first, catch_all),
        slice_folder(more_features, last, answering_slice(last, f"{prefix}/literal")),
        pytest.raises(SliceError, match=f"claimed by slice {first} and by slice {last}"),
    ):
        create_app(offline_settings(tmp_path))


def test_two_slices_with_one_operation_id_stop_start_up_naming_both(
    more_features: Path, tmp_path: Path
) -> None:
    suffix = unique_name("same_id")
    first, last = f"aa_{suffix}", f"zz_{suffix}"
    # Different paths, one function name: generated clients would get one method for two.
    same_function = "answer_same"

    with (
        slice_folder(
            more_features,
            first,
            answering_slice(first, f"{first}-a").replace(f"answer_{first}", same_function),
        ),
        slice_folder(
            more_features,
            last,
            answering_slice(last, f"{last}-b").replace(f"answer_{last}", same_function),
        ),
        pytest.raises(
            SliceError,
            match=f"operation id 'answer_same' is used by slice {first} and by slice {last}",
        ),
    ):
        create_app(offline_settings(tmp_path))


def test_a_folder_without_init_stops_start_up(more_features: Path, tmp_path: Path) -> None:
    name = unique_name("not_a_package")
    (more_features / name).mkdir()
    (more_features / name / "slice.py").write_text(answering_slice(name, name))

    with pytest.raises(SliceError, match=f"{name} is not a package"):
        create_app(offline_settings(tmp_path))


def test_a_folder_without_slice_py_stops_start_up(more_features: Path, tmp_path: Path) -> None:
    name = unique_name("no_slice")
    (more_features / name).mkdir()
    (more_features / name / "__init__.py").write_text("")
    (more_features / name / "handlers.py").write_text(answering_slice(name, name))

    with pytest.raises(SliceError, match=f"{name} has no slice.py"):
        create_app(offline_settings(tmp_path))


def test_a_stray_module_in_features_stops_start_up(more_features: Path, tmp_path: Path) -> None:
    name = unique_name("stray")
    (more_features / f"{name}.py").write_text(answering_slice(name, name))

    with pytest.raises(SliceError, match=f"{name}.py: a slice is a folder holding slice.py"):
        create_app(offline_settings(tmp_path))


def test_a_slice_that_fails_to_import_stops_start_up(more_features: Path, tmp_path: Path) -> None:
    name = unique_name("broken")
    source = f"import missing_dependency_{name}\n"

    with slice_folder(more_features, name, source), pytest.raises(ModuleNotFoundError):
        create_app(offline_settings(tmp_path))


# --- skipped and ordered ----------------------------------------------------------------


def test_a_folder_starting_with_underscore_is_never_imported(
    more_features: Path, tmp_path: Path
) -> None:
    name = unique_name("_draft")

    with slice_folder(more_features, name, "raise RuntimeError('must not be imported')\n"):
        create_app(offline_settings(tmp_path))  # start-up does not fail

        assert f"{features.__name__}.{name}" not in sys.modules


async def test_a_folder_starting_with_underscore_is_not_mounted(
    more_features: Path, settings: Settings
) -> None:
    name = unique_name("_draft")
    path = name.strip("_").replace("_", "-")

    with slice_folder(more_features, name, answering_slice(name, path)):
        async with serving(settings) as (_, http):
            response = await http.get(f"/api/v1/{path}")

    assert_problem(response, 404, "not_found")


async def test_an_extra_slice_folder_is_mounted(more_features: Path, settings: Settings) -> None:
    # The control for the underscore tests: the same folder without "_" does answer.
    name = unique_name("extra")
    path = name.replace("_", "-")

    with slice_folder(more_features, name, answering_slice(name, path)):
        async with serving(settings) as (_, http):
            response = await http.get(f"/api/v1/{path}")

    assert response.status_code == 200, response.text
    assert response.json() == {"slice": name}


async def test_slices_are_mounted_sorted_by_name(more_features: Path, settings: Settings) -> None:
    suffix = unique_name("order")
    names = [f"s{index}_{suffix}" for index in range(6)]

    with ExitStack() as stack:
        for name in reversed(names):  # created in reverse order on purpose
            stack.enter_context(slice_folder(more_features, name, answering_slice(name, name)))
        async with serving(settings) as (_, http):
            document = (await http.get("/openapi.json")).json()

    # Paths are documented in the order their routes were mounted.
    mounted = [path.removeprefix("/api/v1/") for path in document["paths"]]
    assert [name for name in mounted if name in names] == names


# --- root_router: routes at a path a standard fixes, outside /api/v1 -------------------

ROOT_SLICE = """
from fastapi import APIRouter

router = APIRouter()
root_router = APIRouter()


@root_router.get("{path}")
async def answer_{name}() -> dict[str, str]:
    return {{"slice": "{name}"}}
"""


async def test_a_slice_root_router_is_mounted_at_the_root(
    more_features: Path, settings: Settings
) -> None:
    name = unique_name("rooted")
    path = f"/.well-known/{name}"

    with slice_folder(more_features, name, ROOT_SLICE.format(name=name, path=path)):
        async with serving(settings) as (_, http):
            response = await http.get(path)
            under_prefix = await http.get(f"/api/v1{path}")

    assert response.status_code == 200, response.text
    assert response.json() == {"slice": name}
    assert_problem(under_prefix, 404, "not_found")


@pytest.mark.parametrize(
    ("path", "owner"), [("/health", "the kernel"), ("/.well-known/jwks.json", "slice well_known")]
)
def test_a_root_route_claimed_twice_stops_start_up(
    more_features: Path, tmp_path: Path, path: str, owner: str
) -> None:
    name = unique_name("zz_rooted")

    with (
        slice_folder(more_features, name, ROOT_SLICE.format(name=name, path=path)),
        pytest.raises(SliceError, match=f"GET {path} is claimed by {owner} and by slice {name}"),
    ):
        create_app(offline_settings(tmp_path))


def test_a_root_router_that_is_not_an_api_router_stops_start_up(
    more_features: Path, tmp_path: Path
) -> None:
    name = unique_name("bad_root")
    source = "from fastapi import APIRouter\n\nrouter = APIRouter()\nroot_router = object()\n"

    with slice_folder(more_features, name, source), pytest.raises(SliceError, match=name):
        create_app(offline_settings(tmp_path))


# --- one process, several apps ---------------------------------------------------------


async def test_apps_of_one_process_answer_from_their_own_database(
    settings: Settings, sqlite_template: Path, tmp_path: Path
) -> None:
    # The slice routes are built once per process and shared by its apps: nothing of
    # one app may reach a request to another.
    other = make_settings(sqlite_copy(sqlite_template, tmp_path / "other.db"), tmp_path)

    async with serving(settings) as (_, first), serving(other) as (_, second):
        account = await make_user(first)
        seen_by_second = await second.get("/api/v1/users/me", headers=account.headers)
        again_on_second = await register(second, email=account.email)
        seen_by_first = await first.get("/api/v1/users/me", headers=account.headers)

    assert_problem(seen_by_second, 401, "invalid_token")
    assert again_on_second.id != account.id
    assert seen_by_first.status_code == 200, seen_by_first.text
    assert seen_by_first.json()["id"] == account.id


def test_a_dependency_override_is_refused_not_ignored(tmp_path: Path) -> None:
    # The shared routes read no app's overrides: setting one would silently do nothing.
    app = create_app(offline_settings(tmp_path))

    async def stand_in() -> None:
        return None

    with pytest.raises(TypeError):
        app.dependency_overrides[stand_in] = stand_in
