"""BM25 over the collection's text, in this process (bm25s), as the first stage to rerank.

Documents are indexed by their title and text, queries searched by their text; images play no part in
BM25, so an image-only query retrieves nothing here (give a run file from an image retriever instead).
"""

from __future__ import annotations

import logging
from typing import Any

from lychee_rerank.core.evaluation.dataset import BeirDataset, Run
from lychee_rerank.core.extras import require


def bm25_run(dataset: BeirDataset, depth: int = 100) -> Run:
    """The top ``depth`` documents of each query by BM25 (English stop words removed)."""
    bm25s: Any = require("bm25s", "eval")
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs each index build at DEBUG to stderr
    doc_ids = [doc_id for doc_id, content in dataset.corpus.items() if content.get("text")]
    if not doc_ids:
        raise ValueError("no document has text: BM25 needs text; give a first-stage run with --run")
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([dataset.corpus[doc_id]["text"] for doc_id in doc_ids], stopwords="en", show_progress=False),
        show_progress=False,
    )
    run: Run = {}
    texts = {query_id: content["text"] for query_id, content in dataset.queries.items() if content.get("text")}
    if not texts:
        return run
    query_ids = list(texts)
    tokens = bm25s.tokenize([texts[query_id] for query_id in query_ids], stopwords="en", show_progress=False)
    found, scores = retriever.retrieve(tokens, k=min(depth, len(doc_ids)), show_progress=False)
    for row, query_id in enumerate(query_ids):
        # A document with no query term scores 0: it was not retrieved.
        run[query_id] = {
            doc_ids[int(index)]: float(score) for index, score in zip(found[row], scores[row], strict=True) if score > 0
        }
    return run
