"""Adding a feature as the README tells it gives code that passes CI as generated.

Each test works in a temporary copy of the repository (the source, features, tests,
migrations and pyproject.toml; nothing is written into the real tree), runs the command a
developer runs, then CI's own checks on what it wrote: ruff, ruff format, mypy (strict,
the project's configuration) and the generated test itself, each as a subprocess.
"""

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from kernel.cli import MAX_FEATURE_NAME
from tests.conftest import migrate
from tests.kernel.conftest import EmptyDatabase
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


async def run_tool(
    tool: str, *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> CliResult:
    # The copy's own src/ and root come first, so its kernel and features are imported.
    paths = {"PYTHONPATH": f"{cwd / 'src'}{os.pathsep}{cwd}"}
    return await run_program(str(TOOLS / tool), *args, env=dict(env or os.environ) | paths, cwd=cwd)


def assert_ok(result: CliResult, what: str) -> None:
    assert result.returncode == 0, f"{what}:\n{result.stdout}{result.stderr}"


async def assert_passes_ci(copy: Path, files: list[str], tests: list[str]) -> None:
    """ruff, ruff format and mypy pass on FILES, and then the TESTS among them."""
    for check in (("ruff", "check"), ("ruff", "format", "--check")):
        assert_ok(await run_tool(*check, *files, cwd=copy), " ".join(check))
    cache = mypy_cache(copy.parent)
    assert_ok(await run_tool("mypy", "--cache-dir", str(cache), *files, cwd=copy), "mypy")
    if not tests:
        return
    tested = await run_tool(
        "python", "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "-q", *tests, cwd=copy
    )
    assert_ok(tested, "pytest")
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


BOOKMARKS_SLICE = '''"""A slice with a table of its own, and every kind of column a slice uses."""

import uuid
from datetime import datetime

from fastapi import APIRouter
from sqlmodel import Field, SQLModel

from kernel.db import UTCDateTime, utc_now

router = APIRouter(tags=["bookmarks"])


class Bookmark(SQLModel, table=True):
    __tablename__ = "bookmarks"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    url: str = Field(max_length=2048)
    title: str
    note: str | None = Field(default=None, max_length=500)
    visits: int = Field(default=0)
    starred: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
'''


def add_slice(copy: Path, name: str, source: str) -> None:
    folder = copy / "features" / name
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "slice.py").write_text(source)


async def test_an_autogenerated_migration_passes_lint_and_types_and_applies(
    repository_copy: Path, empty_database: EmptyDatabase, tmp_path: Path
) -> None:
    add_slice(repository_copy, "bookmarks", BOOKMARKS_SLICE)
    env = cli_env(DATABASE_URL=empty_database.operator_url, ENV="test", DATA_DIR=str(tmp_path))
    versions = repository_copy / "migrations" / "versions"
    before = set(versions.glob("*.py"))
    await migrate(empty_database.url)  # the copy's history is still the repository's

    generated = await run_tool(
        "alembic", "revision", "--autogenerate", "-m", "bookmarks", cwd=repository_copy, env=env
    )

    assert_ok(generated, "alembic revision --autogenerate")
    [revision] = set(versions.glob("*.py")) - before
    assert "op.create_table(" in revision.read_text()
    await assert_passes_ci(repository_copy, [str(revision.relative_to(repository_copy))], [])
    # It applies, and afterwards the database is exactly the models.
    assert_ok(await run_tool("alembic", "upgrade", "head", cwd=repository_copy, env=env), "up")
    assert_ok(await run_tool("alembic", "check", cwd=repository_copy, env=env), "alembic check")
