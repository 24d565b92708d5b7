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
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic.json_schema import models_json_schema

from lychee_rerank.core import __version__, wire
from lychee_rerank.core.local import LocalReranker
from lychee_rerank.core.profiles import INSTRUCTION_RULE, TINY_MODEL_NAME
from lychee_rerank.core.server.access import (
    DOCS_ROUTE,
    ApiKeyMiddleware,
    LoginThrottle,
    LoginThrottleMiddleware,
    needs_key,
)
from lychee_rerank.core.server.errors import install_error_handlers
from lychee_rerank.core.server.fetching import ImageFetcher
from lychee_rerank.core.server.limits import BodyLimitMiddleware
from lychee_rerank.core.server.metrics import CONTENT_TYPE, MetricsMiddleware, ServiceMetrics
from lychee_rerank.core.server.protocol import Health, RerankRequest, TEIRerankRequest
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
from lychee_rerank.core.testing.checkpoint import has_random_weights

logger = logging.getLogger(__name__)

ROUTES = (*wire.RERANK_ROUTES, wire.BATCH_ROUTE, wire.SCORE_ROUTE, wire.HEALTH_ROUTE, wire.METRICS_ROUTE)


def load_reranker(settings: ServerSettings) -> LocalReranker:
    """The model as the service's settings say: model, device, dtype, profile, batch size, media policy and
    caches, with ``torch_threads`` applied first. The one place ``serve``, a Ray replica and the test
    service load it, so that no setting is honoured by one and ignored by another."""
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    return LocalReranker(
        model=settings.model,
        device=settings.device,
        dtype=settings.dtype,
        profile=settings.profile,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_memory=settings.max_batch_memory,
        media_policy=settings.media_policy(),
        image_cache_bytes=settings.image_cache_bytes,
        vision_cache_bytes=settings.vision_cache_bytes,
    )


def create_app(reranker: LocalReranker, settings: ServerSettings, *, score: ScoreFunction | None = None) -> FastAPI:
    """The service around an already loaded reranker.

    The scheduler's worker thread starts with the app (lifespan) and ``/health`` answers 200 from then
    on. ``app.state.lychee.scorer`` is a :class:`~lychee_rerank.core.Reranker` whose work goes through
    the scheduler (the UI gets the same object), and ``app.state.scheduler`` exposes the scheduler's stats.

    Args:
        reranker: The model, loaded. The service scores with the reranker's own engine (its batch size,
            padding rule and caches), passing ``settings.media_policy()`` on every call: a service reads
            images named by its clients, so its settings decide (no local files, no private URLs unless
            allowed), whatever the reranker was built with. The reranker itself is not changed.
        settings: Limits and options.
        score: The engine call the scheduler makes, ``score(query, documents, instruction)``; default: the
            reranker's engine, with requests encoded (under the service's media policy) before they are
            queued. A seam for tests and for wrapping the engine (tracing, a gate): requests are then only
            truncated before queueing.
    """
    policy = settings.media_policy()
    engine = reranker.engine
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
        prepare=plain_preparer(truncator) if score else engine_preparer(engine, truncator, policy),
        fetcher=ImageFetcher(
            policy, per_request=settings.max_fetches_per_request, total=settings.max_concurrent_fetches
        ),
        prepare_threads=settings.prepare_threads,
    )
    model_name = settings.served_model_name or reranker.model_name
    served = ServedModel.of(reranker, model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            scheduler.close()
            await scorer.aclose()

    # -- docs: Swagger UI's assets come from the fastapi-offline package, so /docs works offline
    app = FastAPIOffline(
        title="lychee-rerank",
        version=__version__,
        description=_description(settings),
        lifespan=lifespan,
        docs_url=DOCS_ROUTE,
        redoc_url=None,
        static_url=DOCS_ROUTE + "/static",
        swagger_ui_parameters={"persistAuthorization": True},
    )
    # --
    app.state.lychee = ServiceState(settings, scorer, truncator, model_name)
    app.state.scheduler = scheduler
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.served = served
    install_error_handlers(app)
    app.include_router(router)

    @app.get(wire.HEALTH_ROUTE, response_model=Health, summary="Readiness", responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        """200 once the model is loaded and the scheduler runs; 503 otherwise. Says what serves."""
        ready = scheduler.running
        body = Health(
            status="ok" if ready else "unavailable",
            model=model_name,
            device=served.device,
            dtype=served.dtype,
            untrained=served.untrained,
            vision_attention=served.vision_attention,
            queue_depth=scheduler.depth,
        )
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get(wire.METRICS_ROUTE, summary="Prometheus metrics", response_class=Response)
    async def prometheus(request: Request) -> Response:
        """Requests by route and status, latency, batch sizes, queue depth, documents scored."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    _customise_openapi(app, settings)
    throttle = LoginThrottle()
    app.state.login_throttle = throttle
    if settings.ui:
        _mount_ui(app, scorer, settings.api_key, served)
    # Outermost last: metrics see every answer; the key is checked before the body limit reads a byte;
    # the login throttle sits in front of the UI's login form.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(LoginThrottleMiddleware, throttle=throttle, login_path=wire.UI_ROUTE + "/login")
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key, protect_docs=settings.protect_docs)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=(*ROUTES, wire.UI_ROUTE))
    app.add_middleware(ArrivalMiddleware)  # outermost: a request's deadline counts from here
    return app


@dataclass(frozen=True)
class ServedModel:
    """What serves, as ``/health`` and the UI say it: the model's name, device, dtype, whether untrained,
    and how its vision tower attends."""

    name: str
    device: str
    dtype: str
    untrained: bool
    vision_attention: str

    @classmethod
    def of(cls, reranker: LocalReranker, name: str) -> ServedModel:
        """Reads the facts off a loaded reranker; ``name`` is the name the service reports."""
        loaded = reranker.loaded
        untrained = loaded.name == TINY_MODEL_NAME or has_random_weights(loaded.path)
        return cls(
            name,
            str(loaded.device),
            str(loaded.dtype).removeprefix("torch."),
            untrained,
            reranker.engine.vision_attention,
        )

    def describe(self) -> str:
        """One line: ``model X on cpu (float32)``."""
        return f"model {self.name} on {self.device} ({self.dtype})"


def _description(settings: ServerSettings) -> str:
    if not settings.api_key:
        access = "No API key is configured: every route is open."
    elif settings.protect_docs:
        access = (
            "Every route needs `Authorization: Bearer <key>` (the Authorize button) except `/health`; "
            "the UI at `/ui` asks for the key as its password."
        )
    else:
        access = (
            "Scoring routes need `Authorization: Bearer <key>` (the Authorize button). No key is needed for "
            "`/health`, `/metrics`, `/docs` and `/openapi.json` (`--protect-docs` changes that); the UI at "
            "`/ui` asks for the key as its password."
        )
    return (
        f"Multimodal reranking (Lychee-Rerank-MM): Cohere/Jina, TEI and batch APIs.\n\n{access}\n\n{INSTRUCTION_RULE}"
    )


def _customise_openapi(app: FastAPI, settings: ServerSettings) -> None:
    """Completes the generated schema: ``/rerank``'s two body shapes, the document limit, the bearer scheme.

    ``/rerank`` reads its body as a mapping and picks the model by its keys (so that errors name the
    fields of the shape the caller meant); the schema declares the two shapes it accepts. With a key,
    the routes that need it carry a bearer scheme, which Swagger's Authorize button fills in.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        _, shapes = models_json_schema(
            [(RerankRequest, "validation"), (TEIRerankRequest, "validation")],
            ref_template="#/components/schemas/{model}",
        )
        models = components.setdefault("schemas", {})
        models.update(shapes.get("$defs", {}))
        for model, field in (
            ("RerankRequest", "documents"),
            ("TEIRerankRequest", "texts"),
            ("BatchRequest", "documents"),
        ):
            if model in models:  # this service's limit (more is answered 413)
                models[model]["properties"][field]["maxItems"] = settings.max_documents
        either = schema["paths"][wire.RERANK_ANY_ROUTE]["post"]["requestBody"]["content"]["application/json"]
        either["schema"] = {
            "oneOf": [
                {"$ref": "#/components/schemas/RerankRequest"},
                {"$ref": "#/components/schemas/TEIRerankRequest"},
            ],
            "description": "a Cohere/Jina body (`documents`) or a TEI body (`texts`)",
        }
        if settings.api_key:
            components.setdefault("securitySchemes", {})["apiKey"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "the service's API key (`--api-key` / `LYCHEE_API_KEY`)",
            }
            for path, operations in schema.get("paths", {}).items():
                if needs_key(path, protect_docs=settings.protect_docs):
                    for operation in operations.values():
                        operation["security"] = [{"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _mount_ui(app: FastAPI, scorer: ScheduledReranker, api_key: str | None, served: ServedModel) -> None:
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
    ui.mount_ui(app, scorer, path=wire.UI_ROUTE, api_key=api_key, serving=served.describe(), untrained=served.untrained)
