"""Runs an app with uvicorn in a background thread on a free loopback port (tests, benchmarks, notebooks).

Example:
    >>> with BackgroundServer(app) as url:  # doctest: +SKIP
    ...     httpx.get(f"{url}/health").json()
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from fastapi import FastAPI

from lychee_rerank.core.local import LocalReranker
from lychee_rerank.core.server.app import create_app, load_reranker
from lychee_rerank.core.server.connections import ConnectionLimits, GuardedServer
from lychee_rerank.core.server.settings import ServerSettings


class BackgroundServer:
    """uvicorn serving ``app`` on ``host`` (port 0: a free one) in a daemon thread, as ``serve`` runs it.

    Args:
        app: An ASGI app.
        host: The address to bind.
        port: The port; 0 picks a free one.
        startup_timeout_s: How long to wait for the server (and the app's lifespan) to start.
        limits: Connection deadlines and cap; default: the service's defaults.
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout_s: float = 30.0,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.server = GuardedServer(
            app, limits or ConnectionLimits(), host=host, port=port, log_level="warning", lifespan="on"
        )
        self.config = self.server.config
        self.startup_timeout_s = startup_timeout_s
        self._thread = threading.Thread(target=self.server.run, name="lychee-uvicorn", daemon=True)
        self.url = ""

    def start(self) -> str:
        """Starts serving; returns the base URL."""
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start; see its log")
            time.sleep(0.01)
        sockets = self.server.servers[0].sockets
        host, port = sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        """Asks uvicorn to exit and waits for it."""
        self.server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


@dataclass
class RunningService:
    """A service started by :func:`running_service`: its base URL, app, reranker and settings."""

    url: str
    app: FastAPI
    reranker: LocalReranker
    settings: ServerSettings


@contextmanager
def running_service(model: str | os.PathLike[str], *, device: str = "cpu", **settings: Any) -> Iterator[RunningService]:
    """The whole service on ``model`` on a free loopback port, UI off unless asked (tests, notebooks).

    Example:
        >>> with running_service("tiny", max_documents=10) as service:  # doctest: +SKIP
        ...     httpx.post(f"{service.url}/v1/rerank", json={"query": "q", "documents": ["a"]}).json()
    """
    config = ServerSettings(**{"ui": False, **settings, "model": os.fspath(model), "device": device})
    reranker = load_reranker(config)
    app = create_app(reranker, config)
    with BackgroundServer(app, limits=config.connection_limits()) as url:
        yield RunningService(url, app, reranker, config)
