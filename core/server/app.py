"""The FastAPI application: routes, scheduler, metrics, limits and (optionally) the UI.

Example:
    >>> reranker = LocalReranker(model="tiny", media_policy=settings.media_policy())  # doctest: +SKIP
    >>> app = create_app(reranker, settings)  # doctest: +SKIP
    >>> uvicorn.run(app)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from lychee_rerank.core import __version__, wire
from lychee_rerank.core.local import LocalReranker
from lychee_rerank.core.local.engine import ScoringEngine
from lychee_rerank.core.server.errors import install_error_handlers
from lychee_rerank.core.server.fetching import ImageFetcher
from lychee_rerank.core.server.limits import BodyLimitMiddleware
from lychee_rerank.core.server.metrics import CONTENT_TYPE, MetricsMiddleware, ServiceMetrics
from lychee_rerank.core.server.protocol import Health
from lychee_rerank.core.server.routes import ServiceState, router
from lychee_rerank.core.server.scheduler import Scheduler, ScoreFunction, score_plain
from lychee_rerank.core.server.serving import (
    ArrivalMiddleware,
    ScheduledReranker,
    Truncator,
    engine_batches,
    engine_preparer,
    plain_preparer,
)
from lychee_rerank.core.server.settings import ServerSettings

logger = logging.getLogger(__name__)

ROUTES = (*wire.RERANK_ROUTES, wire.BATCH_ROUTE, wire.SCORE_ROUTE, wire.HEALTH_ROUTE, wire.METRICS_ROUTE)


def create_app(reranker: LocalReranker, settings: ServerSettings, *, score: ScoreFunction | None = None) -> FastAPI:
    """The service around an already loaded reranker.

    The scheduler's worker thread starts with the app (lifespan) and ``/health`` answers 200 from then
    on. ``app.state.lychee.scorer`` is a :class:`~lychee_rerank.core.Reranker` whose work goes through
    the scheduler (the UI gets the same object), and ``app.state.scheduler`` exposes the scheduler's stats.

    Args:
        reranker: The model, loaded. The service scores with an engine of its own over the same loaded
            model, under ``settings.media_policy()``: a service reads images named by its clients, so its
            settings decide (no local files, no private URLs unless allowed), whatever the reranker was
            built with. The reranker itself is not changed.
        settings: Limits and options.
        score: The engine call the scheduler makes, ``score(query, documents, instruction)``; default: the
            service's engine, with requests encoded before they are queued. A seam for tests and for
            wrapping the engine (tracing, a gate): requests are then only truncated before queueing.
    """
    policy = settings.media_policy()
    engine = ScoringEngine(
        reranker.loaded,
        reranker.profile,
        max_batch_tokens=reranker.engine.max_batch_tokens,
        media_policy=policy,
        reuse_prefix=reranker.engine.reuse_prefix,
        image_cache_bytes=settings.image_cache_bytes,
        vision_cache_bytes=settings.vision_cache_bytes,
    )
    scheduler_box: list[Scheduler[Any]] = []
    metrics = ServiceMetrics(lambda: scheduler_box[0].depth if scheduler_box else 0)
    truncator = Truncator(reranker.loaded.tokenizer, settings.max_document_tokens, lock=engine.tokenizer_lock)
    # -- the request path: prepared (truncated, decoded, tokenised) in threads, then queued --------
    scheduler: Scheduler[Any] = Scheduler(
        score_plain(score) if score else engine_batches(engine),
        max_queue=settings.max_queue,
        max_batch_tokens=settings.max_batch_tokens,
        max_wait_ms=settings.max_wait_ms,
        on_round=metrics.observe_round,
        on_dropped=metrics.dropped.inc,
    )
    scheduler_box.append(scheduler)
    scorer = ScheduledReranker(
        scheduler,
        settings.request_timeout_s,
        prepare=plain_preparer(truncator) if score else engine_preparer(engine, truncator),
        fetcher=ImageFetcher(
            policy, per_request=settings.max_fetches_per_request, total=settings.max_concurrent_fetches
        ),
        prepare_threads=settings.prepare_threads,
    )
    model_name = settings.served_model_name or reranker.model_name

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            scheduler.close()
            await scorer.aclose()

    app = FastAPI(
        title="lychee-rerank",
        version=__version__,
        description="Multimodal reranking (Lychee-Rerank-MM): Cohere/Jina, TEI and batch APIs.",
        lifespan=lifespan,
    )
    app.state.lychee = ServiceState(settings, scorer, truncator, model_name)
    app.state.scheduler = scheduler
    app.state.engine = engine
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(router)

    @app.get(wire.HEALTH_ROUTE, response_model=Health, summary="Readiness", responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        """200 once the model is loaded and the scheduler runs; 503 otherwise."""
        ready = scheduler.running
        body = Health(status="ok" if ready else "unavailable", model=model_name, queue_depth=scheduler.depth)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get(wire.METRICS_ROUTE, summary="Prometheus metrics", response_class=Response)
    async def prometheus(request: Request) -> Response:
        """Requests by route and status, latency, batch sizes, queue depth, documents scored."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    if settings.ui:
        _mount_ui(app, scorer, settings.api_key)
    # Outermost first: metrics see every answer, the body limit runs before any parsing.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=(*ROUTES, wire.UI_ROUTE))
    app.add_middleware(ArrivalMiddleware)  # outermost: a request's deadline counts from here
    return app


def _mount_ui(app: FastAPI, scorer: ScheduledReranker, api_key: str | None) -> None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        logger.info("gradio is not installed; the UI is off (pip install 'lychee-rerank[ui]')")
        return
    try:
        # Imported by name: the UI module is written separately and may be absent from a checkout.
        ui = importlib.import_module("lychee_rerank.core.server.ui")
    except ImportError as error:
        logger.warning("the UI cannot be mounted: %s", error)
        return
    # The key goes to the UI too: a browser cannot send a Bearer header, and the UI must not bypass it.
    ui.mount_ui(app, scorer, path=wire.UI_ROUTE, api_key=api_key)
