"""docs/api.md, the HTTP reference users read, says what /openapi.json says: the same
endpoints, and for each the same error codes, so neither can drift from the other."""

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.kernel.test_openapi import fetch_openapi, operations

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "api.md"
SECTION = re.compile(r"^### (GET|POST|PUT|PATCH|DELETE) (\S+)$", re.MULTILINE)
CODE = re.compile(r"`([a-z_]+)`")
TABLE_ROW = re.compile(r"^\| (\d{3}) \| `([a-z_]+)` \|", re.MULTILINE)
# Listed once, in the reference's table of errors any route may answer.
COMMON = {
    "not_authenticated",
    "invalid_token",
    "payload_too_large",
    "unsupported_media_type",
    "validation_error",
    "internal_error",
    "database_unavailable",
}
# The documents do not depend on the database: one is enough.
ONE_DATABASE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def documented() -> dict[tuple[str, str], set[str]]:
    """Each endpoint of the reference, with the codes of its "Errors:" paragraph."""
    text = REFERENCE.read_text()
    headings = list(SECTION.finditer(text))
    found = {}
    for heading, following in zip(headings, [*headings[1:], None], strict=True):
        body = text[heading.end() : following.start() if following else len(text)]
        errors = body[body.index("Errors:") :].split("\n\n", 1)[0]
        found[(heading[1].lower(), heading[2])] = set(CODE.findall(errors))
    return found


def codes_by_status(operation: dict[str, Any]) -> set[tuple[int, str]]:
    return {
        (int(status), code)
        for status, response in operation["responses"].items()
        for code in CODE.findall(response.get("description", ""))
    }


@ONE_DATABASE
async def test_the_reference_documents_every_endpoint_and_nothing_else(
    client: httpx.AsyncClient,
) -> None:
    assert set(documented()) == set(operations(await fetch_openapi(client)))


@ONE_DATABASE
async def test_each_endpoint_lists_the_error_codes_it_can_answer(
    client: httpx.AsyncClient,
) -> None:
    reference = documented()
    for key, operation in operations(await fetch_openapi(client)).items():
        published = {code for _, code in codes_by_status(operation)}
        assert reference[key] - COMMON == published - COMMON, key


@ONE_DATABASE
async def test_the_table_of_codes_is_every_status_and_code_in_use(
    client: httpx.AsyncClient,
) -> None:
    in_use = set()
    for operation in operations(await fetch_openapi(client)).values():
        in_use |= codes_by_status(operation)
    tables = REFERENCE.read_text().split("Every code the service uses:", 1)[1]
    table = {(int(status), code) for status, code in TABLE_ROW.findall(tables)}

    assert table == in_use
