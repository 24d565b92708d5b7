"""The Ray Serve ingress's app without Ray: in front of the real service app (tiny model) hosted in-process.

What Ray adds (actors, the router, a replica's death) is tested in test_ray_serve.py; here, what the
ingress itself does: answers equal to the service's, the key and body limit checked before anything is
forwarded, the UI served by the ingress and scoring through the replicas.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lychee_rerank.core import LocalReranker
from lychee_rerank.core.errors import ImageError
from lychee_rerank.core.inputs import Document, Query
from lychee_rerank.core.server.app import create_app
from lychee_rerank.core.server.forwarding import WAITED_SCOPE_KEY, AppHost
from lychee_rerank.core.server.ingress import UploadsAndReferences
from lychee_rerank.core.server.settings import ServerSettings
from lychee_rerank.core.testing.replicas import InProcessReplicas, running_ingress

KEY = "ingress-test-key-0123456789"
BODY = {"query": "red shoes", "documents": ["a red running shoe", "blue sky over the sea", "green tea"]}


@pytest.fixture(scope="module")
def ingress(tiny_reranker: LocalReranker) -> Iterator[tuple[str, InProcessReplicas]]:
    settings = ServerSettings(api_key=KEY, max_body_bytes=4096, ui=False, log_level="warning")
    with running_ingress(create_app(tiny_reranker, settings), settings) as running:
        yield running


def test_answers_through_the_ingress_are_the_services(
    ingress: tuple[str, InProcessReplicas], tiny_reranker: LocalReranker
) -> None:
    url, replicas = ingress
    auth = {"Authorization": f"Bearer {KEY}"}
    before = replicas.requests
    with httpx.Client(timeout=60, headers=auth) as http:
        answer = http.post(f"{url}/v1/rerank", json=BODY)
        assert answer.status_code == 200
        scores = {item["index"]: item["relevance_score"] for item in answer.json()["results"]}
        expected = tiny_reranker.score(BODY["query"], BODY["documents"])
        assert [scores[index] for index in range(3)] == pytest.approx(expected, abs=1e-6)
        bad = http.post(f"{url}/v1/rerank", json={"query": "q", "documents": []})
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "invalid_input"
        assert http.get(f"{url}/openapi.json").json()["info"]["title"] == "lychee-rerank"
        assert http.get(f"{url}/health").json()["status"] == "ok"
    assert replicas.requests == before + 4


def test_the_key_and_the_body_limit_are_checked_before_anything_is_forwarded(
    ingress: tuple[str, InProcessReplicas],
) -> None:
    url, replicas = ingress
    before = replicas.requests
    without_key = httpx.post(f"{url}/v1/rerank", json=BODY, timeout=30)
    assert without_key.status_code == 401
    assert without_key.json()["error"]["type"] == "unauthorized"
    too_big = {"query": "q", "documents": ["word " * 2000]}
    refused = httpx.post(f"{url}/v1/rerank", json=too_big, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert refused.status_code == 413
    assert refused.json()["error"]["type"] == "too_large"
    assert replicas.requests == before


def test_the_ingress_ui_refuses_an_image_named_by_a_path_without_reading_it(tmp_path: Path) -> None:
    secret = tmp_path / "private.png"
    secret.write_bytes(b"not for the service")
    asked: list[object] = []

    class Client:
        async def ascore(
            self, query: Query, documents: list[Document], *, instruction: str | None = None
        ) -> list[float]:
            asked.append((query, documents))
            return [0.5 for _ in documents]

    reranker = UploadsAndReferences(Client())  # type: ignore[arg-type]
    for query, document in [
        (Query(text="q", image=str(secret)), Document(text="d")),
        (Query(text="q"), Document(image="file://" + str(secret))),
    ]:
        with pytest.raises(ImageError, match="neither an http\\(s\\) URL nor a data: URI") as caught:
            asyncio.run(reranker.ascore(query, [document]))
        assert caught.value.reason == "forbidden"
    assert asked == []
    scores = asyncio.run(reranker.ascore(Query(image="https://example.com/a.png"), [Document(text="d")]))
    assert scores == [0.5]
    assert len(asked) == 1


def test_a_request_that_waited_past_the_timeout_before_reaching_the_replica_is_answered_504(
    tiny_reranker: LocalReranker,
) -> None:
    """The service's deadline counts from the request's arrival at the front, not at the replica."""
    app = create_app(tiny_reranker, ServerSettings(request_timeout_s=5, ui=False, log_level="warning"))
    body = json.dumps(BODY).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def ask(waits: list[float]) -> list[tuple[int, dict[str, Any]]]:
        host = AppHost(app)
        await host.start()
        answers = []
        try:
            for waited in waits:
                scope = {"type": "http", "method": "POST", "path": "/v1/rerank", "raw_path": b"/v1/rerank",
                         "query_string": b"", "headers": headers, WAITED_SCOPE_KEY: waited}  # fmt: skip
                messages = await host.respond(scope, body)
                answers.append((messages[0]["status"], json.loads(messages[1]["body"])))
        finally:
            await host.stop()
        return answers

    (fresh, fresh_body), (late, late_body) = asyncio.run(ask([0.0, 6.0]))
    assert fresh == 200, fresh_body
    assert late == 504, late_body
    assert late_body["error"]["type"] == "timeout"


def test_every_model_setting_reaches_the_reranker_a_replica_loads(tiny_model_dir: Path) -> None:
    """``serve``, a Ray replica and the test service load the model through one function: a Ray replica
    once ignored the cache sizes."""
    from lychee_rerank.core.server.app import load_reranker

    settings = ServerSettings(
        model=str(tiny_model_dir),
        device="cpu",
        dtype="float32",
        max_batch_tokens=1234,
        max_batch_memory=99 * 1024 * 1024,
        image_cache_bytes=3 * 1024 * 1024,
        vision_cache_bytes=5 * 1024 * 1024,
    )
    reranker = load_reranker(settings)
    assert reranker.engine._images.max_bytes == 3 * 1024 * 1024
    assert reranker.engine._vision_cache.max_bytes == 5 * 1024 * 1024
    assert reranker.engine.max_batch_tokens == 1234
    assert reranker.engine.max_batch_memory == 99 * 1024 * 1024
