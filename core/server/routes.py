"""The scoring routes: Cohere v2 / Jina, TEI, the original batch API and single-pair score."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from lychee_rerank.core import wire
from lychee_rerank.core.interface import rank
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
# The API key is checked before the body is read, by access.ApiKeyMiddleware (not a dependency).
router = APIRouter(responses=_ERRORS)


def _token_count(query_text: str | None, texts: list[str | None]) -> int:
    # Usage is informational: whitespace words are close enough and cost nothing.
    return sum(len((text or "").split()) for text in [query_text, *texts])


async def _cohere(body: RerankRequest, request: Request, state: ServiceState) -> RerankResponse:
    query, documents, raw = build_inputs(
        body.query,
        body.documents,
        state.settings,
        state.truncator,
        json_documents=wants_json_documents(request, state.settings),
        max_tokens=body.max_tokens_per_doc,
    )
    scores = await state.scorer.score_request(query, documents, instruction=body.instruction, request=request)
    results = rank(documents, scores, top_n=body.top_n, min_score=body.min_score)
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
        usage=Usage(total_tokens=_token_count(query.text, [document.text for document in documents])),
        meta={"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
    )


@router.post(wire.RERANK_ROUTE, response_model_exclude_none=True, summary="Rerank (Cohere / Jina)")
async def rerank_v1(body: RerankRequest, request: Request, state: State) -> RerankResponse:
    """Cohere v2 / Jina rerank: documents as strings, ``{text?, image?}`` or content lists."""
    return await _cohere(body, request, state)


@router.post(wire.RERANK_V2_ROUTE, response_model_exclude_none=True, summary="Rerank (Cohere v2)")
async def rerank_v2(body: RerankRequest, request: Request, state: State) -> RerankResponse:
    """The same as ``/v1/rerank`` (the path the Cohere v2 SDK calls)."""
    return await _cohere(body, request, state)


async def _tei(body: TEIRerankRequest, request: Request, state: ServiceState) -> list[TEIRank]:
    query, documents, _ = build_inputs(body.query, body.texts, state.settings, state.truncator)
    scores = await state.scorer.score_request(query, documents, instruction=body.instruction, request=request)
    results = rank(documents, scores, top_n=body.top_n, min_score=body.min_score)
    return [
        TEIRank(
            index=result.index,
            score=logit(result.score) if body.raw_scores else result.score,
            text=body.texts[result.index] if body.return_text else None,
        )
        for result in results
    ]


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
) -> Any:
    """Cohere/Jina when the body has ``documents``, Text Embeddings Inference when it has ``texts``."""
    try:
        if "texts" in body:
            return await _tei(TEIRerankRequest.model_validate(body), request, state)
        return await _cohere(RerankRequest.model_validate(body), request, state)
    except ValidationError as error:
        raise RequestValidationError(
            [{**item, "loc": ("body", *item.get("loc", ()))} for item in error.errors()]
        ) from None


def _markdown(rows: list[BatchResult]) -> str:
    def cell(value: str | None) -> str:
        flat = " ".join((value or "").split()).replace("|", "\\|")
        return flat if len(flat) <= 80 else flat[:79] + "…"

    lines = ["| rank | index | score | text | image |", "|---:|---:|---:|---|---|"]
    for row in rows:
        image = "" if row.image is None else cell(row.image if len(row.image) <= 80 else row.image[:40] + "…")
        lines.append(f"| {row.rank} | {row.index} | {row.score:.4f} | {cell(row.text)} | {image} |")
    return "\n".join(lines)


@router.post(wire.BATCH_ROUTE, summary="Rerank a batch (original API, with a Markdown table)")
async def rerank_batch(body: BatchRequest, request: Request, state: State) -> BatchResponse:
    """One query, many ``{text?, image?}`` documents; results best first and as a Markdown table."""
    query, documents, raw = build_inputs(
        body.query,
        body.documents,
        state.settings,
        state.truncator,
        json_documents=wants_json_documents(request, state.settings),
    )
    scores = await state.scorer.score_request(query, documents, instruction=body.instruction, request=request)
    results = rank(documents, scores, top_n=body.top_n, min_score=body.min_score)
    rows = [
        BatchResult(rank=position, index=result.index, score=result.score, **raw[result.index])
        for position, result in enumerate(results, start=1)
    ]
    return BatchResponse(model=state.model_name, results=rows, markdown=_markdown(rows))


@router.post(wire.SCORE_ROUTE, summary="Score one query-document pair")
async def score_pair(body: ScoreRequest, request: Request, state: State) -> ScoreResponse:
    """The probability that one document satisfies the query."""
    query, documents, _ = build_inputs(body.query, [body.document], state.settings, state.truncator)
    scores = await state.scorer.score_request(query, documents, instruction=body.instruction, request=request)
    return ScoreResponse(model=state.model_name, score=scores[0])
