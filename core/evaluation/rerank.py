"""Reranking a first-stage run: each query's top k documents scored by the reranker, the rest kept below."""

from __future__ import annotations

from lychee_rerank.core.evaluation.dataset import BeirDataset, Run, ranked
from lychee_rerank.core.interface import Reranker


def rerank_run(
    reranker: Reranker,
    dataset: BeirDataset,
    first_stage: Run,
    *,
    top_k: int = 100,
    instruction: str | None = None,
    show_progress: bool = True,
) -> Run:
    """The reranked run: per query, the first stage's top ``top_k`` by rerank score (in [0, 1]).

    Documents the first stage ranked below ``top_k`` follow in their first-stage order, with scores
    below 0 (-1, -2, ...), so Recall@100 with ``top_k`` under 100 still counts them as the first stage did.
    A run's document that the corpus lacks is an error: the run and the collection do not belong together.
    """
    from lychee_rerank.core.batch import Progress

    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    # A run may cover more queries than the split judges: only judged ones are scored.
    query_ids = sorted(set(first_stage) & set(dataset.queries))
    progress = Progress(len(query_ids), unit="queries") if show_progress else None
    reranked: Run = {}
    for query_id in query_ids:
        order = ranked(first_stage[query_id])
        unknown = [doc_id for doc_id in order if doc_id not in dataset.corpus]
        if unknown:
            raise ValueError(f"the run names documents the corpus lacks, e.g. {unknown[:3]} (query {query_id!r})")
        head, tail = order[:top_k], order[top_k:]
        scores = (
            reranker.score(
                dataset.queries[query_id], [dataset.corpus[doc_id] for doc_id in head], instruction=instruction
            )
            if head
            else []
        )
        reranked[query_id] = dict(zip(head, scores, strict=True))
        reranked[query_id].update({doc_id: -float(rank) for rank, doc_id in enumerate(tail, start=1)})
        if progress is not None:
            progress.update()
    if progress is not None:
        progress.close()
    return reranked
