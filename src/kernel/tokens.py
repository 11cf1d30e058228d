"""Access tokens: signed JWTs naming their user (`sub`) and their session (`sid`).

Refresh tokens and sessions are kernel.sessions.
"""

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt

from kernel.db import utc_now
from kernel.errors import InvalidToken
from kernel.settings import Settings
from kernel.signing_keys import CLOCK_SKEW_SECONDS, Keyring

REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "sid"]


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID


class AccessTokens:
    """Issue and strictly verify access JWTs; an old key still verifies until removed.

    The keys come from the keyring (kernel.signing_keys): every token names its key
    (kid), and verification allows only that key's own algorithm.
    """

    def __init__(self, settings: Settings, keyring: Keyring | None = None) -> None:
        self.keyring = keyring or Keyring(settings)
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
        key = self.keyring.signing_key()
        return jwt.encode(claims, key.signing, algorithm=key.algorithm, headers={"kid": key.kid})

    def verify(self, token: str) -> AccessClaims:
        try:
            key = self.keyring.verifying_key(str(jwt.get_unverified_header(token).get("kid")))
            if key is None:
                raise InvalidToken()
            # Pinned to the named key's algorithm: "none", or HS256 keyed with a public
            # key, or any other algorithm than the key's own is refused.
            claims = jwt.decode(
                token,
                key.verifying,
                algorithms=[key.algorithm],
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
