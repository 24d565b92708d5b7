"""Request and response bodies of every route (pydantic), one section per API.

Each shape is as lenient as the API it copies. Text Embeddings Inference ignores unknown fields (its
``RerankRequest`` in ``router/src/http/types.rs`` has no ``deny_unknown_fields``), so the TEI shape does
too: the ``rerankers`` package's TEI provider sends ``model``. Elsewhere unknown fields are refused (422)
so that a typo or nested junk is reported instead of silently ignored; the fields the Cohere and Jina
SDKs send that mean nothing here (``priority``, ``max_chunks_per_doc``...) are accepted, and Cohere v1's
object documents with ``rank_fields`` are read as Cohere v1 reads them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

_STRICT = ConfigDict(extra="forbid")
TopN = Annotated[StrictInt, Field(ge=0, description="keep only the best N (0 keeps none)")]
MinScore = Annotated[
    StrictFloat | StrictInt, Field(allow_inf_nan=False, description="drop documents scoring under this")
]
Instruction = Annotated[
    StrictStr, Field(max_length=4096, description="task instruction, or a preset name (ecommerce, academic...)")
]


# -- shared content ------------------------------------------------------------------------------


class ImageURL(BaseModel):
    """vLLM/OpenAI ``image_url`` part: ``{"url": ...}``."""

    model_config = ConfigDict(extra="forbid")
    url: StrictStr
    detail: StrictStr | None = None


class ContentPart(BaseModel):
    """One part of a vLLM-style content list: text, or an image by URL, data URI or base64."""

    model_config = _STRICT
    type: Literal["text", "image_url", "image"]
    text: StrictStr | None = None
    image_url: ImageURL | StrictStr | None = None
    image: StrictStr | None = None


class Content(BaseModel):
    """A query or document as an object: ``{text?, image?}`` or ``{content: [parts]}``.

    ``image`` is an http(s) URL, a ``data:image/...;base64,`` URI, or base64-encoded bytes.
    """

    model_config = _STRICT
    text: StrictStr | None = None
    image: StrictStr | None = None
    content: list[ContentPart] | None = Field(default=None, max_length=16)


DocumentIn = StrictStr | Content
QueryIn = StrictStr | Content


# -- Cohere v2 / Jina ----------------------------------------------------------------------------


class RerankRequest(BaseModel):
    """Cohere v2 / Jina ``rerank``, plus ``instruction`` and ``min_score``.

    A document may also be a Cohere v1 object with keys of its own: without ``rank_fields`` its ``text``
    (and ``image``) is read and other keys are ignored, as Cohere v1 defaults to the ``text`` key; with
    ``rank_fields`` the named fields become the text, one ``key: value`` line each in the order given (the
    YAML-like form Cohere's docs recommend for structured data), and an ``image`` key stays the image.
    """

    model_config = _STRICT
    model: StrictStr | None = None
    query: QueryIn
    documents: list[DocumentIn]
    top_n: TopN | None = None
    return_documents: StrictBool = False
    instruction: Instruction | None = None
    min_score: MinScore | None = None
    max_tokens_per_doc: Annotated[StrictInt, Field(ge=1)] | None = None
    rank_fields: list[StrictStr] | None = None
    # Sent by the Cohere SDK or Jina clients; accepted and ignored.
    priority: Any = None
    relevant_spans: Any = None
    max_chunks_per_doc: StrictInt | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_cohere_v1_objects(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("documents"), list):
            return data
        rank_fields = data.get("rank_fields")
        if rank_fields is not None and not (
            isinstance(rank_fields, list) and rank_fields and all(isinstance(name, str) for name in rank_fields)
        ):
            return data  # field validation reports the bad rank_fields
        documents = [_cohere_v1_document(item, rank_fields) for item in data["documents"]]
        return {**data, "documents": documents}


def _cohere_v1_document(item: Any, rank_fields: list[str] | None) -> Any:
    """A Cohere v1 object document as ``{text?, image?}``; strings and content lists pass unchanged."""
    if not isinstance(item, dict) or "content" in item:
        return item
    if rank_fields is None:
        if set(item) <= {"text", "image"}:
            return item
        return {key: item[key] for key in ("text", "image") if key in item}
    lines = [
        f"{name}: {_field_text(item[name])}" for name in rank_fields if name != "image" and item.get(name) is not None
    ]
    document: dict[str, Any] = {"text": "\n".join(lines)} if lines else {}
    if "image" in item:
        document["image"] = item["image"]
    return document


def _field_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class RerankDocument(BaseModel):
    """A document echoed back with ``return_documents``."""

    text: str | None = None
    image: str | None = None


class RerankResultOut(BaseModel):
    """One result of ``rerank``."""

    index: int
    relevance_score: float
    document: RerankDocument | None = None


class Usage(BaseModel):
    """What the request cost (Jina's ``total_tokens``, Cohere's search units)."""

    total_tokens: int
    search_units: int = 1


class RerankResponse(BaseModel):
    """Cohere v2 / Jina response: results sorted by score, best first."""

    id: str
    model: str
    results: list[RerankResultOut]
    usage: Usage
    meta: dict[str, Any]


# -- Text Embeddings Inference --------------------------------------------------------------------


class TEIRerankRequest(BaseModel):
    """TEI ``/rerank``: ``texts`` instead of ``documents``; unknown fields are ignored, as TEI does."""

    model_config = ConfigDict(extra="ignore")
    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool = False
    truncation_direction: Literal["right", "left", "Right", "Left"] = "right"
    instruction: Instruction | None = None
    min_score: MinScore | None = None
    top_n: TopN | None = None


class TEIRank(BaseModel):
    """One TEI result: ``score`` is a probability, or a logit with ``raw_scores``."""

    index: int
    score: float
    text: str | None = None


# -- the original batch API -----------------------------------------------------------------------


class BatchRequest(BaseModel):
    """``/rerank_batch``: one query, many documents, each ``{text?, image?}``."""

    model_config = _STRICT
    instruction: Instruction | None = None
    query: QueryIn
    documents: list[DocumentIn]
    top_n: TopN | None = None
    min_score: MinScore | None = None


class BatchResult(BaseModel):
    """One row of ``/rerank_batch``."""

    rank: int
    index: int
    score: float
    text: str | None = None
    image: str | None = None


class BatchResponse(BaseModel):
    """``/rerank_batch`` results, best first, and the same as a Markdown table."""

    model: str
    results: list[BatchResult]
    markdown: str


class ScoreRequest(BaseModel):
    """``/score``: one query and one document."""

    model_config = _STRICT
    instruction: Instruction | None = None
    query: QueryIn
    document: DocumentIn


class ScoreResponse(BaseModel):
    """The probability that the document satisfies the query."""

    model: str
    score: float


# -- errors ---------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """What went wrong: a stable ``type``, a message for humans, the HTTP status, an image ``reason``."""

    type: str
    message: str
    status: int
    reason: str | None = None


class ErrorResponse(BaseModel):
    """Every error body; ``message`` is repeated at the top for Cohere-style clients."""

    error: ErrorDetail
    message: str


class Health(BaseModel):
    """``/health``."""

    status: Literal["ok", "loading", "unavailable"]
    model: str
    queue_depth: int
