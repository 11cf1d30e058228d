"""Adding a feature as the README tells it gives code that passes CI as generated.

Each test works in a temporary copy of the repository (the source, features, tests,
migrations and pyproject.toml; nothing is written into the real tree), runs the command a
developer runs, then CI's own checks on what it wrote: ruff, ruff format, mypy (strict,
the project's configuration) and the generated test itself, each as a subprocess.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

from kernel.cli import MAX_FEATURE_NAME
from tests.servers import CliResult, cli_env, run_cli, run_program

REPOSITORY = Path(__file__).resolve().parents[2]
COPIED = ("pyproject.toml", "src", "features", "tests", "migrations")
TOOLS = Path(sys.executable).parent
# The shortest name and the longest: the scaffold's lines must fit and format alike.
NAMES = ("a", ("feature_" + "x" * MAX_FEATURE_NAME)[:MAX_FEATURE_NAME])


@pytest.fixture
def repository_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "repository"
    copy.mkdir()
    ignored = shutil.ignore_patterns("__pycache__", ".mypy_cache", ".pytest_cache", "*.db")
    for name in COPIED:
        source = REPOSITORY / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=ignored)
        else:
            shutil.copy2(source, copy / name)
    return copy


def mypy_cache(tmp_path: Path) -> Path:
    """A cache in tmp, seeded from the repository's when CI's own mypy run left one: mypy
    checks every cached module against its source's hash, so the seed only saves time."""
    cache = tmp_path / "mypy-cache"
    if (REPOSITORY / ".mypy_cache").is_dir():
        shutil.copytree(REPOSITORY / ".mypy_cache", cache)
    return cache


async def run_tool(tool: str, *args: str, cwd: Path) -> CliResult:
    # The copy's own src/ and root come first, so its kernel and features are imported.
    env = dict(os.environ) | {"PYTHONPATH": f"{cwd / 'src'}{os.pathsep}{cwd}"}
    return await run_program(str(TOOLS / tool), *args, env=env, cwd=cwd)


async def assert_passes_ci(copy: Path, files: list[str], tests: list[str]) -> None:
    for check in (("ruff", "check"), ("ruff", "format", "--check")):
        result = await run_tool(*check, *files, cwd=copy)
        assert result.returncode == 0, f"{' '.join(check)}:\n{result.stdout}{result.stderr}"
    cache = mypy_cache(copy.parent)
    typed = await run_tool("mypy", "--cache-dir", str(cache), *files, cwd=copy)
    assert typed.returncode == 0, f"mypy:\n{typed.stdout}{typed.stderr}"
    tested = await run_tool(
        "python", "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "-q", *tests, cwd=copy
    )
    assert tested.returncode == 0, f"pytest:\n{tested.stdout}{tested.stderr}"
    assert " passed" in tested.stdout.splitlines()[-1]
    assert " skipped" not in tested.stdout.splitlines()[-1]


async def test_new_feature_output_passes_lint_types_and_its_own_test(
    repository_copy: Path,
) -> None:
    for name in NAMES:
        created = await run_cli("new-feature", name, env=cli_env(), cwd=repository_copy)
        assert created.returncode == 0, created.stderr

    slices = [f"features/{name}/slice.py" for name in NAMES]
    tests = [f"tests/features/test_{name}.py" for name in NAMES]
    await assert_passes_ci(repository_copy, [*slices, *tests], tests)


async def test_new_feature_refuses_a_name_longer_than_the_scaffold_fits(
    repository_copy: Path,
) -> None:
    name = "x" * (MAX_FEATURE_NAME + 1)

    result = await run_cli("new-feature", name, env=cli_env(), cwd=repository_copy)

    assert result.returncode == 1
    assert f"at most {MAX_FEATURE_NAME} characters" in result.stderr
    assert not (repository_copy / "features" / name).exists()
