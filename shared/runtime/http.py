"""What the services' HTTP hosts share beyond authentication: bounded request bodies, JSON
bodies read without a 5xx on hostile input, and the OpenAPI document of a service's routes
(docs/SECURITY.md §5)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.runtime import auth

__all__ = ["MAX_BODY_BYTES", "BadRequest", "BoundBodies", "bad_request", "json_body", "openapi_document"]

MAX_BODY_BYTES = 16 * 1024  # the one body any route takes is a national id


class BadRequest(Exception):
    """A request a route cannot read (HTTP 400 for a body, 413 when too large)."""

    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class BoundBodies:
    """ASGI middleware: a body over MAX_BODY_BYTES is refused with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(scope, receive, send, self.limit)
            return
        seen = 0

        async def bounded() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BadRequest(f"the body exceeds {self.limit} bytes", 413)
            return message

        await self.app(scope, bounded, send)


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = JSONResponse(
        {"error": "too_large", "detail": f"the body exceeds {limit} bytes"}, status_code=413
    )
    await response(scope, receive, send)


async def json_body(request: Request) -> Any:
    """The request's JSON body, or BadRequest (400) for anything hostile: not JSON, nested
    deeper than orjson's 1,024 levels, numbers beyond 64 bits or double range."""
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not JSON this service accepts") from None


async def bad_request(request: Request, exc: Exception) -> JSONResponse:
    status = exc.status if isinstance(exc, BadRequest) else 400
    detail = exc.detail if isinstance(exc, BadRequest) else "bad request"
    return JSONResponse({"error": "bad_request" if status == 400 else "too_large", "detail": detail},
                        status_code=status)


def _path_template(path: str) -> str:
    """A Starlette path as OpenAPI writes it: ``{ref:path}`` becomes ``{ref}``."""
    return re.sub(r"{(\w+)(:\w+)?}", r"{\1}", path)


def openapi_document(title: str, routes: Sequence[BaseRoute],
                     described: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``: every path and method with its path parameters,
    and what ``described`` adds per path template (query parameters, request body, summary)."""
    described = described or {}
    paths: dict[str, Any] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        template = _path_template(route.path)
        extra = described.get(template, {})
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r"{(\w+)}", template)]
        params += [{"name": name, "in": "query", "required": False, "schema": schema}
                   for name, schema in extra.get("query", {}).items()]
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            operation: dict[str, Any] = {
                "summary": extra.get("summary", (route.endpoint.__doc__ or route.name).strip()),
                "operationId": f"{method.lower()}_{route.name}_{len(paths)}",
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
            }
            if template in PUBLIC_DOC_PATHS or template.startswith(auth.PUBLIC_PREFIXES):
                operation["security"] = []
            if "body" in extra:
                operation["requestBody"] = {
                    "required": True, "content": {"application/json": {"schema": extra["body"]}},
                }
            paths.setdefault(template, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }


PUBLIC_DOC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
