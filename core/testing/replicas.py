"""The Ray Serve ingress without Ray: its front app in front of a real service app hosted in this process.

:class:`InProcessReplicas` stands in for Ray's deployment handle on the model deployment: each request the
ingress forwards goes to the service app through :class:`~lychee_rerank.core.server.forwarding.AppHost`,
which is what a model replica runs inside its actor. Used by tests of the ingress (its UI, its limits)
that do not need Ray's processes.

Example:
    >>> with running_ingress(create_app(reranker, settings), settings) as (url, replicas):  # doctest: +SKIP
    ...     httpx.post(f"{url}/v1/rerank", json=body)
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from lychee_rerank.core.server.background import BackgroundServer
from lychee_rerank.core.server.forwarding import AppHost, ASGIApp, Message
from lychee_rerank.core.server.ingress import ingress_app
from lychee_rerank.core.server.settings import ServerSettings


class InProcessReplicas:
    """A deployment handle's shape (``options(...).remote(scope, body)``) over one in-process service app."""

    def __init__(self, app: ASGIApp) -> None:
        self.host = AppHost(app)
        self.requests = 0

    def options(self, *, method_name: str) -> InProcessReplicas:
        """The handle on the replicas' ``answer`` method: this object."""
        if method_name != "answer":
            raise ValueError(f"the replicas answer through 'answer', not {method_name!r}")
        return self

    def remote(self, scope: dict[str, Any], body: bytes) -> Coroutine[Any, Any, list[Message]]:
        """Hands one request to the hosted app; its messages when awaited."""
        self.requests += 1
        return self.host.respond(scope, body)


def _with_replicas_started(replicas: InProcessReplicas, front: ASGIApp) -> ASGIApp:
    """``front``, whose lifespan also starts and stops the hosted service app, on the server's event loop."""
    front_host = AppHost(front)

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "lifespan":
            await front(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await replicas.host.start()
                await front_host.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await front_host.stop()
                await replicas.host.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    return app


@contextmanager
def running_ingress(
    service_app: ASGIApp, settings: ServerSettings, *, serving: str | None = None
) -> Iterator[tuple[str, InProcessReplicas]]:
    """The ingress's app (``settings`` decide its key, limits and UI) served on a free loopback port, in front
    of ``service_app``; yields the URL and the replicas (to count what reached them)."""
    replicas = InProcessReplicas(service_app)
    front = ingress_app(settings, replicas, lambda error: None, serving=serving)
    with BackgroundServer(_with_replicas_started(replicas, front), startup_timeout_s=60) as url:
        yield url, replicas
