"""Input field types shared by the slices that accept user data: strict and normalising."""

import unicodedata
from functools import cache
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError
from sqlmodel import SQLModel

EMAIL_MAX_LENGTH = 320
PASSWORD_MIN_LENGTH = 8  # the floor; PASSWORD_MIN_LENGTH in settings may raise it
PASSWORD_MAX_LENGTH = 256
PASSWORD_RAW_MAX_LENGTH = 1024


class StrictInput(SQLModel):
    """Base of every request body: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)  # type: ignore[assignment]


def _storable(text: str) -> str:
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


def _trimmed(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _nfkc_within_bounds(text: str) -> str:
    normalized = _nfkc(text)
    if len(normalized) < PASSWORD_MIN_LENGTH:
        raise PydanticCustomError(
            "string_too_short",
            "String should have at least {min} characters after NFKC",
            {"min": PASSWORD_MIN_LENGTH},
        )
    if len(normalized) > PASSWORD_MAX_LENGTH:
        raise PydanticCustomError(
            "string_too_long",
            "String should have at most {max} characters after NFKC",
            {"max": PASSWORD_MAX_LENGTH},
        )
    return normalized


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


SafeText = Annotated[str, AfterValidator(_storable)]
Name = Annotated[
    str,
    BeforeValidator(_trimmed),
    Field(min_length=1, max_length=100),  # after trimming: whitespace alone is refused
    AfterValidator(_storable),
]
Bio = Annotated[str, Field(max_length=1000), AfterValidator(_storable)]
AvatarUrl = Annotated[
    str,
    BeforeValidator(_trimmed),
    Field(max_length=500, json_schema_extra={"format": "uri"}),
    AfterValidator(_storable),
    AfterValidator(_http_url),
]
Email = Annotated[
    str,
    BeforeValidator(_trimmed),
    Field(min_length=3, max_length=EMAIL_MAX_LENGTH),
    AfterValidator(_storable),
    AfterValidator(_email),
]
# Length is what API.md says: 8-256 characters *after* NFKC, which JSON Schema cannot
# express; the schema carries only a raw cap (NFKC can expand a character up to 18-fold
# or fold several into one) and the rule itself is in the description.
Password = Annotated[
    str,
    Field(
        max_length=PASSWORD_RAW_MAX_LENGTH,
        description=f"{PASSWORD_MIN_LENGTH}-{PASSWORD_MAX_LENGTH} characters after Unicode "
        "NFKC normalisation (the minimum is PASSWORD_MIN_LENGTH); not a common password, "
        "not the email.",
    ),
    AfterValidator(_storable),
    AfterValidator(_nfkc_within_bounds),
]
# A password being checked rather than set: any length, so an old one still verifies.
CurrentPassword = Annotated[
    str, Field(min_length=1, max_length=4096), AfterValidator(_storable), AfterValidator(_nfkc)
]


@cache
def _common_passwords() -> frozenset[str]:
    # zxcvbn ships the well-known frequency list of leaked passwords (30,000 entries).
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def check_new_password(password: str, *, email: str, min_length: int, field: str) -> None:
    """Rules that depend on settings or on other fields; raise the same 422 as validation."""
    problem: tuple[str, str] | None = None
    if len(password) < min_length:
        problem = ("string_too_short", f"String should have at least {min_length} characters")
    elif password.casefold() in _common_passwords():
        problem = ("password_too_common", "This password is among the most commonly used")
    elif password.casefold() == email.casefold():
        # API.md gives this the same type as a common password: both are guessable.
        problem = ("password_too_common", "The password must not be the email address")
    if problem:
        kind, message = problem
        raise RequestValidationError([{"loc": ("body", field), "msg": message, "type": kind}])
