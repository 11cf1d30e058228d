"""Keyset pages: signed cursors and the "after this row" condition, for every paged list.

A cursor holds the sort key of the last row returned, so each page is one index range
scan however deep it is, and rows inserted meanwhile never shift a page. Cursors are
`payload.signature`, both base64url, signed with a key derived from SECRET_KEY for one
purpose, so an edited or forged one, or one of another list, is refused.
"""

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, bindparam, tuple_

from kernel.errors import ProblemError

T = TypeVar("T")
Q = TypeVar("Q", bound=Select[Any])


class InvalidCursor(ProblemError):
    status, code, detail = 422, "invalid_cursor", "The cursor is malformed or was altered."


# Documented shape only: the codec itself checks it, so that any malformed cursor gets
# the contract's 422 invalid_cursor rather than a generic validation error. The shape
# is exactly what encode() writes: a JSON list ("[" is base64url "W"), a dot, and the
# 16-byte signature (22 characters). Which cursors are signed, no schema can say.
CURSOR_MAX_LENGTH = 1000
SIGNATURE_BYTES = 16
CURSOR_SCHEMA: dict[str, Any] = {
    "maxLength": CURSOR_MAX_LENGTH,
    "pattern": r"^W[A-Za-z0-9_-]*\.[A-Za-z0-9_-]{22}$",
}
# The names of a paged query's parameters that hold the cursor's values.
_AFTER_KEY, _AFTER_ID = "after_key", "after_id"


class CursorCodec:
    """Signs a JSON list of strings into a cursor, and opens one (422 invalid_cursor).

    Strings only: a sort key or an id is carried as text and parsed by the list itself.
    Checking that here means a cursor signed with the real key but holding another JSON
    value (a list, an object, a number) is refused like a forged one by every list,
    instead of reaching its parser or a query as a value of the wrong type.
    """

    def __init__(self, secret: str, purpose: str) -> None:
        self._key = hashlib.sha256(f"{purpose} cursor:{secret}".encode()).digest()

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:SIGNATURE_BYTES]

    def encode(self, values: list[str]) -> str:
        payload = json.dumps(values, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def decode(self, cursor: str, parse: Callable[[list[str]], T]) -> T:
        """The values `encode` signed, given to `parse`; any failure is invalid_cursor."""
        try:
            if len(cursor) > CURSOR_MAX_LENGTH or not cursor.isascii():
                raise InvalidCursor()
            payload_part, signature_part = cursor.split(".")
            payload = _unb64(payload_part)
            if not hmac.compare_digest(self._sign(payload), _unb64(signature_part)):
                raise InvalidCursor()
            values = json.loads(payload)
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise InvalidCursor()
            return parse(values)
        except (ValueError, TypeError, binascii.Error):
            raise InvalidCursor() from None


class Keyset:
    """A list's order, by (sort key, id) ascending or descending, and its pages: the rows
    just past a cursor's position in that order, one index range condition.

    Built once per order, with bind parameters, so that a page's cursor gives only their
    values. Building the row comparison anew for every page, the cursor's values in it,
    was most of what a deep page cost beyond the first (bench/explain_pages.py): the
    database's work is the same.
    """

    def __init__(self, key: Any, row_id: Any, *, descending: bool) -> None:
        rows = tuple_(key, row_id)
        cursor = tuple_(
            bindparam(_AFTER_KEY, type_=key.type), bindparam(_AFTER_ID, type_=row_id.type)
        )
        self._after: ColumnElement[bool] = rows < cursor if descending else rows > cursor
        self._order = (key.desc(), row_id.desc()) if descending else (key, row_id)

    def page(
        self, query: Q, position: tuple[Any, Any] | None, *, rows: int
    ) -> tuple[Q, dict[str, Any]]:
        """`query` in this order, from just past `position` (a cursor's sort key and id;
        None for the first page), at most `rows` rows; and the parameters to run it with."""
        query = query.order_by(*self._order).limit(rows)
        if position is None:
            return query, {}
        key, row_id = position
        return query.where(self._after), {_AFTER_KEY: key, _AFTER_ID: row_id}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
