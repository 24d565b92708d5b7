"""The engine-agnostic hit rescoring (core.rescoring) on plain dict requests and responses."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import pytest

from lychee_rerank.adapters._rescoring import (
    HIT_KEY,
    RESPONSE_KEY,
    Combination,
    HitRescorer,
    combine,
    query_text_from,
    response_body,
)
from lychee_rerank.adapters._source_filter import SourceFilter
from lychee_rerank.core import BaseReranker, Document, InvalidInputError, Query
from lychee_rerank.core.inputs import DocumentLike, QueryLike, as_documents, as_query


class LengthReranker(BaseReranker):
    """Scores a document 1 / (1 + its text length): deterministic, no table to keep in sync."""

    def __init__(self) -> None:
        self.calls: list[tuple[Query, list[Document]]] = []

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        parsed = as_documents(documents)
        self.calls.append((as_query(query), parsed))
        return [1 / (1 + len(document.text or "")) for document in parsed]


@pytest.mark.parametrize(
    ("score_mode", "expected"),
    [("total", 4.0), ("multiply", 3.0), ("avg", 2.0), ("max", 3.0), ("min", 1.0)],
)
def test_combine_weights_both_scores_then_applies_the_mode(score_mode: str, expected: float) -> None:
    # a = 2 * 0.5 = 1, b = 0.75 * 4 = 3
    assert combine(2.0, 0.75, query_weight=0.5, rerank_weight=4.0, score_mode=score_mode) == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window_size": 0}, "window_size must be an integer >= 1"),
        ({"window_size": True}, "window_size must be an integer >= 1"),
        ({"window_size": 2.5}, "window_size must be an integer >= 1"),
        ({"query_weight": math.nan}, "query_weight must be a finite number"),
        ({"rerank_weight": math.inf}, "rerank_weight must be a finite number"),
        ({"rerank_weight": "1"}, "rerank_weight must be a finite number"),
        ({"score_mode": "sum"}, "score_mode must be one of total, multiply, avg, max, min; got 'sum'"),
    ],
)
def test_combination_refuses_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(")):
        Combination(**options)


def test_rescore_block_overrides_only_what_it_names() -> None:
    base = Combination(window_size=20, query_weight=0.3, rerank_weight=2.0, score_mode="max")
    assert base.with_block({"lychee": {"score_mode": "avg"}}) == Combination(20, 0.3, 2.0, "avg")
    with pytest.raises(InvalidInputError, match=r"unknown key\(s\) \['query'\]"):
        base.with_block({"lychee": {}, "query": {}})
    with pytest.raises(InvalidInputError, match="must be an object"):
        base.with_block({"lychee": 3})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (False, SourceFilter(enabled=False)),
        (True, SourceFilter()),
        ("title", SourceFilter(includes=("title",))),
        (["a", "b.*"], SourceFilter(includes=("a", "b.*"))),
        ({"include": "a", "exclude": ["b"]}, SourceFilter(includes=("a",), excludes=("b",))),
    ],
)
def test_source_filter_reads_every_request_form(value: object, expected: SourceFilter) -> None:
    assert SourceFilter.parse(value) == expected


def test_source_filter_applies_wildcards_nesting_and_lists_of_objects() -> None:
    source = {
        "title": "t",
        "tags": ["x", "y"],
        "meta": {"lang": "en", "secret": "s", "deep": {"a": 1}},
        "variants": [{"sku": "1", "cost": 5}, {"sku": "2", "cost": 6}],
        "empty": {},
    }
    assert SourceFilter(includes=("meta.*", "variants.sku", "tags"), excludes=("meta.secret",)).apply(source) == {
        "tags": ["x", "y"],
        "meta": {"lang": "en", "deep": {"a": 1}},
        "variants": [{"sku": "1"}, {"sku": "2"}],
    }
    assert SourceFilter(excludes=("meta", "variants.cost")).apply(source) == {
        "title": "t",
        "tags": ["x", "y"],
        "variants": [{"sku": "1"}, {"sku": "2"}],
        "empty": {},
    }
    assert SourceFilter(includes=("ti*",)).apply(source) == {"title": "t"}


def test_source_filter_widening_keeps_the_users_part_and_lifts_blocking_excludes() -> None:
    wanted = SourceFilter(includes=("meta.lang",), excludes=("meta.title", "body"))
    assert not wanted.keeps("meta.title")
    widened = wanted.widened(("meta.title",))
    assert widened == SourceFilter(includes=("meta.lang", "meta.title"), excludes=("body",))
    assert widened.keeps("meta.title")
    assert SourceFilter(enabled=False).widened(("a", "b")) == SourceFilter(includes=("a", "b"))
    assert SourceFilter(excludes=("*",)).widened(("a",)).to_request() is True


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ({"match": {"title": "red dress"}}, "red dress"),
        ({"match": {"title": {"query": "red dress", "operator": "and"}}}, "red dress"),
        ({"match_phrase": {"title": "red dress", "boost": 2}}, "red dress"),
        ({"multi_match": {"query": "red dress", "fields": ["a", "b"]}}, "red dress"),
        ({"query_string": {"query": "red AND dress"}}, "red AND dress"),
        ({"simple_query_string": {"query": "red dress"}}, "red dress"),
        ({"bool": {"must": {"match": {"t": "red"}}, "filter": [{"match": {"c": "shoes"}}]}}, "red"),
        ({"bool": {"should": [{"match": {"t": "red"}}, {"match": {"b": "red"}}]}}, "red"),
        ({"bool": {"must": [{"bool": {"should": [{"match": {"t": "red"}}]}}]}}, "red"),
        ({"bool": {"should": [{"match": {"t": "red"}}, {"match": {"b": "blue"}}]}}, None),
        ({"term": {"sku": "123"}}, None),
        ({"match": {"a": "x", "b": "y"}}, None),
        ({"knn": {"field": "v", "query_vector": [1.0]}}, None),
        (None, None),
    ],
)
def test_query_text_is_taken_only_from_a_simple_full_text_query(query: object, text: str | None) -> None:
    assert query_text_from(query) == text


def test_rescorer_refuses_options_it_cannot_use() -> None:
    with pytest.raises(InvalidInputError, match="nothing to rerank by"):
        HitRescorer(LengthReranker(), text_fields=())
    with pytest.raises(InvalidInputError, match=r"text_template names \['summary'\]"):
        HitRescorer(LengthReranker(), text_fields=("title",), text_template="{title} {summary}")
    with pytest.raises(InvalidInputError, match="timeout_s must be positive"):
        HitRescorer(LengthReranker(), timeout_s=0)
    with pytest.raises(TypeError, match="expected a Reranker"):
        HitRescorer(object())  # type: ignore[arg-type]


def test_documents_read_dotted_paths_lists_templates_and_images() -> None:
    rescorer = HitRescorer(
        LengthReranker(),
        text_fields=("title", "meta.brand", "tags"),
        text_template="{title} by {meta.brand} [{tags}]",
        image_field="media.image",
    )
    hits = [
        {"_source": {"title": "Shirt", "meta": {"brand": "Acme"}, "tags": ["a", "b"], "media": {"image": "s.png"}}},
        {"_source": {"title": "Dress", "meta.brand": "Flat", "media": [{"image": ""}, {"image": "d.png"}]}},
        {"_source": {"title": "Hat"}},
    ]
    assert rescorer.documents(hits) == [
        Document("Shirt by Acme [a\nb]", image="s.png"),
        Document("Dress by Flat []", image="d.png"),
        Document("Hat by  []"),
    ]
    image_only = HitRescorer(LengthReranker(), text_fields=("caption",), image_field="img")
    assert image_only.documents([{"_source": {"caption": "", "img": "data:image/png;base64,AAAA"}}]) == [
        Document(image="data:image/png;base64,AAAA")
    ]
    assert image_only.documents([{"_source": {"caption": "one"}}, {}]) == [Document("one"), Document("")]


def _response(scores: list[float]) -> dict[str, Any]:
    hits = [{"_id": str(i), "_score": s, "_source": {"title": "x" * (i + 1)}} for i, s in enumerate(scores)]
    return {"took": 1, "hits": {"total": {"value": len(hits), "relation": "eq"}, "max_score": 9.0, "hits": hits}}


def test_rescore_on_a_plain_response_leaves_the_raw_response_untouched() -> None:
    reranker = LengthReranker()
    rescorer = HitRescorer(reranker, text_fields=("title",), combination=Combination(window_size=2))
    plan = rescorer.plan({"query": {"match": {"title": "q"}}, "size": 3})
    assert plan.body == {"query": {"match": {"title": "q"}}, "size": 3}
    raw = _response([1.0, 1.0, 5.0])
    before = copy.deepcopy(raw)
    response = rescorer.rescore(raw, plan)
    assert raw == before
    # rerank: 1/2 and 1/3 -> d0 1.5, d1 1.333...; d2 scores 5.0 (query_weight 1) and, as in
    # QueryRescorer.combine, is sorted together with the window.
    assert [(hit["_id"], hit["_score"]) for hit in response["hits"]["hits"]] == [("2", 5.0), ("0", 1.5), ("1", 4 / 3)]
    assert response["hits"]["max_score"] == 5.0
    assert response["took"] == 1
    assert response[RESPONSE_KEY] == {"reranked": True, "error": None, "window_size": 2}
    assert response["hits"]["hits"][0][HIT_KEY] == {"original_score": 5.0, "rerank_score": None}


def test_size_zero_fetches_nothing_and_needs_no_query_text() -> None:
    reranker = LengthReranker()
    rescorer = HitRescorer(reranker, text_fields=("title",))
    plan = rescorer.plan({"query": {"term": {"a": 1}}, "size": 0, "aggs": {"n": {"value_count": {"field": "a"}}}})
    assert plan.body["size"] == 0
    response = rescorer.rescore(
        {"hits": {"total": {"value": 7}, "max_score": None, "hits": []}, "aggregations": {}}, plan
    )
    assert response["hits"]["hits"] == []
    assert reranker.calls == []


def test_plan_refuses_ambiguous_requests() -> None:
    rescorer = HitRescorer(LengthReranker(), text_fields=("title",))
    query = {"match": {"title": "q"}}
    with pytest.raises(InvalidInputError, match="one lychee rescore entry"):
        rescorer.plan({"query": query, "rescore": [{"lychee": {}}, {"lychee": {}}]})
    with pytest.raises(InvalidInputError, match="either in the body or as source_includes"):
        rescorer.plan({"query": query, "_source": ["a"]}, source_includes=["b"])
    with pytest.raises(InvalidInputError, match="from must be an integer >= 0"):
        rescorer.plan({"query": query, "from": -1})


def test_query_image_alone_is_a_rerank_query() -> None:
    rescorer = HitRescorer(LengthReranker(), text_fields=("title",))
    plan = rescorer.plan({"query": {"knn": {"field": "v", "query_vector": [0.1]}}}, rerank_query_image="q.png")
    assert plan.query == Query(image="q.png")
    plan = rescorer.plan({"query": {"match": {"title": "shirt"}}}, rerank_query_image="q.png")
    assert plan.query == Query("shirt", image="q.png")


def test_nested_rerank_field_is_fetched_and_stripped() -> None:
    rescorer = HitRescorer(LengthReranker(), text_fields=("meta.title",))
    plan = rescorer.plan({"query": {"match": {"x": "q"}}, "_source": ["meta.lang"]})
    assert plan.body["_source"] == {"includes": ["meta.lang", "meta.title"]}
    raw = {"hits": {"hits": [{"_id": "a", "_score": 1.0, "_source": {"meta": {"lang": "en", "title": "T"}}}]}}
    response = rescorer.rescore(raw, plan)
    assert response["hits"]["hits"][0]["_source"] == {"meta": {"lang": "en"}}
    assert response["hits"]["hits"][0][HIT_KEY]["rerank_score"] == 0.5


def test_response_body_unwraps_client_responses() -> None:
    class WithBody:
        def __init__(self) -> None:
            self.body = {"hits": {"hits": []}}

    assert response_body(WithBody()) == {"hits": {"hits": []}}
    assert response_body({"hits": {}}) == {"hits": {}}
    with pytest.raises(TypeError, match="expected a search response"):
        response_body([1, 2])
    rescorer = HitRescorer(LengthReranker())
    with pytest.raises(InvalidInputError, match=r"no hits\.hits list"):
        rescorer.rescore({"error": "x"}, rescorer.plan({"size": 0}))
