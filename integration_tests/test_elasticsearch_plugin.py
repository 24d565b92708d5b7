"""The Elasticsearch plugin against a real cluster: inference endpoint plus ``text_similarity_reranker``.

Needs ``ELASTICSEARCH_URL`` (``http://localhost:9200`` with the compose stack) and the rerank service's URL as
Elasticsearch reaches it: ``RERANK_URL_FROM_ENGINE`` (``http://rerank:8000`` in the stack), else
``RERANK_URL``. Elasticsearch 8.19+/9.1+ with a license that has the inference API's ``custom`` service
(the stack's trial). Set ``RERANK_API_KEY`` when the service has a key. The relevance assertion expects the
real model; with a service on the tiny random checkpoint set ``RERANK_SERVICE_MODEL=tiny`` to keep only the
checks on scores.
"""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from elasticsearch import Elasticsearch

from lychee_rerank.plugins.elasticsearch import (
    check_inference_endpoint,
    delete_inference_endpoint,
    install_inference_endpoint,
    text_similarity_reranker_body,
)

pytestmark = pytest.mark.requires_env("ELASTICSEARCH_URL")

QUERY = "What is the capital of France?"
DOCUMENTS = {
    "paris": "Paris is the capital and largest city of France.",
    # Keyword stuffing: BM25 likes it, a cross-encoder should not.
    "stuffed": "What is the capital? France capital, capital of France, France France capital question list.",
    "berlin": "Berlin is the capital of Germany.",
    "bananas": "Bananas are rich in potassium; France imports most of them.",
}
REAL_MODEL = os.environ.get("RERANK_SERVICE_MODEL", "").strip().lower() != "tiny"


@pytest.fixture
def es(env_url: Callable[[str], str]) -> Iterator[Elasticsearch]:
    # Creating an endpoint makes Elasticsearch call the service once: allow for a cold model.
    client = Elasticsearch(env_url("ELASTICSEARCH_URL"), request_timeout=180)
    yield client
    client.close()


@pytest.fixture
def index(es: Elasticsearch) -> Iterator[str]:
    name = f"lychee-plugin-{uuid.uuid4().hex[:8]}"
    es.indices.create(
        index=name, mappings={"properties": {"text": {"type": "text"}, "mm": {"type": "text", "index": False}}}
    )
    for doc_id, text in DOCUMENTS.items():
        es.index(index=name, id=doc_id, document={"text": text, "mm": json.dumps({"text": text, "image": _png()})})
    es.indices.refresh(index=name)
    yield name
    es.indices.delete(index=name, ignore_unavailable=True)


def _png() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _rerank(es: Elasticsearch, index: str, field: str, inference_id: str) -> list[dict[str, object]]:
    body = text_similarity_reranker_body(
        {"match": {"text": QUERY}}, field=field, inference_text=QUERY, inference_id=inference_id, rank_window_size=10
    )
    hits: list[dict[str, object]] = es.search(index=index, size=4, **body)["hits"]["hits"]
    return hits


def test_endpoint_install_search_and_uninstall(es: Elasticsearch, index: str, rerank_url_from_engine: str) -> None:
    inference_id = f"lychee-it-{uuid.uuid4().hex[:8]}"
    api_key = os.environ.get("RERANK_API_KEY") or None
    try:
        first = install_inference_endpoint(es, rerank_url_from_engine, inference_id=inference_id, api_key=api_key)
        again = install_inference_endpoint(es, rerank_url_from_engine, inference_id=inference_id, api_key=api_key)
        assert (first.action, again.action) == ("created", "unchanged")

        status = check_inference_endpoint(es, inference_id=inference_id)
        assert status.ok, status.problems
        assert status.probe_scores is not None
        assert all(0.0 <= s <= 1.0 for s in status.probe_scores)

        hits = _rerank(es, index, "text", inference_id)
        assert len(hits) == len(DOCUMENTS)
        # Elasticsearch normalises a probability p to max(p, 0) + min(exp(p), 1) = 1 + p.
        scores = [float(str(hit["_score"])) for hit in hits]
        assert all(1.0 <= score <= 2.0 for score in scores)
        assert scores == sorted(scores, reverse=True)
        if REAL_MODEL:
            assert hits[0]["_id"] == "paris"

        # min_score is compared with the raw p before the shift: a threshold between two probabilities
        # keeps exactly the hits above it (TextSimilarityRankFeaturePhaseRankCoordinatorContext.preprocess).
        probabilities = [score - 1.0 for score in scores]
        threshold = (probabilities[0] + probabilities[-1]) / 2
        body = text_similarity_reranker_body(
            {"match": {"text": QUERY}},
            field="text",
            inference_text=QUERY,
            inference_id=inference_id,
            rank_window_size=10,
            min_probability=threshold,
        )
        kept = [float(str(hit["_score"])) - 1.0 for hit in es.search(index=index, size=4, **body)["hits"]["hits"]]
        assert kept == pytest.approx([p for p in probabilities if p >= threshold], abs=1e-6)
    finally:
        delete_inference_endpoint(es, inference_id=inference_id)
    assert not check_inference_endpoint(es, inference_id=inference_id, probe=False).exists


def test_multimodal_endpoint_scores_json_string_documents(
    es: Elasticsearch, index: str, rerank_url_from_engine: str
) -> None:
    inference_id = f"lychee-it-mm-{uuid.uuid4().hex[:8]}"
    api_key = os.environ.get("RERANK_API_KEY") or None
    try:
        install_inference_endpoint(
            es, rerank_url_from_engine, inference_id=inference_id, api_key=api_key, multimodal=True
        )
        hits = _rerank(es, index, "mm", inference_id)
        assert len(hits) == len(DOCUMENTS)
        assert all(1.0 <= float(str(hit["_score"])) <= 2.0 for hit in hits)
    finally:
        delete_inference_endpoint(es, inference_id=inference_id)
