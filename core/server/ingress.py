"""The front app of a service whose models live in other processes (the Ray Serve ingress).

It holds no model. Every request except the UI's goes whole to a model replica (:class:`Forwarder`), after
the same API-key check and body limit as the single service, so the replicas' answers (routes, error
bodies, limits, metrics, the OpenAPI schema) are the service's own.

The UI (``/ui``) is served here rather than by a replica: a Gradio session is state in the process that
served its first request, and the replicas' router would send the session's later requests to any replica.
Its scoring goes through the same forwarding as an API client's, as ``/v1/rerank`` requests.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, cast

from lychee_rerank.core import wire
from lychee_rerank.core.errors import ImageError
from lychee_rerank.core.inputs import Document, DocumentLike, Query, QueryLike, as_documents, as_query
from lychee_rerank.core.interface import BaseReranker, Reranker
from lychee_rerank.core.server.access import ApiKeyMiddleware, LoginThrottle, LoginThrottleMiddleware
from lychee_rerank.core.server.forwarding import AppHost, ASGIApp, Classify, Forwarder
from lychee_rerank.core.server.limits import BodyLimitMiddleware
from lychee_rerank.core.server.settings import ServerSettings
from lychee_rerank.core.sources import is_reference

logger = logging.getLogger(__name__)

_SELF = "http://lychee-rerank.ingress"
"""The base URL the UI's client uses; its requests never leave the process (an ASGI transport)."""


class ReplicaHandle(Protocol):
    """What the ingress needs of a deployment handle: ``options(method_name=...)``, then ``remote``."""

    def options(self, *, method_name: str) -> Any:
        """A handle calling ``method_name``: ``await handle.remote(scope, body)`` is the answer's ASGI messages."""
        ...


def ingress_app(
    settings: ServerSettings,
    replicas: ReplicaHandle,
    classify: Classify,
    *,
    retry_after_s: float = 1.0,
    serving: str | None = None,
    on_outcome: Callable[[str], None] = lambda outcome: None,
) -> ASGIApp:
    """The ingress's ASGI app: API key, body limit, then each request to a model replica.

    Args:
        settings: The service's settings (the key, the body limit, the request timeout, the UI).
        replicas: The model replicas: a Ray Serve deployment handle on a deployment whose
            ``answer(scope, body)`` returns the ASGI messages of the answer (the replicas serve no streamed
            response: the UI, the one streaming route, is the ingress's own).
        classify: What the handle's exceptions mean (a dead replica, a full queue).
        retry_after_s: ``Retry-After`` when no replica could answer.
        serving: What the UI shows under its title.
        on_outcome: Counts what the ingress answered itself (see :class:`Forwarder`).
    """
    answer = replicas.options(method_name="answer")

    async def send_to_replica(scope: dict[str, Any], body: bytes) -> AsyncIterator[dict[str, Any]]:
        # One call, one reply: cheaper through Ray than a stream of two messages.
        for message in await answer.remote(scope, body):
            yield message

    forwarder = Forwarder(
        send_to_replica,
        classify,
        retry_after_s=retry_after_s,
        time_budget_s=settings.request_timeout_s,
        on_outcome=on_outcome,
    )
    limited = BodyLimitMiddleware(forwarder, max_body_bytes=settings.max_body_bytes)
    api: ASGIApp = ApiKeyMiddleware(limited, api_key=settings.api_key, protect_docs=settings.protect_docs)
    ui = _ui_app(settings, api, serving) if settings.ui else None
    return api if ui is None else UIRoutes(ui, api)


class UIRoutes:
    """Sends ``/ui`` and everything under it to ``ui``, every other path to ``rest``; runs both lifespans
    (Gradio starts the queue that runs the UI's events in its app's startup)."""

    def __init__(self, ui: ASGIApp, rest: ASGIApp) -> None:
        self.ui = ui
        self.rest = rest

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path = scope.get("path", "")
        target = self.ui if path == wire.UI_ROUTE or path.startswith(wire.UI_ROUTE + "/") else self.rest
        await target(scope, receive, send)

    async def _lifespan(self, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        hosts = [AppHost(self.rest), AppHost(self.ui)]
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for host in hosts:
                        await host.start()
                except RuntimeError as error:
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for host in reversed(hosts):
                    await host.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _ui_app(settings: ServerSettings, api: ASGIApp, serving: str | None) -> ASGIApp | None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        logger.info("gradio is not installed; the UI is off (pip install 'lychee-rerank[ui]')")
        return None
    import httpx
    from fastapi import FastAPI

    from lychee_rerank.core.remote import RemoteReranker
    from lychee_rerank.core.server.ui import mount_ui

    client = RemoteReranker(
        _SELF,
        api_key=settings.api_key,
        timeout=settings.request_timeout_s + 10,  # the service answers 504 itself at its timeout
        max_retries=2,
        async_transport=httpx.ASGITransport(app=cast(Any, api)),  # our ASGI type is the looser one
    )
    front = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    mount_ui(
        front,
        UploadsAndReferences(client),
        path=wire.UI_ROUTE,
        api_key=settings.api_key,
        serving=serving,
        untrained=_untrained(settings.model or ""),
    )
    return LoginThrottleMiddleware(front, throttle=LoginThrottle(), login_path=wire.UI_ROUTE + "/login")


def _untrained(model: str) -> bool:
    from lychee_rerank.core.profiles import TINY_MODEL_NAME
    from lychee_rerank.core.testing.checkpoint import has_random_weights

    return model == TINY_MODEL_NAME or has_random_weights(model)


class UploadsAndReferences(BaseReranker):
    """The UI's reranker in the ingress: images by upload, URL or data URI only, scored by ``client``.

    A client turns a string naming a file into that file's bytes, and the ingress is not where a
    user's files are: what the service's media policy refuses (a path) must not be read here either.
    """

    def __init__(self, client: Reranker) -> None:
        self.client = client

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Not offered: the UI scores with :meth:`ascore` on the ingress's event loop."""
        raise TypeError("the ingress's UI reranker is asynchronous: use ascore or arerank")

    async def ascore(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Scores through the replicas, after refusing images named by a path."""
        parsed_query = as_query(query)
        parsed = as_documents(documents)
        _check_image(parsed_query, "the query")
        for index, document in enumerate(parsed):
            _check_image(document, f"document {index}")
        return await self.client.ascore(parsed_query, parsed, instruction=instruction)


def _check_image(item: Query | Document, where: str) -> None:
    if isinstance(item.image, str) and not is_reference(item.image):
        raise ImageError(
            f"{where}: the image {item.image[:80]!r} is neither an http(s) URL nor a data: URI; "
            "upload the file instead (the service does not read files named by a path)",
            reason="forbidden",
        )
