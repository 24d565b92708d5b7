"""Errors of the service and how each becomes a status code and a JSON body.

Every error body is ``{"error": {"type", "message", "status", "reason"?}, "message"}``. The mapping:

========================================  ======  =========================
cause                                     status  ``type``
========================================  ======  =========================
body is not JSON                          400     ``invalid_json``
body is empty                             400     ``invalid_input``
empty documents, empty query              400     ``invalid_input``
wrong types, unknown fields, bad top_n    422     ``validation_error``
document or query cannot be scored        422     ``invalid_input``
invalid Unicode (a lone surrogate)        422     ``invalid_input`` (names the field)
image too many bytes                      413     ``image_error`` (reason)
image too many pixels, undecodable,       422     ``image_error`` (reason)
not found, fetch failed, invalid source,
forbidden (private URL, local path)
too many documents, body too large,       413     ``too_large``
too much text (--max-request-text-bytes)
missing or wrong API key                  401     ``unauthorized``
unknown path, wrong method                404/405 ``http_error``
queue full                                429     ``overloaded`` + Retry-After
request timeout                           504     ``timeout``
anything else                             500     ``internal_error`` (logged), ``Connection: close``
========================================  ======  =========================

A forbidden image source is 422 rather than 403: the client is authorised; the *input* names a source the
media policy refuses, and fixing the input (sending bytes instead of a path) is what makes it work.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from lychee_rerank.core.errors import ImageError, InvalidInputError, LycheeError

logger = logging.getLogger(__name__)

IMAGE_STATUS = {
    "too_many_bytes": 413,
    "too_many_pixels": 422,
    "undecodable": 422,
    "invalid_source": 422,
    "forbidden": 422,
    "not_found": 422,
    "fetch_failed": 422,
}


class ServiceError(LycheeError):
    """An error with its HTTP status, a stable type, and optional headers (Retry-After...).

    A :class:`~lychee_rerank.core.LycheeError`, so code holding the service's reranker (the UI) can show
    "overloaded" or "timed out" like any other error.
    """

    def __init__(self, status: int, kind: str, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = dict(headers or {})


def error_body(status: int, kind: str, message: str, reason: str | None = None) -> dict[str, Any]:
    """The JSON body of every error."""
    detail: dict[str, Any] = {"type": kind, "message": message, "status": status}
    if reason is not None:
        detail["reason"] = reason
    return {"error": detail, "message": message}


async def send_error(
    send: Callable[..., Any],
    status: int,
    kind: str,
    message: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    retry_after_s: float | None = None,
) -> None:
    """Sends the JSON error body straight through ASGI ``send``, for middleware that answers before the app.

    ``retry_after_s`` adds ``Retry-After`` in whole seconds, rounded up and at least 1.
    """
    payload = json.dumps(error_body(status, kind, message)).encode()
    extra = list(headers)
    if retry_after_s is not None:
        extra.append((b"retry-after", str(max(1, math.ceil(retry_after_s))).encode()))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def error_response(
    status: int, kind: str, message: str, *, reason: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A JSON error response."""
    return JSONResponse(error_body(status, kind, message, reason), status_code=status, headers=dict(headers or {}))


def _describe_validation(errors: list[Any]) -> tuple[int, str, str]:
    if any(error.get("type") == "json_invalid" for error in errors):
        return 400, "invalid_json", "the request body is not valid JSON"
    if any(error.get("type") == "missing" and tuple(error.get("loc", ())) == ("body",) for error in errors):
        return 400, "invalid_input", "the request body is empty; send a JSON object"
    parts = []
    for error in errors[:5]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "validation_error", "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    """Makes every error, FastAPI's own validation errors included, use the service's JSON shape."""

    async def on_service_error(request: Request, error: Exception) -> JSONResponse:
        if not isinstance(error, ServiceError):  # pragma: no cover - registered for ServiceError only
            raise error
        return error_response(error.status, error.kind, error.message, headers=error.headers)

    async def on_validation(request: Request, error: Exception) -> JSONResponse:
        errors = list(error.errors()) if isinstance(error, RequestValidationError) else []
        status, kind, message = _describe_validation(errors)
        return error_response(status, kind, message)

    async def on_invalid_input(request: Request, error: Exception) -> JSONResponse:
        if isinstance(error, ImageError):
            return error_response(IMAGE_STATUS.get(error.reason, 422), "image_error", str(error), reason=error.reason)
        return error_response(422, "invalid_input", str(error))

    async def on_http_error(request: Request, error: Exception) -> JSONResponse:
        status = error.status_code if isinstance(error, HTTPException) else 500
        detail = error.detail if isinstance(error, HTTPException) else "error"
        headers = getattr(error, "headers", None)
        return error_response(status, "http_error", str(detail), headers=headers)

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(InvalidInputError, on_invalid_input)
    app.add_exception_handler(HTTPException, on_http_error)
    # Anything else: the middleware below, not an exception handler. Starlette re-raises after its
    # 500 handler (so the server logs a second traceback and drops the keep-alive connection unannounced).
    app.add_middleware(UnexpectedErrorMiddleware)


# -- unexpected errors ----------------------------------------------------------------------------

_INTERNAL_MESSAGE = "the server failed to answer; the error is in its log"


class UnexpectedErrorMiddleware:
    """Answers an error no handler took with a complete JSON 500 and ``Connection: close``, logged once.

    Pure ASGI, installed inside the other middleware (so metrics count the 500). The error is logged as
    one line and one traceback, and not raised further: the server would log it again. ``Connection:
    close`` tells a keep-alive client to open a new connection instead of reusing one whose state is
    unknown. If the response had already started, it cannot be completed: the error is logged and the
    server closes the connection.
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as error:
            logger.error("unexpected error on %s %s", scope.get("method"), scope.get("path"), exc_info=error)
            if started:
                return
            payload = json.dumps(error_body(500, "internal_error", _INTERNAL_MESSAGE)).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
