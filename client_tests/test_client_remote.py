"""RemoteReranker against the real service, from a process without torch."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from lychee_rerank.core import Document, LycheeError, Query, RemoteReranker, as_reranker

IMAGES = Path(__file__).resolve().parent.parent / "examples" / "images"
QUERY = Query("white linen shirt", image=str(IMAGES / "shirt_white.png"))
DOCUMENTS = [
    Document("White linen shirt, relaxed fit"),
    Document(image=str(IMAGES / "shirt_blue.png")),
    Document("Red leather shoes", image=str(IMAGES / "shoes_red.png")),
    Document("A revenue chart", image=str(IMAGES / "chart_revenue.png")),
]


def test_this_venv_is_the_light_install() -> None:
    # Without this the session's "no torch loaded" check would prove nothing.
    assert [name for name in ("torch", "torchvision", "transformers") if importlib.util.find_spec(name)] == []


def test_scores_are_probabilities_in_input_order(remote: RemoteReranker) -> None:
    scores = remote.score(QUERY, DOCUMENTS, instruction="ecommerce")
    assert len(scores) == len(DOCUMENTS)
    assert all(math.isfinite(score) and 0.0 <= score <= 1.0 for score in scores)


def test_rerank_sorts_the_same_scores_and_cuts_at_top_n(remote: RemoteReranker) -> None:
    scores = remote.score(QUERY, DOCUMENTS, instruction="ecommerce")
    results = remote.rerank(QUERY, DOCUMENTS, instruction="ecommerce", top_n=3)
    expected = sorted(range(len(DOCUMENTS)), key=lambda index: -scores[index])[:3]
    assert [result.index for result in results] == expected
    assert [result.score for result in results] == pytest.approx([scores[index] for index in expected], abs=1e-4)
    assert [result.document for result in results] == [DOCUMENTS[index] for index in expected]


async def test_async_scores_match_sync_scores(remote: RemoteReranker) -> None:
    sync_scores = remote.score(QUERY, DOCUMENTS)
    async_scores = await remote.ascore(QUERY, DOCUMENTS)
    assert async_scores == pytest.approx(sync_scores, abs=1e-4)
    results = await remote.arerank(QUERY, DOCUMENTS, top_n=1)
    assert results[0].index == max(range(len(DOCUMENTS)), key=lambda index: sync_scores[index])


def test_a_url_string_is_a_remote_reranker_reading_the_key_from_the_environment(service_url: str) -> None:
    reranker = as_reranker(service_url)
    assert isinstance(reranker, RemoteReranker)
    assert len(reranker.score("shirt", ["a shirt", "a shoe"])) == 2


def test_a_wrong_api_key_is_an_error_not_a_score(service_url: str) -> None:
    reranker = RemoteReranker(service_url, api_key="not-the-key", max_retries=0)
    with pytest.raises(LycheeError):
        reranker.score("shirt", ["a shirt"])
    reranker.close()
