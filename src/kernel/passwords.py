"""What makes a password acceptable, in one place (API.md, "register": Password).

8 to 256 characters after Unicode NFKC normalisation (PASSWORD_MIN_LENGTH may raise the
floor), no composition rules, not among the well-known leaked passwords, not the email.
Hashing is kernel.hashing; counting guesses is kernel.guesses.
"""

import unicodedata
from functools import cache
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from kernel.errors import InvalidInput
from kernel.fields import NO_NUL, storable

PASSWORD_MIN_LENGTH = 8  # the floor; PASSWORD_MIN_LENGTH in settings may raise it
PASSWORD_MAX_LENGTH = 256
PASSWORD_RAW_MAX_LENGTH = 1024


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
    NO_NUL,
    AfterValidator(storable),
    AfterValidator(_nfkc_within_bounds),
]
# A password being checked rather than set: any length, so an old one still verifies.
CurrentPassword = Annotated[
    str,
    Field(min_length=1, max_length=4096),
    NO_NUL,
    AfterValidator(storable),
    AfterValidator(_nfkc),
]


@cache
def _common_passwords() -> frozenset[str]:
    # zxcvbn ships the well-known frequency list of leaked passwords (30,000 entries).
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def check_new_password(
    password: str, *, email: str, min_length: int, field: str = "password"
) -> None:
    """The rules that depend on settings or on other fields: a 422 like any invalid field."""
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
        raise InvalidInput.at(("body", field), message, kind)
