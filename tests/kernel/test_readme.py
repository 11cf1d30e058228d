"""The README's walkthrough runs as written: its shell block, verbatim, in bash against a
real `userapi serve`, from a folder laid out like the repository root."""

import asyncio
import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from tests.forkserver import USERAPI
from tests.servers import running_server, server_env

README = Path(__file__).resolve().parents[2] / "README.md"
WALKTHROUGH_SECONDS = 120


def walkthrough() -> str:
    """The first shell block of the "Endpoints" section."""
    section = README.read_text().split("\n## Endpoints\n", 1)[1]
    found = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert found, "no shell block in the README's Endpoints section"
    return found[1]


@pytest.mark.skipif(
    not (shutil.which("jq") or os.environ.get("CI") == "true"), reason="jq is not installed"
)
async def test_the_readmes_walkthrough_runs_as_written(database_url: str, tmp_path: Path) -> None:
    # As the README's reader has it: the virtualenv's `userapi`, a fresh data/ folder.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "userapi").symlink_to(USERAPI)
    script = tmp_path / "walkthrough.sh"
    script.write_text(walkthrough())
    # The default per-IP rate: the walkthrough must fit in it.
    env = server_env(database_url, RATE_LIMIT_PER_IP="60/minute")
    async with running_server(database_url, tmp_path, env={"RATE_LIMIT_PER_IP": "60/minute"}) as (
        server
    ):
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-euo",
            "pipefail",
            str(script),
            cwd=tmp_path,
            env=env | {"BASE": server.base_url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(WALKTHROUGH_SECONDS):
            output, _ = await process.communicate()
        transcript = output.decode(errors="replace")
        assert process.returncode == 0, transcript[-3000:]

        async with httpx.AsyncClient(base_url=server.base_url) as client:
            after = await client.post(
                "/api/v1/auth/login",
                json={"email": "ada@example.com", "password": "a fresh long passphrase"},
            )
    exported = json.loads((tmp_path / "data" / "ada-export.json").read_text())
    assert exported["tables"]["users"][0]["bio"] == "First programmer"
    assert after.status_code == 401  # the walkthrough ends by erasing the account
