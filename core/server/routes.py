"""The scoring routes: Cohere v2 / Jina, TEI, the original batch API and single-pair score."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from lychee_rerank.core import wire
from lychee_rerank.core.interface import rank
from lychee_rerank.core.server.jsonio import OffLoopJSONRoute, json_response, off_loop, render_json
from lychee_rerank.core.server.protocol import (
    BatchRequest,
    BatchResponse,
    BatchResult,
    ErrorResponse,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResultOut,
    ScoreRequest,
    ScoreResponse,
    TEIRank,
    TEIRerankRequest,
    Usage,
)
from lychee_rerank.core.server.serving import (
    ScheduledReranker,
    Truncator,
    build_inputs,
    logit,
    wants_json_documents,
)
from lychee_rerank.core.server.settings import ServerSettings

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 413, 422, 429, 504)
}


class ServiceState:
    """What the routes share: settings, the scheduled reranker, the truncator and the model's name."""

    def __init__(
        self, settings: ServerSettings, scorer: ScheduledReranker, truncator: Truncator | None, model_name: str
    ) -> None:
        self.settings = settings
        self.scorer = scorer
        self.truncator = truncator
        self.model_name = model_name


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.lychee
    return state


State = Annotated[ServiceState, Depends(_state)]
# Bodies are parsed in a worker thread (OffLoopJSONRoute) and answers rendered in one (_respond): the
# event loop only moves bytes, so /health answers while 59 MB bodies are being handled. The API key is
# checked before the body is read, by access.ApiKeyMiddleware (not a dependency).
router = APIRouter(responses=_ERRORS, route_class=OffLoopJSONRoute)
Model = TypeVar("Model", bound=BaseModel)


async def _respond(build: Callable[[], Any]) -> Response:
    """The JSON response ``build()`` describes, built and rendered off the event loop."""
    return json_response(await off_loop(lambda: render_json(build())))


async def _cohere(body: RerankRequest, request: Request, state: ServiceState) -> Response:
    query, documents, raw = await off_loop(
        build_inputs,
        body.query,
        body.documents,
        state.settings,
        instruction=body.instruction,
        json_documents=wants_json_documents(request, state.settings),
    )
    scored = await state.scorer.score_request(
        query, documents, instruction=body.instruction, request=request, max_tokens=body.max_tokens_per_doc
    )

    def build() -> dict[str, Any]:
        results = rank(documents, scored.scores, top_n=body.top_n, min_score=body.min_score)
        return RerankResponse(
            id=str(uuid.uuid4()),
            model=state.model_name,
            results=[
                RerankResultOut(
                    index=result.index,
                    relevance_score=result.score,
                    document=RerankDocument(**raw[result.index]) if body.return_documents else None,
                )
                for result in results
            ],
            usage=Usage(total_tokens=scored.tokens),
            meta={"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
        ).model_dump(exclude_none=True)

    return await _respond(build)


@router.post(
    wire.RERANK_ROUTE, response_model=RerankResponse, response_model_exclude_none=True, summary="Rerank (Cohere / Jina)"
)
async def rerank_v1(body: RerankRequest, request: Request, state: State) -> Response:
    """Cohere v2 / Jina rerank: documents as strings, ``{text?, image?}`` or content lists."""
    return await _cohere(body, request, state)


@router.post(
    wire.RERANK_V2_ROUTE, response_model=RerankResponse, response_model_exclude_none=True, summary="Rerank (Cohere v2)"
)
async def rerank_v2(body: RerankRequest, request: Request, state: State) -> Response:
    """The same as ``/v1/rerank`` (the path the Cohere v2 SDK calls)."""
    return await _cohere(body, request, state)


async def _tei(body: TEIRerankRequest, request: Request, state: ServiceState) -> Response:
    query, documents, _ = await off_loop(
        build_inputs, body.query, body.texts, state.settings, instruction=body.instruction, field="texts[{index}]"
    )
    scored = await state.scorer.score_request(query, documents, instruction=body.instruction, request=request)

    def build() -> list[dict[str, Any]]:
        results = rank(documents, scored.scores, top_n=body.top_n, min_score=body.min_score)
        return [
            TEIRank(
                index=result.index,
                score=logit(result.score) if body.raw_scores else result.score,
                text=body.texts[result.index] if body.return_text else None,
            ).model_dump(exclude_none=True)
            for result in results
        ]

    return await _respond(build)


def _validate(model: type[Model], body: dict[str, Any]) -> Model:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise RequestValidationError(
            [{**item, "loc": ("body", *item.get("loc", ()))} for item in error.errors()]
        ) from None


@router.post(
    wire.RERANK_ANY_ROUTE,
    response_model=RerankResponse | list[TEIRank],
    response_model_exclude_none=True,
    summary="Rerank (Cohere/Jina with `documents`, TEI with `texts`)",
)
async def rerank_either(
    request: Request,
    state: State,
    body: Annotated[dict[str, Any], Body(description="a Cohere/Jina body (`documents`) or a TEI body (`texts`)")],
) -> Response:
    """Cohere/Jina when the body has ``documents``, Text Embeddings Inference when it has ``texts``."""
    if "texts" in body:
        return await _tei(await off_loop(_validate, TEIRerankRequest, body), request, state)
    return await _cohere(await off_loop(_validate, RerankRequest, body), request, state)


def _markdown(rows: list[BatchResult]) -> str:
    def cell(value: str | None) -> str:
        flat = " ".join((value or "").split()).replace("|", "\\|")
        return flat if len(flat) <= 80 else flat[:79] + "…"

    lines = ["| rank | index | score | text | image |", "|---:|---:|---:|---|---|"]
    for row in rows:
        image = "" if row.image is None else cell(row.image if len(row.image) <= 80 else row.image[:40] + "…")
        lines.append(f"| {row.rank} | {row.index} | {row.score:.4f} | {cell(row.text)} | {image} |")
    return "\n".join(lines)


@router.post(
    wire.BATCH_ROUTE, response_model=BatchResponse, summary="Rerank a batch (original API, with a Markdown table)"
)
async def rerank_batch(body: BatchRequest, request: Request, state: State) -> Response:
    """One query, many ``{text?, image?}`` documents; results best first and as a Markdown table."""
    query, documents, raw = await off_loop(
        build_inputs,
        body.query,
        body.documents,
        state.settings,
        instruction=body.instruction,
        json_documents=wants_json_documents(request, state.settings),
    )
    scored = await state.scorer.score_request(query, documents, instruction=body.instruction, request=request)

    def build() -> dict[str, Any]:
        results = rank(documents, scored.scores, top_n=body.top_n, min_score=body.min_score)
        rows = [
            BatchResult(rank=position, index=result.index, score=result.score, **raw[result.index])
            for position, result in enumerate(results, start=1)
        ]
        return BatchResponse(model=state.model_name, results=rows, markdown=_markdown(rows)).model_dump()

    return await _respond(build)


@router.post(wire.SCORE_ROUTE, response_model=ScoreResponse, summary="Score one query-document pair")
async def score_pair(body: ScoreRequest, request: Request, state: State) -> Response:
    """The probability that one document satisfies the query."""
    query, documents, _ = await off_loop(
        build_inputs, body.query, [body.document], state.settings, instruction=body.instruction, field="document"
    )
    scored = await state.scorer.score_request(query, documents, instruction=body.instruction, request=request)
    return await _respond(lambda: ScoreResponse(model=state.model_name, score=scored.scores[0]).model_dump())
