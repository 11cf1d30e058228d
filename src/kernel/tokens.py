"""Access tokens: signed JWTs naming their user (`sub`) and their session (`sid`).

Refresh tokens and sessions are kernel.sessions.
"""

import hashlib
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt

from kernel.db import utc_now
from kernel.errors import InvalidToken
from kernel.settings import Settings

ALGORITHM = "HS256"
CLOCK_SKEW_SECONDS = 10
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "sid"]


def _key_id(key: str) -> str:
    # Names a key without revealing it, so a verifier can pick the right one during rotation.
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID


class AccessTokens:
    """Issue and strictly verify access JWTs; an old key still verifies until removed."""

    def __init__(self, settings: Settings) -> None:
        self._signing_key = settings.signing_key
        self._signing_kid = _key_id(self._signing_key)
        self._verifying_keys = {self._signing_kid: self._signing_key}
        if settings.secret_key_previous:
            self._verifying_keys[_key_id(settings.secret_key_previous)] = (
                settings.secret_key_previous
            )
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self.ttl_seconds = settings.access_token_ttl_seconds

    def issue(self, *, user_id: uuid.UUID, session_id: uuid.UUID) -> str:
        now = utc_now()
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": str(user_id),
            "sid": str(session_id),
            "iat": now,
            "nbf": now,
            "exp": now + timedelta(seconds=self.ttl_seconds),
            "jti": uuid.uuid4().hex,
            "typ": "access",
        }
        return jwt.encode(
            claims, self._signing_key, algorithm=ALGORITHM, headers={"kid": self._signing_kid}
        )

    def verify(self, token: str) -> AccessClaims:
        try:
            key = self._verifying_keys[jwt.get_unverified_header(token).get("kid", "")]
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": REQUIRED_CLAIMS},
            )
            if claims.get("typ") != "access":
                raise InvalidToken()
            return AccessClaims(
                user_id=uuid.UUID(claims["sub"]), session_id=uuid.UUID(claims["sid"])
            )
        except (jwt.PyJWTError, KeyError, ValueError, TypeError, AttributeError):
            raise InvalidToken() from None
