"""Upstream contract: Elasticsearch's query rescorer, ``custom`` inference service and rerank retriever.

``FACTS`` holds what was read in elastic/elasticsearch, with where. The tests check the plugin's and the
adapter's own tables against the facts, and replay the upstream algorithms written out here as data
(``QueryRescorer.combine``'s splice and sort, the retriever's ``preprocess``) against our code, so the next
upstream change is one edit to this file.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from lychee_rerank.adapters._rescoring import SCORE_MODES, Combination, HitRescorer
from lychee_rerank.core.testing.fakes import TableReranker
from lychee_rerank.plugins.elasticsearch import (
    JSON_PARSER,
    REQUEST_TEMPLATE,
    require_custom_service,
    text_similarity_reranker_body,
)

FACTS: dict[str, dict[str, Any]] = {
    "rescore_combine": {
        "fact": "inside the window: scoreMode.combine(first * queryWeight, second * rescoreQueryWeight); past the "
        "window: score *= queryWeight; then, if there are hits past the window, ALL hits are sorted by score "
        "(desc; ties by doc id)",
        "modes": {"total": "a + b", "multiply": "a * b", "avg": "(a + b) / 2", "max": "max(a, b)", "min": "min(a, b)"},
        "source": "elastic/elasticsearch server/src/main/java/org/elasticsearch/search/rescore/QueryRescorer.java "
        "rescore / combine; QueryRescoreMode",
    },
    "rescore_window_per_shard": {
        "fact": "window_size is applied by each shard to its own top hits (topN(topDocs, windowSize) in the shard's "
        "query phase); the default is 10",
        "default_window": 10,
        "source": "elastic/elasticsearch QueryRescorer.rescore (per shard TopDocs); "
        "RescorerBuilder DEFAULT_WINDOW_SIZE",
    },
    "custom_request_placeholders": {
        "fact": "rerank requests fill ${input} with the documents as a JSON array and ${query} with the query; "
        "${top_n} and ${return_documents} only when the caller set them (the retriever sets neither)",
        "placeholders": ["${query}", "${input}"],
        "optional": ["${top_n}", "${return_documents}"],
        "source": "elastic/elasticsearch x-pack/plugin/inference/.../services/custom/request/RerankParameters.java, "
        "RequestParameters.java",
    },
    "custom_response_parser": {
        "fact": "json_parser needs relevance_score; reranked_index and document_text are optional",
        "required": ["relevance_score"],
        "optional": ["reranked_index", "document_text"],
        "source": "elastic/elasticsearch x-pack/plugin/inference/.../services/custom/response/"
        "RerankResponseParser.java",
    },
    "retriever_scores": {
        "fact": "scores are placed by index; a result count other than the document count fails the search; "
        "min_score is compared with the raw score (doc.score >= minScore) and only then normalizeScore "
        "max(s, 0) + min(exp(s), 1) is applied, so a probability p comes back as 1 + p",
        "source": "elastic/elasticsearch x-pack/plugin/inference/.../rank/textsimilarity/"
        "TextSimilarityRankFeaturePhaseRankCoordinatorContext.java computeScores / preprocess / normalizeScore",
    },
    "custom_service_versions": {
        "fact": "the custom inference service exists in 8.19 and from 9.1 on, not in 9.0",
        "accepted": ["8.19.0", "9.1.0", "9.2.3"],
        "refused": ["8.18.2", "9.0.4"],
        "source": "elastic/elasticsearch x-pack inference CustomService (added for 8.19 / 9.1); release notes",
    },
}


# -- QueryRescorer.combine, replayed ------------------------------------------------------------------------


def _upstream_rescore(
    scores: list[float], rerank: list[float], window: int, query_weight: float, rerank_weight: float, mode: str
) -> list[tuple[int, float]]:
    """QueryRescorer as FACTS describe it: (position, score) best first; ties by position (doc order)."""
    modes = {
        "total": lambda a, b: a + b,
        "multiply": lambda a, b: a * b,
        "avg": lambda a, b: (a + b) / 2,
        "max": max,
        "min": min,
    }
    combined = [
        modes[mode](score * query_weight, rerank[i] * rerank_weight) if i < window else score * query_weight
        for i, score in enumerate(scores)
    ]
    window_sorted = sorted(range(min(window, len(scores))), key=lambda i: (-combined[i], i))
    if len(scores) <= window:
        return [(i, combined[i]) for i in window_sorted]
    return sorted(((i, combined[i]) for i in range(len(scores))), key=lambda pair: (-pair[1], pair[0]))


def _response(scores: list[float]) -> dict[str, Any]:
    hits = [{"_id": str(i), "_score": score, "_source": {"title": f"t{i}"}} for i, score in enumerate(scores)]
    return {"hits": {"total": {"value": len(hits)}, "max_score": max(scores), "hits": hits}}


@pytest.mark.parametrize("mode", SCORE_MODES)
@pytest.mark.parametrize("query_weight", [1.0, 0.3, -1.0])
def test_rescoring_equals_query_rescorer_combine(mode: str, query_weight: float) -> None:
    """elastic/elasticsearch QueryRescorer.combine: past the window ``*= queryWeight``, then all hits sorted."""
    rng = random.Random(hash((mode, query_weight)) % 1000)
    scores = sorted((round(rng.uniform(0.5, 12.0), 3) for _ in range(12)), reverse=True)
    rerank = [round(rng.random(), 3) for _ in scores]
    window = 5
    stub = TableReranker({f"t{i}": value for i, value in enumerate(rerank)})
    rescorer = HitRescorer(stub, text_fields=("title",), combination=Combination(window, query_weight, 2.0, mode))  # type: ignore[arg-type]
    plan = rescorer.plan({"query": {"match": {"title": "q"}}, "size": len(scores)})
    hits = rescorer.rescore(_response(scores), plan)["hits"]["hits"]
    expected = _upstream_rescore(scores, rerank, window, query_weight, 2.0, mode)
    assert [hit["_score"] for hit in hits] == pytest.approx([score for _, score in expected])
    # Ties are broken by doc id upstream and by first-stage order here: compare the order only on distinct scores.
    if len({score for _, score in expected}) == len(expected):
        assert [int(hit["_id"]) for hit in hits] == [i for i, _ in expected]


def test_the_default_window_is_elasticsearchs() -> None:
    assert Combination().window_size == FACTS["rescore_window_per_shard"]["default_window"]


# -- the custom inference service ---------------------------------------------------------------------------


def test_request_template_uses_only_the_placeholders_the_retriever_fills() -> None:
    """RerankParameters: ${top_n}/${return_documents} are filled only when set; the retriever sets neither."""
    for placeholder in FACTS["custom_request_placeholders"]["placeholders"]:
        assert placeholder in REQUEST_TEMPLATE
    for placeholder in FACTS["custom_request_placeholders"]["optional"]:
        assert placeholder not in REQUEST_TEMPLATE


def test_response_parser_has_the_required_keys_and_only_known_ones() -> None:
    """RerankResponseParser.fromMap: relevance_score required, reranked_index/document_text optional."""
    facts = FACTS["custom_response_parser"]
    assert set(facts["required"]) <= set(JSON_PARSER)
    assert set(JSON_PARSER) <= set(facts["required"]) | set(facts["optional"])


@pytest.mark.parametrize("version", FACTS["custom_service_versions"]["accepted"])
def test_versions_with_the_custom_service_are_accepted(version: str) -> None:
    assert require_custom_service(_VersionOnly(version)) == tuple(int(part) for part in version.split(".")[:2])


@pytest.mark.parametrize("version", FACTS["custom_service_versions"]["refused"])
def test_versions_without_the_custom_service_are_refused(version: str) -> None:
    from lychee_rerank.core.errors import LycheeError

    with pytest.raises(LycheeError, match="has no 'custom' inference service"):
        require_custom_service(_VersionOnly(version))


class _VersionOnly:
    """What ``require_custom_service`` reads of a client: ``info()``."""

    def __init__(self, version: str) -> None:
        self.version = version

    def info(self) -> dict[str, Any]:
        return {"version": {"number": self.version}}


# -- the text_similarity_reranker retriever, replayed --------------------------------------------------------


def _upstream_preprocess(raw: list[float], min_score: float | None) -> list[float]:
    """TextSimilarityRankFeaturePhaseRankCoordinatorContext.preprocess: filter on the raw score, then normalize."""
    kept = [score for score in raw if min_score is None or score >= min_score]
    return sorted((max(score, 0.0) + min(math.exp(score), 1.0) for score in kept), reverse=True)


def test_min_probability_filters_as_elasticsearch_compares_min_score() -> None:
    """preprocess compares minScore with the raw p; normalizeScore then makes p into 1 + p."""
    probabilities = [0.9, 0.55, 0.5, 0.2]
    body = text_similarity_reranker_body({"match_all": {}}, field="text", inference_text="q", min_probability=0.5)
    min_score = body["retriever"]["text_similarity_reranker"]["min_score"]
    assert _upstream_preprocess(probabilities, min_score) == pytest.approx([1.9, 1.55, 1.5])
    # What a user who took the shifted scores for the threshold's units would get: nothing.
    assert _upstream_preprocess(probabilities, 1.5) == []
