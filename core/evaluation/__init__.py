"""``lychee-rerank eval``: does reranking help on my data? A BEIR-layout folder, a first stage, metrics.

The metrics come from ir-measures (over trec_eval's pytrec_eval), BM25 from bm25s; both are in the
``[eval]`` extra. :func:`evaluate` and :func:`load_beir` work without a model.
"""

from __future__ import annotations

from lychee_rerank.core.evaluation.dataset import BeirDataset, load_beir, read_trec_run, sample_dataset, write_trec_run
from lychee_rerank.core.evaluation.metrics import METRICS, evaluate, per_query

__all__ = [
    "METRICS",
    "BeirDataset",
    "evaluate",
    "load_beir",
    "per_query",
    "read_trec_run",
    "sample_dataset",
    "write_trec_run",
]
