"""Request media types: a body in a type the route does not take is a 415."""

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection

from kernel.errors import UnsupportedMediaType

JSON_MEDIA_TYPE = "application/json"


def media_type(source: HTTPConnection | Headers | str) -> str:
    """The bare media type ("application/json"), parameters dropped, of a request,
    its headers (the ASGI middleware has no Request) or a Content-Type value."""
    if isinstance(source, HTTPConnection):
        source = source.headers
    if isinstance(source, Headers):
        source = source.get("content-type", "")
    return source.split(";", 1)[0].strip().lower()


def is_json(media: str) -> bool:
    return media == JSON_MEDIA_TYPE or (
        media.startswith("application/") and media.endswith("+json")
    )


def has_body(request: Request) -> bool:
    return (
        request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    )


def require_declared_media_type(request: Request) -> None:
    """App-wide (kernel.app): a route with a JSON body answers 415 to a body of another type.

    Without this, FastAPI validates the raw bytes and answers a confusing 422. Routes
    that read their own body (login takes JSON or a form) check it themselves.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.body_field is None or not has_body(request):
        return
    if not is_json(media_type(request)):
        raise UnsupportedMediaType(f"Send the body as {JSON_MEDIA_TYPE}.")
