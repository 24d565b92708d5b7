"""LangChain: Lychee reranking as a ``BaseDocumentCompressor``.

Use it as the ``base_compressor`` of a ``ContextualCompressionRetriever`` (in LangChain 1.x it lives in
the ``langchain-classic`` package: ``langchain_classic.retrievers.ContextualCompressionRetriever``), or
compose it into an LCEL chain with :meth:`LycheeRerank.as_runnable`.

Returned documents are copies: ``metadata["relevance_score"]`` holds the rerank score, every other
metadata key is kept, and the caller's documents are never changed. When the reranker is down, slow
(past ``timeout_s``) or refuses the API key and ``fail_open`` is on, the first ``top_n`` documents come back
in first-stage order with ``metadata["rerank_failed"] = True``, ``metadata["rerank_error"]`` saying why
(``"RemoteAuthError: ..."``) and no ``relevance_score``; it is logged as a warning, or as an error for a
refused API key (the rule for which errors fall back is in :mod:`lychee_rerank.adapters._second_stage`).

Importing this module without ``langchain-core`` raises an ImportError naming
``pip install 'lychee-rerank[langchain]'``.

Example:
    >>> from lychee_rerank.adapters.langchain import LycheeRerank  # doctest: +SKIP
    >>> compressor = LycheeRerank(reranker="http://gpu-box:8000", top_n=3, instruction="ecommerce")  # doctest: +SKIP
    >>> retriever = ContextualCompressionRetriever(  # doctest: +SKIP
    ...     base_compressor=compressor, base_retriever=store.as_retriever()
    ... )
    >>> [d.metadata["relevance_score"] for d in retriever.invoke("white linen shirt")]  # doctest: +SKIP
    [0.93, 0.88, 0.41]
"""

from __future__ import annotations

import os  # noqa: F401  # ImageInput names "os.PathLike[str]", which pydantic resolves in this module
from collections.abc import Mapping, Sequence
from typing import Any

from lychee_rerank.core.extras import require

require("langchain_core", "langchain")

# Pydantic resolves the field annotations below at class creation, so every name they use is a real
# runtime import (no TYPE_CHECKING block), even with postponed annotations.
from langchain_core.callbacks import Callbacks  # noqa: E402
from langchain_core.documents import BaseDocumentCompressor  # noqa: E402
from langchain_core.documents import Document as LangChainDocument  # noqa: E402
from langchain_core.runnables import Runnable, RunnableLambda  # noqa: E402
from pydantic import ConfigDict, Field, field_validator  # noqa: E402

from lychee_rerank.adapters._second_stage import (  # noqa: E402
    IMAGE_KEYS,
    SecondStage,
    Selection,
    document_from_fields,
    query_from_fields,
)
from lychee_rerank.core.inputs import Document, ImageInput, Query  # noqa: E402
from lychee_rerank.core.interface import Reranker  # noqa: E402
from lychee_rerank.core.remote import as_reranker  # noqa: E402

__all__ = ["RELEVANCE_SCORE_KEY", "RERANK_ERROR_KEY", "RERANK_FAILED_KEY", "LycheeRerank"]

RELEVANCE_SCORE_KEY = "relevance_score"
"""Metadata key of the rerank score on returned documents."""

RERANK_FAILED_KEY = "rerank_failed"
"""Metadata key set to ``True`` on documents returned in first-stage order because reranking failed."""

RERANK_ERROR_KEY = "rerank_error"
"""Metadata key holding why reranking failed (``"Type: message"``) on those documents."""


class LycheeRerank(BaseDocumentCompressor):
    """Reranks retrieved LangChain documents, text and images, with Lychee-Rerank-MM.

    A document's image is read from the first non-empty metadata key among ``image_keys`` (a path, an
    http(s) URL, a data URI, base64, bytes or a PIL image); a document with an image and empty
    ``page_content`` is judged on the image alone.

    Attributes:
        reranker: A :class:`~lychee_rerank.core.Reranker` (``LocalReranker``, ``RemoteReranker``...) or the
            URL of a ``lychee-rerank serve`` service. Required: loading the 8B model is a choice the caller
            makes once, not a side effect of building a compressor.
        top_n: Keep at most this many documents, best first (LangChain's usual default, 3); ``None`` keeps all.
        score_threshold: Drop documents scoring below it, in [0, 1]; ``None`` keeps all.
        instruction: The task instruction, or a preset name (``"ecommerce"``, ``"academic"``...).
        image_keys: Metadata keys looked up for a document's image, first match wins.
        query_image: An image that goes with every query; a call's ``query_image`` argument overrides it.
        fail_open: On a reranker failure, return the first ``top_n`` in first-stage order, flagged with
            ``metadata["rerank_failed"]`` and ``metadata["rerank_error"]`` and logged, instead of raising.
            Invalid input always raises.
        timeout_s: Seconds the reranking may take before the call counts as failed; ``None`` waits. A
            ``RemoteReranker`` keeps it itself, sync and async, with no extra thread.

    Example:
        >>> compressor = LycheeRerank(reranker=LocalReranker(), top_n=2)  # doctest: +SKIP
        >>> docs = [Document("a blue car"), Document("", metadata={"image_path": "dress.jpg"})]  # doctest: +SKIP
        >>> [d.metadata["relevance_score"] for d in compressor.compress_documents(docs, "red dress")]  # doctest: +SKIP
        [0.87, 0.12]
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    reranker: Reranker | str = Field(
        description="A Reranker (LocalReranker, RemoteReranker) or the URL of a lychee-rerank service.",
        exclude=True,
    )
    top_n: int | None = Field(default=3, ge=0, description="Keep at most this many documents; None keeps all.")
    score_threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Drop documents scoring below this, in [0, 1]; None keeps all."
    )
    instruction: str | None = Field(
        default=None, description="The task instruction, or a preset name such as 'ecommerce'; None: the default."
    )
    image_keys: tuple[str, ...] = Field(
        default=IMAGE_KEYS, description="Metadata keys that may hold a document's image, first match wins."
    )
    query_image: ImageInput | None = Field(
        default=None, description="An image sent with every query, unless a call passes its own."
    )
    fail_open: bool = Field(
        default=True,
        description="On a reranker failure, keep the first-stage order (flagged, logged) instead of raising.",
    )
    timeout_s: float | None = Field(
        default=None, gt=0.0, description="Seconds to wait for the reranker before failing (open or closed)."
    )

    @field_validator("reranker", mode="before")
    @classmethod
    def _resolve_reranker(cls, value: object) -> Reranker:
        # A URL becomes a RemoteReranker here, so `compressor.reranker` is always a Reranker.
        return as_reranker(value)  # type: ignore[arg-type]  # as_reranker refuses anything else itself

    def compress_documents(
        self,
        documents: Sequence[LangChainDocument],
        query: str,
        callbacks: Callbacks | None = None,
        *,
        query_image: ImageInput | None = None,
    ) -> Sequence[LangChainDocument]:
        """Scored copies of the best documents for ``query``, best first.

        Args:
            documents: The first stage's documents; not changed.
            query: The query text (may be empty when a query image is given).
            callbacks: Accepted for LangChain's interface; not used.
            query_image: An image for this query; default: the ``query_image`` field.

        Raises:
            InvalidInputError: The query or a document cannot be scored (always, even with ``fail_open``).
        """
        stage, parsed_query, parsed = self._prepare(documents, query, query_image)
        return _copies(documents, stage.run(parsed_query, parsed))

    async def acompress_documents(
        self,
        documents: Sequence[LangChainDocument],
        query: str,
        callbacks: Callbacks | None = None,
        *,
        query_image: ImageInput | None = None,
    ) -> Sequence[LangChainDocument]:
        """:meth:`compress_documents` through the reranker's ``arerank``, without blocking the event loop."""
        stage, parsed_query, parsed = self._prepare(documents, query, query_image)
        return _copies(documents, await stage.arun(parsed_query, parsed))

    def as_runnable(self) -> Runnable[Mapping[str, Any], list[LangChainDocument]]:
        """This compressor as an LCEL runnable over ``{"query", "documents", "query_image"?}``.

        Example:
            >>> inputs = {"documents": retriever, "query": RunnablePassthrough()}  # doctest: +SKIP
            >>> chain = inputs | compressor.as_runnable()  # doctest: +SKIP
            >>> chain.invoke("red dress")[0].metadata["relevance_score"]  # doctest: +SKIP
            0.87
        """

        def rerank(inputs: Mapping[str, Any]) -> list[LangChainDocument]:
            return list(
                self.compress_documents(inputs["documents"], inputs["query"], query_image=inputs.get("query_image"))
            )

        async def arerank(inputs: Mapping[str, Any]) -> list[LangChainDocument]:
            return list(
                await self.acompress_documents(
                    inputs["documents"], inputs["query"], query_image=inputs.get("query_image")
                )
            )

        return RunnableLambda(rerank, afunc=arerank, name="LycheeRerank")

    def _prepare(
        self, documents: Sequence[LangChainDocument], query: str, query_image: ImageInput | None
    ) -> tuple[SecondStage, Query, list[Document]]:
        stage = SecondStage(
            as_reranker(self.reranker),
            top_n=self.top_n,
            score_threshold=self.score_threshold,
            instruction=self.instruction,
            fail_open=self.fail_open,
            timeout_s=self.timeout_s,
        )
        parsed_query = query_from_fields(query, query_image if query_image is not None else self.query_image)
        parsed = [
            document_from_fields(document.page_content, document.metadata, self.image_keys) for document in documents
        ]
        return stage, parsed_query, parsed


def _copies(documents: Sequence[LangChainDocument], selection: Selection) -> list[LangChainDocument]:
    flag = {RERANK_FAILED_KEY: True, RERANK_ERROR_KEY: selection.error} if selection.failed else {}
    return [
        documents[pick.index].model_copy(
            update={
                "metadata": {
                    **documents[pick.index].metadata,
                    **({} if pick.score is None else {RELEVANCE_SCORE_KEY: pick.score}),
                    **flag,
                }
            }
        )
        for pick in selection.picks
    ]
