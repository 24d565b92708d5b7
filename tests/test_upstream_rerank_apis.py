"""Upstream contract: the rerank APIs the service copies (TEI, Cohere v1/v2, Jina) and what their clients send.

``FACTS`` holds what was read in each upstream's source or docs, with where; the tests below send exactly
those bodies to the service over loopback, so the next upstream change is one edit to the table.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lychee_rerank.core.server.background import running_service

FACTS: dict[str, dict[str, Any]] = {
    "tei_ignores_unknown_fields": {
        "fact": "TEI's RerankRequest derives Deserialize without deny_unknown_fields: unknown keys are ignored",
        "fields": ["query", "texts", "truncate", "raw_scores", "return_text"],
        "source": "huggingface/text-embeddings-inference router/src/http/types.rs RerankRequest",
    },
    "rerankers_tei_body": {
        "fact": "the rerankers package's TEI provider posts model, query, texts, top_n = len(docs), return_text",
        "body": {
            "model": "any",
            "query": "red dress",
            "texts": ["a red dress", "a car"],
            "top_n": 2,
            "return_text": True,
        },
        "source": "AnswerDotAI/rerankers rerankers/models/api_rankers.py APIRanker._format_payload",
    },
    "cohere_v1_request_fields": {
        "fact": "the Cohere v1 SDK's rerank sends model, query, documents, top_n, rank_fields, return_documents, "
        "max_chunks_per_doc; documents are strings or objects",
        "source": "cohere-python Client.rerank (cohere 5.x/7.x); docs.cohere.com/v1/reference/rerank",
    },
    "cohere_v1_rank_fields": {
        "fact": "object documents: without rank_fields the 'text' key is ranked; with rank_fields the named keys "
        "are considered in the order given; Cohere recommends structured data as YAML-like 'key: value' lines",
        "source": "docs.cohere.com/v1/docs/rerank-overview (semi-structured data); docs.cohere.com/docs/reranking",
    },
    "cohere_v2_request_fields": {
        "fact": "the Cohere v2 SDK's rerank sends model, query, documents (strings), top_n, max_tokens_per_doc, "
        "priority",
        "source": "cohere-python ClientV2.rerank (cohere 7.x)",
    },
    "jina_request_fields": {
        "fact": "Jina's rerank takes model, query, documents, top_n, return_documents",
        "body": {
            "model": "jina-reranker-m0",
            "query": "red dress",
            "documents": ["a red dress", "a car"],
            "top_n": 2,
            "return_documents": True,
        },
        "source": "api.jina.ai/v1/rerank (jina.ai reranker API docs)",
    },
}


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path) -> Iterator[Any]:
    with running_service(tiny_model_dir) as running:
        yield running


@pytest.fixture
def client(service: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=60) as http:
        yield http


def _scores_by_index(results: list[dict[str, Any]], key: str) -> dict[int, float]:
    return {int(item["index"]): float(item[key]) for item in results}


def test_tei_shape_ignores_the_model_field_the_rerankers_provider_sends(client: httpx.Client, service: Any) -> None:
    """huggingface/text-embeddings-inference router/src/http/types.rs RerankRequest: unknown fields ignored;
    AnswerDotAI/rerankers api_rankers.py: the TEI provider sends ``model``."""
    body = FACTS["rerankers_tei_body"]["body"]
    answer = client.post("/rerank", json=body)
    assert answer.status_code == 200, answer.text
    ranks = answer.json()
    assert {item["text"] for item in ranks} == set(body["texts"])
    expected = service.reranker.score(body["query"], body["texts"])
    assert _scores_by_index(ranks, "score") == pytest.approx(dict(enumerate(expected)), abs=1e-6)


def test_tei_shape_ignores_any_unknown_field(client: httpx.Client) -> None:
    """TEI router/src/http/types.rs: serde drops keys the struct does not name."""
    answer = client.post("/rerank", json={"query": "q", "texts": ["a", "b"], "user": "x", "future_option": {"a": 1}})
    assert answer.status_code == 200, answer.text
    assert sorted(item["index"] for item in answer.json()) == [0, 1]


def test_tei_shape_still_checks_the_fields_it_knows(client: httpx.Client) -> None:
    answer = client.post("/rerank", json={"query": "q", "texts": ["a"], "raw_scores": "yes"})
    assert answer.status_code == 422


def test_cohere_v1_rank_fields_become_key_value_lines_in_the_given_order(client: httpx.Client, service: Any) -> None:
    """docs.cohere.com/v1/docs/rerank-overview: rank_fields picks the keys and their order."""
    documents = [
        {"title": "Red dress", "body": "Cotton, knee length", "sku": 17, "brand": "Acme"},
        {"title": "Blue car", "body": "Four doors", "sku": 18},
    ]
    body = {
        "model": "rerank-english-v3.0",
        "query": "red dress",
        "documents": documents,
        "rank_fields": ["body", "title"],
    }
    answer = client.post("/v1/rerank", json={**body, "return_documents": True})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    rendered = ["body: Cotton, knee length\ntitle: Red dress", "body: Four doors\ntitle: Blue car"]
    expected = service.reranker.score("red dress", rendered)
    assert _scores_by_index(results, "relevance_score") == pytest.approx(dict(enumerate(expected)), abs=1e-6)
    assert {item["document"]["text"] for item in results} == set(rendered)


def test_cohere_v1_objects_without_rank_fields_are_ranked_by_their_text_key(client: httpx.Client, service: Any) -> None:
    """docs.cohere.com/v1/docs/rerank-overview: without rank_fields the ``text`` key is used."""
    documents = [{"text": "a red dress", "id": "d1", "meta": {"shop": 3}}, {"text": "a car", "id": "d2"}]
    answer = client.post("/v1/rerank", json={"query": "red dress", "documents": documents})
    assert answer.status_code == 200, answer.text
    expected = service.reranker.score("red dress", ["a red dress", "a car"])
    results = answer.json()["results"]
    assert _scores_by_index(results, "relevance_score") == pytest.approx(dict(enumerate(expected)), abs=1e-6)


def test_cohere_v1_sdk_sends_rank_fields_and_gets_an_answer(service: Any) -> None:
    """cohere-python Client.rerank (the v1 SDK) with object documents and rank_fields, as its users call it."""
    cohere = pytest.importorskip("cohere")
    client = cohere.Client(api_key="unused", base_url=service.url)
    response = client.rerank(
        model="rerank-english-v3.0",
        query="red dress",
        documents=[{"title": "Red dress", "text": "Cotton"}, {"title": "Car", "text": "Four doors"}],
        rank_fields=["title", "text"],
        top_n=2,
        return_documents=True,
        max_chunks_per_doc=10,
    )
    expected = service.reranker.score("red dress", ["title: Red dress\ntext: Cotton", "title: Car\ntext: Four doors"])
    scores = {result.index: result.relevance_score for result in response.results}
    assert scores == pytest.approx(dict(enumerate(expected)), abs=1e-6)


def test_cohere_v2_and_jina_fields_are_accepted(client: httpx.Client) -> None:
    """cohere-python ClientV2.rerank and Jina's API send these fields; they are accepted, not 422."""
    cohere_v2 = {
        "model": "rerank-v3.5",
        "query": "q",
        "documents": ["a", "b"],
        "top_n": 1,
        "max_tokens_per_doc": 512,
        "priority": 1,
    }
    assert client.post("/v2/rerank", json=cohere_v2).status_code == 200
    jina = FACTS["jina_request_fields"]["body"]
    answer = client.post("/v1/rerank", json=jina)
    assert answer.status_code == 200, answer.text
    assert all(item["document"]["text"] in jina["documents"] for item in answer.json()["results"])


def test_rank_fields_missing_from_a_document_is_a_clear_error(client: httpx.Client) -> None:
    answer = client.post("/v1/rerank", json={"query": "q", "documents": [{"sku": 1}], "rank_fields": ["title"]})
    assert answer.status_code in (400, 422)
    assert "needs text, an image, or both" in answer.text


def test_facts_name_their_source() -> None:
    assert all(fact["source"] and fact["fact"] for fact in FACTS.values())
