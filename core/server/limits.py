"""Refuses request bodies over the size limit before any JSON is parsed (pure ASGI middleware).

A declared ``Content-Length`` over the limit is refused before a byte is read; a body without one (chunked)
is read up to the limit and refused as soon as it goes over. The body is then replayed to the app, and
later ``receive`` calls go to the server, so the app still sees the client disconnect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lychee_rerank.core.server.errors import send_error

ASGIApp = Callable[[dict[str, Any], Callable[..., Any], Callable[..., Any]], Any]


class BodyLimitMiddleware:
    """Answers 413 to a body of more than ``max_body_bytes``."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(send, f"the request body is {declared} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._refuse(send, f"the request body is over {self.max_body_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            message: dict[str, Any] = await receive()
            return message

        await self.app(scope, replay, send)

    async def _refuse(self, send: Callable[..., Any], what: str) -> None:
        message = f"{what}, more than the limit of {self.max_body_bytes}; send fewer or smaller documents"
        # The rest of the body is never read: close the connection rather than drain it.
        await send_error(send, 413, "too_large", message, [(b"connection", b"close")])
