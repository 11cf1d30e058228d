"""Input field types shared by the slices that accept user data: strict and normalising.

Password fields and rules live in kernel.passwords.
"""

import unicodedata
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    HttpUrl,
    TypeAdapter,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema
from sqlmodel import SQLModel

EMAIL_MAX_LENGTH = 320


class StrictInput(SQLModel):
    """Base of every request body: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)  # type: ignore[assignment]


def storable(text: str) -> str:
    # PostgreSQL refuses NUL and both databases mangle lone surrogates: refuse them
    # up front so both databases give the same 422.
    if "\x00" in text:
        raise PydanticCustomError("string_nul", "must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "string_surrogate", "must not contain unpaired surrogates"
        ) from None
    return text


# Bidirectional overrides and isolates: they make text read differently from what it is.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# The same rule as JSON Schema patterns, for the documents clients and fuzzers read.
_UNSAFE = r"\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069"
SINGLE_LINE_PATTERN = rf"^[^{_UNSAFE}]*$"
# A name: one line, and something other than whitespace (it is trimmed, then non-empty).
NAME_PATTERN = rf"^[^{_UNSAFE}]*[^\s{_UNSAFE}][^{_UNSAFE}]*$"


def single_line(text: str) -> str:
    """A name is one line of visible text: no newline, tab or other control, no bidi tricks."""
    if any(unicodedata.category(char) == "Cc" or char in _BIDI_CONTROLS for char in text):
        raise PydanticCustomError(
            "string_control_character", "must not contain control or bidi-override characters"
        )
    return text


class Documented:
    """Annotated metadata: JSON Schema keywords (`format`, `pattern`) that describe what
    the field's validators accept, for the documents clients and fuzzers read.

    Not json_schema_extra, which a field's own Field(json_schema_extra=...) would
    replace (update_user's omittable fields set theirs).
    """

    def __init__(self, **keywords: str) -> None:
        self.keywords = keywords

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(schema) | self.keywords


def _trimmed(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def _email(value: str) -> str:
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as error:
        raise PydanticCustomError(
            "email_invalid", "not a valid email address: {reason}", {"reason": str(error)}
        ) from None
    # Full Unicode case folding, here rather than in SQL: SQLite's lower() is ASCII-only.
    folded = checked.normalized.casefold()
    if len(folded) > EMAIL_MAX_LENGTH:  # folding can lengthen it: "ß" becomes "ss"
        raise PydanticCustomError(
            "string_too_long",
            "String should have at most {max} characters",
            {"max": EMAIL_MAX_LENGTH},
        )
    return folded


_url_adapter: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def _http_url(text: str) -> str:
    # Validated as an http(s) URL but stored as sent: no silent rewriting of the address.
    try:
        _url_adapter.validate_python(text)
    except ValidationError:
        raise PydanticCustomError("url_invalid", "must be an http or https URL") from None
    return text


# What `storable` refuses, said in the schema for fields with no pattern of their own,
# so a client or fuzzer that follows the schema never sends a NUL to get a 422.
NO_NUL = Documented(pattern=r"^[^\u0000]*$")
SafeText = Annotated[str, NO_NUL, AfterValidator(storable)]
Name = Annotated[
    str,
    BeforeValidator(_trimmed),
    Field(min_length=1, max_length=100),  # after trimming: whitespace alone is refused
    Documented(pattern=NAME_PATTERN),
    AfterValidator(storable),
    AfterValidator(single_line),
]
Bio = Annotated[str, Field(max_length=1000), NO_NUL, AfterValidator(storable)]
AvatarUrl = Annotated[
    str,
    BeforeValidator(_trimmed),
    Field(max_length=500, json_schema_extra={"format": "uri"}),
    AfterValidator(storable),
    AfterValidator(_http_url),
]
Email = Annotated[
    str,
    BeforeValidator(_trimmed),
    Field(min_length=3, max_length=EMAIL_MAX_LENGTH),
    Documented(format="email"),
    AfterValidator(storable),
    AfterValidator(_email),
]
