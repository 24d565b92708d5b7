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

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from lychee_rerank.core.profiles import INSTRUCTION_PRESETS, INSTRUCTION_RULE

_STRICT = ConfigDict(extra="forbid")


def _whole_number(value: Any) -> Any:
    # JSON Schema's "integer" includes 5.0; a string or a boolean is still refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# The bound sits inside, next to StrictInt, so that it shows in the schema as "minimum".
WholeNumber = Annotated[StrictInt, BeforeValidator(_whole_number)]
TopN = Annotated[
    StrictInt, Field(ge=0), BeforeValidator(_whole_number), Field(description="keep only the best N (0 keeps none)")
]
AtLeastOne = Annotated[StrictInt, Field(ge=1), BeforeValidator(_whole_number)]
MinScore = Annotated[
    StrictFloat | StrictInt, Field(allow_inf_nan=False, description="drop documents scoring under this")
]
# The schema's pattern is the rule resolve_instruction applies (a preset name, or text that is not
# name-like); the check itself stays in resolve_instruction, whose message lists the presets.
_NOT_NAME_LIKE = "[^A-Za-z0-9_-]|^(?:" + "|".join(["default", *INSTRUCTION_PRESETS]) + ")$"
Instruction = Annotated[
    StrictStr, Field(max_length=4096, description=INSTRUCTION_RULE, json_schema_extra={"pattern": _NOT_NAME_LIKE})
]
_IMAGE = {
    "type": "string",
    "minLength": 1,
    "description": "an http(s) URL, a data:image/...;base64, URI, or base64-encoded image bytes",
}
# The schema says "at least one non-blank character / one document"; the service itself answers a blank
# query or an empty list with 400 and a message saying what to send (TEI's mapping), not a pydantic 422.
# "Non-blank" as Python's str.strip sees it, which also strips the \x1c-\x1f separators and \x85.
# Declared only, not enforced by pydantic, so that invalid Unicode in a query is also the service's 422
# naming the field rather than pydantic's message.
QueryText = Annotated[StrictStr, Field(json_schema_extra={"minLength": 1, "pattern": r"[^\s\u001c-\u001f\u0085]"})]


# -- shared content ------------------------------------------------------------------------------


class ImageURL(BaseModel):
    """vLLM/OpenAI ``image_url`` part: ``{"url": ...}``."""

    model_config = ConfigDict(extra="forbid")
    url: Annotated[StrictStr, Field(json_schema_extra=_IMAGE)]
    detail: StrictStr | None = None


def _part_schema(schema: dict[str, Any]) -> None:
    # The model reads any combination and checks it in the service; the schema says what is accepted.
    # Refs are taken from the generated schema, so they follow whatever ref template is in use.
    image_url_ref = next(option for option in schema["properties"]["image_url"]["anyOf"] if "$ref" in option)
    url = {"anyOf": [image_url_ref, _IMAGE]}
    shapes = (("text", "text", {"type": "string"}), ("image_url", "image_url", url), ("image", "image", _IMAGE))
    schema.pop("properties", None)
    schema.pop("required", None)
    schema["oneOf"] = [
        {
            "type": "object",
            "properties": {"type": {"const": kind}, field: value},
            "required": ["type", field],
            "additionalProperties": False,
        }
        for kind, field, value in shapes
    ]


def _content_schema(schema: dict[str, Any]) -> None:
    listed = next(option for option in schema["properties"]["content"]["anyOf"] if option.get("type") == "array")
    parts = {"type": "array", "items": listed["items"], "minItems": 1, "maxItems": 16}
    image_part = {"properties": {"type": {"enum": ["image_url", "image"]}}, "required": ["type"]}
    schema.pop("properties", None)
    schema["oneOf"] = [
        {
            "type": "object",
            "properties": {"text": {"type": "string"}, "image": _IMAGE},
            "minProperties": 1,
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"content": {**parts, "contains": image_part, "minContains": 0, "maxContains": 1}},
            "required": ["content"],
            "additionalProperties": False,
        },
    ]


class ContentPart(BaseModel):
    """One part of a vLLM-style content list: text, or an image by URL, data URI or base64."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_part_schema)
    type: Literal["text", "image_url", "image"]
    text: StrictStr | None = None
    image_url: ImageURL | StrictStr | None = None
    image: StrictStr | None = None


class Content(BaseModel):
    """A query or document as an object: ``{text?, image?}`` or ``{content: [parts]}``.

    ``image`` is an http(s) URL, a ``data:image/...;base64,`` URI, or base64-encoded bytes. A content list
    holds at most one image.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_content_schema)
    text: StrictStr | None = None
    image: StrictStr | None = None
    content: list[ContentPart] | None = Field(default=None, max_length=16)


DocumentIn = StrictStr | Content
QueryIn = QueryText | Content
Documents = Annotated[list[DocumentIn], Field(json_schema_extra={"minItems": 1})]


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
    documents: Documents
    top_n: TopN | None = None
    return_documents: StrictBool = False
    instruction: Instruction | None = None
    min_score: MinScore | None = None
    max_tokens_per_doc: AtLeastOne | None = None
    rank_fields: list[StrictStr] | None = None
    # Sent by the Cohere SDK or Jina clients; accepted and ignored.
    priority: Any = None
    relevant_spans: Any = None
    max_chunks_per_doc: WholeNumber | None = None

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
    query: QueryText
    texts: Annotated[list[StrictStr], Field(json_schema_extra={"minItems": 1})]
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
    documents: Documents
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
    """``/health``: whether the service answers, and what serves (model, device, dtype)."""

    status: Literal["ok", "loading", "unavailable"]
    model: str
    device: str = Field(description="where the model runs: cpu, cuda, cuda:1...")
    dtype: str = Field(description="the model's weights' type: float32, bfloat16...")
    untrained: bool = Field(description="true for the random test model (`--model tiny`): its scores mean nothing")
    vision_attention: str = Field(
        description="how the vision tower attends: flash-attn-varlen, torch-varlen, sdpa-packed (one call per "
        "layer for all windows of all images) or transformers (the model's own forward)"
    )
    queue_depth: int
