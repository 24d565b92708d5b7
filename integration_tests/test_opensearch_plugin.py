"""The OpenSearch plugin against a real cluster: connector, remote model and rerank search pipeline.

Needs ``OPENSEARCH_URL`` (``http://localhost:9201`` with the compose stack) and the rerank service's URL as
OpenSearch reaches it: ``RERANK_URL_FROM_ENGINE`` (``http://rerank:8000`` in the stack), else ``RERANK_URL``.
OpenSearch 2.12+ with ml-commons and neural-search; ``OPENSEARCH_USER``/``OPENSEARCH_PASSWORD`` when security
is on. Set ``RERANK_API_KEY`` when the service has a key. The relevance assertion expects the real model;
with a service on the tiny random checkpoint set ``RERANK_SERVICE_MODEL=tiny`` to keep only the checks on
scores. The install adds the service to ``plugins.ml_commons.trusted_connector_endpoints_regex`` and leaves it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opensearchpy import OpenSearch

from lychee_rerank.plugins.opensearch import (
    check_rerank_pipeline,
    install_rerank_pipeline,
    rerank_search_body,
    uninstall_rerank_pipeline,
)

pytestmark = pytest.mark.requires_env("OPENSEARCH_URL")

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
def client(env_url: Callable[[str], str]) -> Iterator[OpenSearch]:
    options: dict[str, Any] = {"timeout": 180}
    if os.environ.get("OPENSEARCH_USER"):
        options["http_auth"] = (os.environ["OPENSEARCH_USER"], os.environ.get("OPENSEARCH_PASSWORD", ""))
        options["verify_certs"] = False
        options["ssl_show_warn"] = False
    opensearch = OpenSearch(env_url("OPENSEARCH_URL"), **options)
    yield opensearch
    opensearch.close()


@pytest.fixture
def index(client: OpenSearch) -> Iterator[str]:
    name = f"lychee-plugin-{uuid.uuid4().hex[:8]}"
    client.indices.create(index=name, body={"mappings": {"properties": {"text": {"type": "text"}}}})
    for doc_id, text in DOCUMENTS.items():
        client.index(index=name, id=doc_id, body={"text": text})
    client.indices.refresh(index=name)
    yield name
    client.indices.delete(index=name, ignore_unavailable=True)


def test_pipeline_install_search_and_uninstall(client: OpenSearch, index: str, rerank_url_from_engine: str) -> None:
    name = f"lychee-it-{uuid.uuid4().hex[:8]}"
    api_key = os.environ.get("RERANK_API_KEY") or None
    try:
        first = install_rerank_pipeline(
            client, rerank_url_from_engine, document_fields=["text"], name=name, api_key=api_key
        )
        assert first.actions["connector"] == "created"
        assert first.actions["pipeline"] == "created"
        # install ends with a test rerank and a real search through the pipeline (a temporary index).
        assert first.check is not None
        assert first.check.ok, first.check.problems
        again = install_rerank_pipeline(
            client, rerank_url_from_engine, document_fields=["text"], name=name, api_key=api_key
        )
        assert (again.connector_id, again.model_id) == (first.connector_id, first.model_id)
        assert set(again.actions.values()) == {"unchanged"}

        status = check_rerank_pipeline(client, name=name)
        assert status.ok, status.problems
        assert status.probe_scores is not None
        assert all(0.0 <= s <= 1.0 for s in status.probe_scores)

        body = rerank_search_body({"match": {"text": QUERY}}, query_text=QUERY, size=10)
        hits = client.search(index=index, body=body, params={"search_pipeline": first.pipeline_id})["hits"]["hits"]
        assert len(hits) == len(DOCUMENTS)
        scores = [float(hit["_score"]) for hit in hits]
        assert all(0.0 <= score <= 1.0 for score in scores)
        assert scores == sorted(scores, reverse=True)
        if REAL_MODEL:
            assert hits[0]["_id"] == "paris"
    finally:
        uninstall_rerank_pipeline(client, name=name)
    after = check_rerank_pipeline(client, name=name, probe=False)
    assert (after.connector_id, after.model_id, after.pipeline_model_id) == (None, None, None)
