"""The one interface every adapter depends on, and the in-process implementation of it.

``rerank`` is written once, on top of ``score`` (score, sort, cut), as sentence-transformers'
``CrossEncoder.rank`` is; backends only implement ``score``. Async methods run the same work in a
worker thread, so they never block the event loop.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from lychee_rerank.core.engine import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_PADDING, ScoringEngine
from lychee_rerank.core.errors import InvalidInputError
from lychee_rerank.core.inputs import Document, DocumentLike, QueryLike, as_documents, as_query
from lychee_rerank.core.loading import LoadedModel, load_model
from lychee_rerank.core.media import DEFAULT_POLICY, MediaPolicy
from lychee_rerank.core.profiles import DEFAULT_PROFILE, Profile, get_profile, resolve_instruction


@dataclass(frozen=True)
class RerankResult:
    """One document's place in a reranked list.

    Attributes:
        index: The document's position in the list that was passed in.
        score: The probability in [0, 1] that the document satisfies the query.
        document: The document, as a :class:`Document`.
    """

    index: int
    score: float
    document: Document


@runtime_checkable
class Reranker(Protocol):
    """What adapters need from a reranker, local or remote."""

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Scores each document against the query; input order, each in [0, 1]."""
        ...

    def rerank(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        min_score: float | None = None,
    ) -> list[RerankResult]:
        """Documents sorted by score, best first, cut at ``min_score`` and ``top_n``."""
        ...

    async def ascore(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """``score`` without blocking the event loop."""
        ...

    async def arerank(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        min_score: float | None = None,
    ) -> list[RerankResult]:
        """``rerank`` without blocking the event loop."""
        ...


def check_rerank_options(top_n: int | None, min_score: float | None) -> None:
    """Refuses a negative ``top_n`` or a ``min_score`` that is not a number (bool and NaN included)."""
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
        raise InvalidInputError(f"top_n must be a non-negative integer or None, got {top_n!r}")
    if min_score is not None and (
        isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or math.isnan(min_score)
    ):
        raise InvalidInputError(f"min_score must be a number or None, got {min_score!r}")


def rank(
    documents: Sequence[Document], scores: Sequence[float], *, top_n: int | None, min_score: float | None
) -> list[RerankResult]:
    """Sorts by score (ties keep input order), drops scores under ``min_score``, keeps ``top_n``.

    Example:
        >>> [r.index for r in rank([Document("a"), Document("b")], [0.2, 0.9], top_n=1, min_score=None)]
        [1]
    """
    results = [RerankResult(i, s, d) for i, (d, s) in enumerate(zip(documents, scores, strict=True))]
    results.sort(key=lambda result: (-result.score, result.index))
    if min_score is not None:
        results = [result for result in results if result.score >= min_score]
    return results if top_n is None else results[:top_n]


class BaseReranker:
    """``rerank``, ``ascore`` and ``arerank`` on top of a subclass's ``score``."""

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Scores each document against the query; input order, each in [0, 1]."""
        raise NotImplementedError

    def rerank(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        min_score: float | None = None,
    ) -> list[RerankResult]:
        """Documents sorted by score, best first; ``min_score`` drops, ``top_n`` keeps the best N.

        Example:
            >>> results = reranker.rerank("red dress", ["a red dress", "a blue car"], top_n=1)  # doctest: +SKIP
            >>> results[0].index  # doctest: +SKIP
            0
        """
        check_rerank_options(top_n, min_score)
        parsed = as_documents(documents)
        return rank(parsed, self.score(query, parsed, instruction=instruction), top_n=top_n, min_score=min_score)

    async def ascore(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """``score`` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self.score, query, documents, instruction=instruction)

    async def arerank(
        self,
        query: QueryLike,
        documents: Sequence[DocumentLike],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        min_score: float | None = None,
    ) -> list[RerankResult]:
        """``rerank`` on top of ``ascore``, so the event loop keeps running while documents are scored."""
        check_rerank_options(top_n, min_score)
        parsed = as_documents(documents)
        scores = await self.ascore(query, parsed, instruction=instruction)
        return rank(parsed, scores, top_n=top_n, min_score=min_score)


class LocalReranker(BaseReranker):
    """Lychee-Rerank-MM (or a peer) in this process, on a GPU or the CPU.

    Args:
        model: A hub id, a folder holding a Hugging Face checkpoint, or ``"tiny"`` (a random test
            checkpoint: its scores mean nothing). Defaults to the profile's model.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``...; default: CUDA when available, else CPU.
        dtype: ``"bfloat16"``, ``"float16"``, ``"float32"`` or a ``torch.dtype``; default: bf16 on
            CUDA, float32 on CPU.
        profile: A profile name (``"lychee"``, ``"qwen3-vl-reranker"``, ``"monoqwen2-vl"``) or object.
        max_batch_tokens: Padded tokens per forward pass; lower it on small GPUs.
        min_pixels: Lower pixel bound for images after resizing; default: the profile's.
        max_pixels: Upper pixel bound for images after resizing; default: the profile's.
        media_policy: How images may be read (URLs, local paths, size caps).
        attn_implementation: Force an attention kernel (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``).
        reuse_prefix: Run the prompt part shared by all documents of a request (system prompt,
            instruction, query and its image) once and reuse its key/value cache. Scores are the same
            either way; turning it off only costs time.
        max_padding: A pair joins a batch only if it is at most this fraction shorter than the batch's
            longest: padding is wasted work. 1.0 packs by ``max_batch_tokens`` alone.

    Example:
        >>> reranker = LocalReranker(model="tiny")  # doctest: +SKIP
        >>> reranker.score("white shirt", ["a white linen shirt", {"image": "shirt.jpg"}])  # doctest: +SKIP
        [0.53, 0.41]
    """

    def __init__(
        self,
        model: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        profile: str | Profile = DEFAULT_PROFILE,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        media_policy: MediaPolicy = DEFAULT_POLICY,
        attn_implementation: str | None = None,
        reuse_prefix: bool = True,
        max_padding: float = DEFAULT_MAX_PADDING,
    ) -> None:
        self.profile = get_profile(profile)
        name = model or os.environ.get("LYCHEE_MODEL") or self.profile.default_model
        loaded = load_model(
            name,
            self.profile,
            device=device,
            dtype=dtype,
            attn_implementation=attn_implementation,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
        )
        self.engine = ScoringEngine(
            loaded,
            self.profile,
            max_batch_tokens=max_batch_tokens,
            media_policy=media_policy,
            reuse_prefix=reuse_prefix,
            max_padding=max_padding,
        )

    @property
    def loaded(self) -> LoadedModel:
        """The model, processor, device and dtype in use."""
        return self.engine.loaded

    @property
    def model_name(self) -> str:
        """The name the model was loaded by (hub id, folder, or ``tiny``)."""
        return self.engine.loaded.name

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Probabilities in [0, 1] that each document satisfies the query, in input order.

        Args:
            query: Text, a :class:`Query`, a ``{"text", "image"}`` mapping or a PIL image.
            documents: Each text, a :class:`Document`, a mapping or a PIL image.
            instruction: The task instruction, or a preset name (``"ecommerce"``, ``"academic"``...);
                default: the profile's.

        Raises:
            InvalidInputError: A query or document cannot be scored; the message names which.
        """
        parsed_query = as_query(query)
        parsed = as_documents(documents)
        return self.engine.score(parsed_query, parsed, resolve_instruction(instruction))


def as_reranker(reranker: Reranker | str) -> Reranker:
    """The reranker adapters use: a :class:`Reranker` as is; a URL string means the service at that URL.

    Example:
        >>> as_reranker("http://gpu-box:8000")  # doctest: +SKIP
        RemoteReranker('http://gpu-box:8000')
    """
    if isinstance(reranker, str):
        from lychee_rerank.core.remote import RemoteReranker  # the HTTP client, built with the service

        return RemoteReranker(reranker)
    if not isinstance(reranker, Reranker):
        raise TypeError(
            f"expected a Reranker (LocalReranker, RemoteReranker) or a service URL, got {type(reranker).__name__}"
        )
    return reranker
