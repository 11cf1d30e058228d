"""GET /.well-known/jwks.json and /.well-known/oauth-authorization-server (API.md v1.1,
"Tokens other services can verify").

What another service needs to verify our access tokens without any shared secret: the
public keys (RFC 7517 JWK Set) and where to find them (RFC 8414 metadata). Both paths
are fixed by those standards, so they are on `root_router`, outside /api/v1.
"""

from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from kernel.deps import AccessTokensDep, SettingsDep
from kernel.slices import LOGIN_PATH

router = APIRouter(tags=["discovery"])
root_router = APIRouter(tags=["discovery"])
JWKS_PATH = "/.well-known/jwks.json"
# The metadata changes only with a redeploy; the key set is re-read more often.
METADATA_MAX_AGE_SECONDS = 3600


class JsonWebKeySet(BaseModel):
    keys: list[dict[str, Any]]


class AuthorizationServerMetadata(BaseModel):
    issuer: str
    jwks_uri: str
    token_endpoint: str
    grant_types_supported: list[Literal["password", "refresh_token"]]
    token_endpoint_auth_methods_supported: list[Literal["none"]]


def jwks_max_age(key_publish_seconds: int) -> int:
    # A new key is published KEY_PUBLISH_SECONDS before it signs: a verifier that caches
    # the set for half of that still has the key before the first token it signs.
    return max(1, min(METADATA_MAX_AGE_SECONDS, key_publish_seconds // 2))


@root_router.get(JWKS_PATH)
async def jwks_route(
    response: Response, tokens: AccessTokensDep, settings: SettingsDep
) -> JsonWebKeySet:
    """The public keys that verify our access tokens (empty with HS256).

    A JWK Set; cache it as Cache-Control says and fetch it again on an unknown kid.
    """
    response.headers["Cache-Control"] = (
        f"public, max-age={jwks_max_age(settings.key_publish_seconds)}"
    )
    return JsonWebKeySet(keys=tokens.keyring.jwks()["keys"])


@root_router.get("/.well-known/oauth-authorization-server")
async def authorization_server_metadata_route(
    request: Request, response: Response, settings: SettingsDep
) -> AuthorizationServerMetadata:
    """RFC 8414 metadata: the issuer, the JWKS URL and the token endpoint.

    For clients and services that discover how to verify our tokens.
    """
    response.headers["Cache-Control"] = f"public, max-age={METADATA_MAX_AGE_SECONDS}"
    # Absolute URLs as the client reached us (uvicorn applies X-Forwarded-* headers).
    base = str(request.base_url).rstrip("/")
    return AuthorizationServerMetadata(
        issuer=settings.jwt_issuer,
        jwks_uri=base + JWKS_PATH,
        token_endpoint=base + LOGIN_PATH,
        grant_types_supported=["password", "refresh_token"],
        token_endpoint_auth_methods_supported=["none"],
    )
