"""LlamaIndex: Lychee reranking as a ``BaseNodePostprocessor``.

Text nodes are judged on their content (with metadata as the embedding sees it, like LlamaIndex's own
rerankers); an ``ImageNode`` on its image (``image`` base64, else ``image_path``, else ``image_url``) and
its text if any. ``QueryBundle.image_path`` is the query image.

Returned nodes are new ``NodeWithScore`` objects whose ``score`` is the rerank score; the caller's nodes
are never changed (a node is copied when its metadata gains ``retrieval_score``). When the reranker is
down, slow (past ``timeout_s``) or refuses the API key and ``fail_open`` is on, the first ``top_n`` nodes
come back in first-stage order with their retrieval scores, ``metadata["rerank_failed"] = True`` and
``metadata["rerank_error"]`` saying why (``"RemoteAuthError: ..."``); it is logged as a warning, or as an
error for a refused API key (the rule for which errors fall back is in
:mod:`lychee_rerank.adapters._second_stage`).

Importing this module without ``llama-index-core`` raises an ImportError naming
``pip install 'lychee-rerank[llamaindex]'``.

Example:
    >>> from lychee_rerank.adapters.llamaindex import LycheeRerank  # doctest: +SKIP
    >>> rerank = LycheeRerank(reranker="http://gpu-box:8000", top_n=3)  # doctest: +SKIP
    >>> engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[rerank])  # doctest: +SKIP
"""

from __future__ import annotations

from lychee_rerank.core.extras import require

require("llama_index.core", "llamaindex")

# Pydantic resolves the field annotations below at class creation, so every name they use is a real
# runtime import (no TYPE_CHECKING block), even with postponed annotations.
from llama_index.core.bridge.pydantic import ConfigDict, Field, field_validator  # noqa: E402
from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.schema import ImageNode, MetadataMode, NodeWithScore, QueryBundle  # noqa: E402

from lychee_rerank.adapters._second_stage import SecondStage, Selection, document_from_fields, query_from_fields  # noqa: E402
from lychee_rerank.core.errors import InvalidInputError  # noqa: E402
from lychee_rerank.core.inputs import Document, Query  # noqa: E402
from lychee_rerank.core.interface import Reranker  # noqa: E402
from lychee_rerank.core.remote import as_reranker  # noqa: E402

__all__ = ["RERANK_ERROR_KEY", "RERANK_FAILED_KEY", "RETRIEVAL_SCORE_KEY", "LycheeRerank"]

RETRIEVAL_SCORE_KEY = "retrieval_score"
"""Metadata key of the first-stage score when ``keep_retrieval_score`` is on."""

RERANK_FAILED_KEY = "rerank_failed"
"""Metadata key set to ``True`` on nodes returned in first-stage order because reranking failed."""

RERANK_ERROR_KEY = "rerank_error"
"""Metadata key holding why reranking failed (``"Type: message"``) on those nodes."""

_IMAGE_NODE_FIELDS = ("image", "image_path", "image_url")  # ImageNode.resolve_image's order


class LycheeRerank(BaseNodePostprocessor):
    """Reranks retrieved LlamaIndex nodes, text and images, with Lychee-Rerank-MM.

    Attributes:
        reranker: A :class:`~lychee_rerank.core.Reranker` (``LocalReranker``, ``RemoteReranker``...) or the
            URL of a ``lychee-rerank serve`` service. Required: loading the 8B model is a choice the caller
            makes once, not a side effect of building a postprocessor.
        top_n: Keep at most this many nodes, best first (LlamaIndex rerankers' usual default, 2); ``None``
            keeps all.
        score_threshold: Drop nodes scoring below it, in [0, 1]; ``None`` keeps all.
        instruction: The task instruction, or a preset name (``"ecommerce"``, ``"academic"``...).
        keep_retrieval_score: Copy each node with its first-stage score in ``metadata["retrieval_score"]``.
        metadata_mode: Which metadata goes into a node's text (``MetadataMode.EMBED``, as LlamaIndex's
            own rerankers do; ``MetadataMode.NONE`` for the bare text).
        fail_open: On a reranker failure, return the first ``top_n`` in first-stage order, flagged with
            ``metadata["rerank_failed"]`` and ``metadata["rerank_error"]`` and logged, instead of raising.
            Invalid input always raises.
        timeout_s: Seconds the reranking may take before the call counts as failed; ``None`` waits. A
            ``RemoteReranker`` keeps it itself, sync and async, with no extra thread.

    Example:
        >>> rerank = LycheeRerank(reranker=LocalReranker(), top_n=2)  # doctest: +SKIP
        >>> nodes = rerank.postprocess_nodes(retriever.retrieve("red dress"), query_str="red dress")  # doctest: +SKIP
        >>> [round(n.score, 2) for n in nodes]  # doctest: +SKIP
        [0.87, 0.12]
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    reranker: Reranker | str = Field(
        description="A Reranker (LocalReranker, RemoteReranker) or the URL of a lychee-rerank service.",
        exclude=True,
    )
    top_n: int | None = Field(default=2, ge=0, description="Keep at most this many nodes; None keeps all.")
    score_threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Drop nodes scoring below this, in [0, 1]; None keeps all."
    )
    instruction: str | None = Field(
        default=None, description="The task instruction, or a preset name such as 'ecommerce'; None: the default."
    )
    keep_retrieval_score: bool = Field(
        default=False, description="Keep each node's first-stage score in metadata['retrieval_score']."
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Which metadata is part of a node's text when it is scored."
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
        # A URL becomes a RemoteReranker here, so `postprocessor.reranker` is always a Reranker.
        return as_reranker(value)  # type: ignore[arg-type]  # as_reranker refuses anything else itself

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serialises this component under."""
        return "LycheeRerank"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        stage, query, documents = self._prepare(nodes, query_bundle)
        return self._scored(nodes, stage.run(query, documents))

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        # Awaits the reranker's own arerank rather than the base class's thread around the sync path.
        stage, query, documents = self._prepare(nodes, query_bundle)
        return self._scored(nodes, await stage.arun(query, documents))

    def _prepare(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> tuple[SecondStage, Query, list[Document]]:
        if query_bundle is None:
            raise InvalidInputError("LycheeRerank needs a query: pass query_str or query_bundle")
        stage = SecondStage(
            as_reranker(self.reranker),
            top_n=self.top_n,
            score_threshold=self.score_threshold,
            instruction=self.instruction,
            fail_open=self.fail_open,
            timeout_s=self.timeout_s,
        )
        query = query_from_fields(query_bundle.query_str, query_bundle.image_path)
        return stage, query, [self._document(node) for node in nodes]

    def _document(self, node: NodeWithScore) -> Document:
        text = node.node.get_content(metadata_mode=self.metadata_mode)
        if isinstance(node.node, ImageNode):
            fields = {name: getattr(node.node, name) for name in _IMAGE_NODE_FIELDS}
            return document_from_fields(text, fields, _IMAGE_NODE_FIELDS)
        return document_from_fields(text)

    def _scored(self, nodes: list[NodeWithScore], selection: Selection) -> list[NodeWithScore]:
        kept = []
        for pick in selection.picks:
            original = nodes[pick.index]
            extra: dict[str, object] = {}
            if self.keep_retrieval_score:
                extra[RETRIEVAL_SCORE_KEY] = original.score
            if selection.failed:
                extra[RERANK_FAILED_KEY] = True
                extra[RERANK_ERROR_KEY] = selection.error
            # The caller's node is shared, not mutated: a copy only when its metadata changes.
            node = original.node
            if extra:
                node = node.model_copy(update={"metadata": {**node.metadata, **extra}})
            kept.append(NodeWithScore(node=node, score=original.score if pick.score is None else pick.score))
        return kept
