"""Real clients against the service: the official cohere SDK, and the TEI shape over raw HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lychee_rerank.core.remote import encode_image
from lychee_rerank.core.server.background import running_service

cohere = pytest.importorskip("cohere")


KEY = "client-key"
DOCUMENTS = ["a red summer dress", "a stainless steel bottle", "running shoes", "a red evening dress"]


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path) -> Iterator[Any]:
    with running_service(tiny_model_dir, api_key=KEY) as running:
        yield running


def test_cohere_sdk_v2_reranks_through_the_service(service: Any) -> None:
    client = cohere.ClientV2(api_key=KEY, base_url=service.url)
    response = client.rerank(model="lychee-rerank-mm", query="red dress", documents=DOCUMENTS, top_n=3)
    assert len(response.results) == 3
    scores = [result.relevance_score for result in response.results]
    assert scores == sorted(scores, reverse=True)
    expected = service.reranker.rerank("red dress", DOCUMENTS, top_n=3)
    assert [result.index for result in response.results] == [result.index for result in expected]
    assert scores == pytest.approx([result.score for result in expected], abs=1e-6)


async def test_cohere_async_sdk_and_a_wrong_key(service: Any) -> None:
    client = cohere.AsyncClientV2(api_key=KEY, base_url=service.url)
    response = await client.rerank(model="lychee-rerank-mm", query="shoes", documents=DOCUMENTS)
    assert sorted(result.index for result in response.results) == [0, 1, 2, 3]
    refused = cohere.ClientV2(api_key="wrong", base_url=service.url)
    with pytest.raises(cohere.core.api_error.ApiError) as caught:
        refused.rerank(model="lychee-rerank-mm", query="shoes", documents=DOCUMENTS)
    assert caught.value.status_code == 401


def test_tei_shape_over_raw_http(service: Any) -> None:
    body = {"query": "red dress", "texts": DOCUMENTS, "return_text": True, "truncate": True}
    answer = httpx.post(f"{service.url}/rerank", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    ranks = answer.json()
    assert isinstance(ranks, list)
    assert all(set(item) == {"index", "score", "text"} for item in ranks)
    assert [item["text"] for item in ranks] == [DOCUMENTS[item["index"]] for item in ranks]
    assert [item["score"] for item in ranks] == sorted((item["score"] for item in ranks), reverse=True)


def test_elasticsearch_custom_service_request_template(service: Any, image_files: list[Path]) -> None:
    # What Elasticsearch's `custom` inference service sends: strings only, so images travel as JSON text.
    image = encode_image(image_files[0])
    documents = ["plain text", json.dumps({"text": "a chart", "image": image})]
    answer = httpx.post(
        f"{service.url}/v1/rerank?json_documents=true",
        json={"query": "chart", "documents": documents, "top_n": 2},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    served = {result["index"]: result["relevance_score"] for result in results}
    local = service.reranker.score("chart", ["plain text", {"text": "a chart", "image": image}])
    assert [served[0], served[1]] == pytest.approx(local, abs=1e-6)
