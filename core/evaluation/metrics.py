"""NDCG@10, MRR@10, Recall@10 and Recall@100, computed by ir-measures (trec_eval's definitions).

NDCG uses the graded judgements (gain = grade, log2 discount); MRR and recall count a document relevant
when its grade is at least 1. A query of the qrels missing from the run scores 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lychee_rerank.core.extras import require

METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")
"""The metrics reported, in order, by the names used in the JSON output."""


def _measures() -> dict[str, Any]:
    ir_measures = require("ir_measures", "eval")
    return {
        "ndcg@10": ir_measures.nDCG @ 10,
        "mrr@10": ir_measures.RR @ 10,
        "recall@10": ir_measures.R @ 10,
        "recall@100": ir_measures.R @ 100,
    }


def _complete(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    # trec_eval averages over the queries present in the run; an unanswered query must count as 0.
    return {query_id: dict(run.get(query_id) or {}) for query_id in qrels}


def per_query(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """Each metric for each query of ``qrels``: query id -> metric name -> value."""
    ir_measures = require("ir_measures", "eval")
    measures = _measures()
    names = {str(measure): name for name, measure in measures.items()}
    values: dict[str, dict[str, float]] = {query_id: dict.fromkeys(METRICS, 0.0) for query_id in qrels}
    completed = {query_id: docs for query_id, docs in _complete(run, qrels).items() if docs}
    for metric in ir_measures.iter_calc(list(measures.values()), {q: dict(d) for q, d in qrels.items()}, completed):
        values[metric.query_id][names[str(metric.measure)]] = float(metric.value)
    return values


def evaluate(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over the queries of ``qrels`` (queries without judgements are ignored).

    Example:
        >>> evaluate({"q1": {"d1": 1}}, {"q1": {"d2": 0.9, "d1": 0.5}})["mrr@10"]
        0.5
    """
    values = per_query(qrels, run)
    if not values:
        return dict.fromkeys(METRICS, 0.0)
    return {name: sum(row[name] for row in values.values()) / len(values) for name in METRICS}
