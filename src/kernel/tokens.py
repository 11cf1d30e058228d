"""Access tokens: signed JWTs naming their user (`sub`) and their session (`sid`).

Refresh tokens and sessions are kernel.sessions.
"""

import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

import jwt

from kernel.db import utc_now
from kernel.errors import InvalidToken
from kernel.settings import Settings
from kernel.signing_keys import CLOCK_SKEW_SECONDS, Keyring

REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "sid"]


# Tokens whose signature and claims were checked, kept with what the check found: an
# Ed25519 verification costs about 100 µs of CPU (PyJWT's parsing as much again), on
# every authenticated request, for a token the same client sends again and again. Only
# what passed is kept; what depends on the time (exp, nbf) and on the keyring (a key
# retired or removed) is checked again on every use. About 1 KiB each.
VERIFIED_TOKENS_KEPT = 4096


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID


@dataclass(frozen=True)
class _Checked:
    kid: str
    not_before: float  # POSIX seconds: the later of nbf and iat
    expires: float
    claims: AccessClaims


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
        self._checked = lru_cache(maxsize=VERIFIED_TOKENS_KEPT)(self._check_signature_and_claims)

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
        """The token's claims, if it is one of ours, signed by a key still trusted, and
        within its lifetime now; else InvalidToken."""
        checked = self._checked(token)
        now = time.time()
        if (
            not checked.not_before - CLOCK_SKEW_SECONDS
            <= now
            < checked.expires + CLOCK_SKEW_SECONDS
        ):
            raise InvalidToken()
        # Asked each time: a key retired or removed since stops its tokens at once.
        if self.keyring.verifying_key(checked.kid) is None:
            raise InvalidToken()
        return checked.claims

    def _check_signature_and_claims(self, token: str) -> _Checked:
        try:
            kid = str(jwt.get_unverified_header(token).get("kid"))
            key = self.keyring.verifying_key(kid)
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
            return _Checked(
                kid=kid,
                not_before=max(float(claims["nbf"]), float(claims["iat"])),
                expires=float(claims["exp"]),
                claims=AccessClaims(
                    user_id=uuid.UUID(claims["sub"]), session_id=uuid.UUID(claims["sid"])
                ),
            )
        except (jwt.PyJWTError, KeyError, ValueError, TypeError, AttributeError):
            raise InvalidToken() from None
