"""Slice discovery (DESIGN.md rule 2): discovered, not listed; loud on failure; deterministic.

`userapi new-feature` writes into the real features/ folder (removed afterwards). The other
cases put their slice folders in a temporary directory added to the `features` package's
search path, so a deliberately broken slice never reaches another test run's start-up.
"""

import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path

import pytest

import features
from kernel.app import create_app
from kernel.settings import Settings
from kernel.slices import SliceError
from tests.conftest import make_settings
from tests.factories import assert_problem, make_user, serving
from tests.kernel.helpers import (
    FEATURES_DIR,
    REPOSITORY,
    forget_modules,
    remove_slice_folder,
    slice_folder,
    unique_name,
)
from tests.servers import CliResult, cli_env, run_cli

ANSWERING_SLICE = '''
from fastapi import APIRouter

router = APIRouter()


@router.get("/{path}")
async def answer_{name}() -> dict[str, str]:
    """Say which slice answered."""
    return {{"slice": "{name}"}}
'''


@asynccontextmanager
async def new_feature(name: str, cwd: Path) -> AsyncIterator[CliResult]:
    """`userapi new-feature NAME`; whatever it wrote is removed afterwards."""
    test_file = REPOSITORY / "tests" / "features" / f"test_{name}.py"
    try:
        yield await run_cli("new-feature", name, env=cli_env(), cwd=cwd)
    finally:
        test_file.unlink(missing_ok=True)
        remove_slice_folder(FEATURES_DIR / name)


@pytest.fixture
def more_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A second folder of slices that the `features` package searches, for this test only."""
    folder = tmp_path / "more_features"
    folder.mkdir()
    monkeypatch.setattr(features, "__path__", [*features.__path__, str(folder)])
    yield folder
    for child in folder.iterdir():
        forget_modules(f"{features.__name__}.{child.name}")


def offline_settings(tmp_path: Path) -> Settings:
    """Settings for an app that is built but never serves (start-up fails before that)."""
    return make_settings(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}", tmp_path)


def answering_slice(name: str, path: str) -> str:
    return ANSWERING_SLICE.format(name=name, path=path)


# --- userapi new-feature ----------------------------------------------------------------


async def test_new_feature_copies_a_slice_and_its_test(tmp_path: Path) -> None:
    name = unique_name("kernel_probe")

    async with new_feature(name, tmp_path) as result:
        assert result.returncode == 0, result.stderr
        slice_source = (FEATURES_DIR / name / "slice.py").read_text()
        test_source = (REPOSITORY / "tests" / "features" / f"test_{name}.py").read_text()

    assert '@router.get("/' + name.replace("_", "-") + '")' in slice_source
    assert f"def test_{name}_counts_active_users" in test_source


async def test_a_slice_made_by_new_feature_is_mounted_without_kernel_edits(
    settings: Settings, tmp_path: Path
) -> None:
    name = unique_name("kernel_probe")

    async with new_feature(name, tmp_path) as result:
        assert result.returncode == 0, result.stderr
        # Only the slice matters here; its test must not linger for other runs to collect.
        (REPOSITORY / "tests" / "features" / f"test_{name}.py").unlink()
        async with serving(settings) as (_, http):
            account = await make_user(http)
            response = await http.get(f"/api/v1/{name.replace('_', '-')}", headers=account.headers)

    assert response.status_code == 200, response.text
    assert response.json() == {"active_users": 1}


@pytest.mark.parametrize("name", ["Bad-Name", "9lives", "class", "with space"])
async def test_new_feature_refuses_a_name_that_is_not_a_python_identifier(
    tmp_path: Path, name: str
) -> None:
    async with new_feature(name, tmp_path) as result:
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (FEATURES_DIR / name).exists()


async def test_new_feature_refuses_an_existing_slice(tmp_path: Path) -> None:
    before = (FEATURES_DIR / "login" / "slice.py").read_text()

    result = await run_cli("new-feature", "login", env=cli_env(), cwd=tmp_path)

    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert (FEATURES_DIR / "login" / "slice.py").read_text() == before


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


async def test_of_two_slices_on_one_path_the_first_by_name_answers(
    more_features: Path, settings: Settings
) -> None:
    suffix = unique_name("order")
    path = suffix.replace("_", "-")
    last, first = f"zz_{suffix}", f"aa_{suffix}"  # created in reverse order on purpose

    with (
        slice_folder(more_features, last, answering_slice(last, path)),
        slice_folder(more_features, first, answering_slice(first, path)),
    ):
        async with serving(settings) as (_, http):
            response = await http.get(f"/api/v1/{path}")

    assert response.json() == {"slice": first}


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
