"""The service over real HTTP on loopback: routes and shapes, scheduling, limits, health, metrics, docs."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lychee_rerank.core import Document, LocalReranker, Query
from lychee_rerank.core.remote import encode_image
from lychee_rerank.core.server.app import create_app
from lychee_rerank.core.server.background import BackgroundServer, running_service
from lychee_rerank.core.server.scheduler import PlainRequest, QueueFullError, Scheduler, score_plain
from lychee_rerank.core.server.settings import ServerSettings

API_KEY = "test-key-123"


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path) -> Iterator[Any]:
    with running_service(tiny_model_dir, max_wait_ms=30.0, max_documents=50) as running:
        yield running


@pytest.fixture
def client(service: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=60) as http:
        yield http


def test_cohere_route_returns_sorted_results_with_documents_and_usage(client: httpx.Client) -> None:
    body = {"query": "red dress", "documents": ["a red dress", "a blue car", "shoes"], "return_documents": True}
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        answer = client.post(path, json=body)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        assert set(data) >= {"id", "model", "results", "usage"}
        scores = [result["relevance_score"] for result in data["results"]]
        assert scores == sorted(scores, reverse=True)
        assert sorted(result["index"] for result in data["results"]) == [0, 1, 2]
        for result in data["results"]:
            assert result["document"] == {"text": body["documents"][result["index"]]}
            assert 0.0 <= result["relevance_score"] <= 1.0


def test_scores_equal_the_local_reranker(client: httpx.Client, service: Any) -> None:
    documents = ["a red dress", "a blue car", "running shoes"]
    answer = client.post("/v1/rerank", json={"query": "red dress", "documents": documents}).json()
    served = {result["index"]: result["relevance_score"] for result in answer["results"]}
    local = service.reranker.score("red dress", documents)
    assert [served[i] for i in range(3)] == pytest.approx(local, abs=1e-6)


def test_top_n_min_score_and_instruction_preset(client: httpx.Client) -> None:
    documents = ["a", "b", "c", "d"]
    full = client.post("/v1/rerank", json={"query": "q", "documents": documents, "instruction": "ecommerce"}).json()
    cut = client.post(
        "/v1/rerank", json={"query": "q", "documents": documents, "instruction": "ecommerce", "top_n": 2}
    ).json()
    assert cut["results"] == full["results"][:2]
    threshold = full["results"][1]["relevance_score"]
    kept = client.post(
        "/v1/rerank", json={"query": "q", "documents": documents, "instruction": "ecommerce", "min_score": threshold}
    ).json()
    assert [r["index"] for r in kept["results"]] == [r["index"] for r in full["results"][:2]]
    plain = client.post("/v1/rerank", json={"query": "q", "documents": documents}).json()
    assert plain["results"] != full["results"]  # the instruction is part of the prompt


def test_image_documents_as_objects_and_vllm_content_lists_score_alike(
    client: httpx.Client, image_files: list[Path]
) -> None:
    image = encode_image(image_files[3])
    as_object = {"text": "a chart", "image": image}
    as_content = {"content": [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "a chart"}]}
    answer = client.post("/v1/rerank", json={"query": {"text": "chart"}, "documents": [as_object, as_content]})
    assert answer.status_code == 200, answer.text
    scores = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
    assert scores[0] == pytest.approx(scores[1], abs=1e-7)


def test_json_string_documents_become_multimodal_only_when_asked(client: httpx.Client, image_files: list[Path]) -> None:
    image = encode_image(image_files[4])
    as_string = json.dumps({"text": "a photo", "image": image})
    as_object = {"text": "a photo", "image": image}
    body = {"query": "photo", "documents": [as_string, as_object]}

    def scores(**kwargs: Any) -> list[float]:
        results = client.post("/v1/rerank", json=body, **kwargs).json()["results"]
        return [r["relevance_score"] for r in sorted(results, key=lambda r: r["index"])]

    asked_by_parameter = scores(params={"json_documents": "true"})
    asked_by_header = scores(headers={"X-Lychee-Json-Documents": "1"})
    not_asked = scores()
    assert asked_by_parameter[0] == pytest.approx(asked_by_parameter[1], abs=1e-7)
    assert asked_by_header == pytest.approx(asked_by_parameter, abs=1e-7)
    assert not_asked[0] != pytest.approx(not_asked[1], abs=1e-7)  # the JSON stayed plain text


def test_tei_route_returns_index_score_and_text(client: httpx.Client) -> None:
    answer = client.post("/rerank", json={"query": "q", "texts": ["alpha", "beta"], "return_text": True})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert isinstance(data, list)
    assert {item["text"] for item in data} == {"alpha", "beta"}
    assert data[0]["score"] >= data[1]["score"]
    raw = client.post("/rerank", json={"query": "q", "texts": ["alpha", "beta"], "raw_scores": True}).json()
    assert "text" not in raw[0]
    assert raw[0]["score"] != data[0]["score"]  # a logit, not a probability


def test_rerank_batch_returns_ranked_rows_and_a_markdown_table(client: httpx.Client) -> None:
    body = {"instruction": "academic", "query": {"text": "q"}, "documents": [{"text": "a|b"}, {"text": "c"}]}
    data = client.post("/rerank_batch", json=body).json()
    assert [row["rank"] for row in data["results"]] == [1, 2]
    assert data["markdown"].splitlines()[0].startswith("| rank | index | score |")
    assert "a\\|b" in data["markdown"]  # a pipe in text does not break the table
    pair = client.post("/score", json={"instruction": "academic", "query": {"text": "q"}, "document": {"text": "c"}})
    by_index = {row["index"]: row["score"] for row in data["results"]}
    assert pair.json()["score"] == pytest.approx(by_index[1], abs=1e-6)


def test_long_documents_are_truncated_not_refused(tiny_model_dir: Path) -> None:
    with running_service(tiny_model_dir, max_document_tokens=16) as running, httpx.Client() as http:
        long_text = "white linen shirt " * 400
        cut_text = running.app.state.lychee.truncator(long_text)
        answer = http.post(f"{running.url}/v1/rerank", json={"query": "shirt", "documents": [long_text]})
        assert answer.status_code == 200, answer.text
        expected = running.reranker.score("shirt", [cut_text])
        assert answer.json()["results"][0]["relevance_score"] == pytest.approx(expected[0], abs=1e-6)
        assert len(running.reranker.loaded.tokenizer(cut_text, add_special_tokens=False)["input_ids"]) <= 16


def test_health_metrics_and_docs(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    client.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
    metrics = client.get("/metrics").text
    for name in (
        'lychee_requests_total{route="/v1/rerank",status="200"}',
        "lychee_request_duration_seconds_bucket",
        "lychee_batch_documents_bucket",
        "lychee_queue_depth",
        "lychee_documents_scored_total",
    ):
        assert name in metrics
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/rerank", "/v2/rerank", "/rerank", "/rerank_batch", "/score", "/health", "/metrics"):
        assert path in paths
    assert client.get("/docs").status_code == 200


def test_api_key_is_required_when_set(tiny_model_dir: Path) -> None:
    with running_service(tiny_model_dir, api_key=API_KEY) as running, httpx.Client() as http:
        body = {"query": "q", "documents": ["a"]}
        missing = http.post(f"{running.url}/v1/rerank", json=body)
        wrong = http.post(f"{running.url}/v1/rerank", json=body, headers={"Authorization": "Bearer nope"})
        right = http.post(f"{running.url}/v1/rerank", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
        assert missing.status_code == wrong.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json()["error"]["type"] == "unauthorized"
        assert right.status_code == 200
        assert http.get(f"{running.url}/health").status_code == 200  # operators probe without the key


async def test_concurrent_requests_are_merged_and_equal_sequential_results(service: Any) -> None:
    documents = [[f"doc {i} {j}" for j in range(3)] for i in range(8)]
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as http:
        sequential = []
        for docs in documents:
            sequential.append((await http.post("/v1/rerank", json={"query": "shared", "documents": docs})).json())
        stats = service.app.state.scheduler.stats
        calls_before, requests_before = stats.engine_calls, stats.submitted
        answers = await asyncio.gather(
            *(http.post("/v1/rerank", json={"query": "shared", "documents": docs}) for docs in documents)
        )
        calls, requests = stats.engine_calls - calls_before, stats.submitted - requests_before
    assert requests == 8
    assert calls < requests  # same-query requests shared engine calls
    assert stats.merged_requests > 0
    for answer, alone in zip(answers, sequential, strict=True):
        merged = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
        single = {r["index"]: r["relevance_score"] for r in alone["results"]}
        assert merged == pytest.approx(single, abs=1e-6)


async def test_concurrent_requests_with_different_queries_share_engine_calls(service: Any) -> None:
    requests = [(f"query number {i}", [f"doc {i} {j}" for j in range(3)]) for i in range(8)]
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as http:
        sequential = [
            (await http.post("/v1/rerank", json={"query": query, "documents": docs})).json() for query, docs in requests
        ]
        stats = service.app.state.scheduler.stats
        calls_before, merged_before = stats.engine_calls, stats.merged_requests
        answers = await asyncio.gather(
            *(http.post("/v1/rerank", json={"query": query, "documents": docs}) for query, docs in requests)
        )
    assert stats.engine_calls - calls_before < len(requests)  # different queries, shared forward passes
    assert stats.merged_requests > merged_before
    for answer, alone in zip(answers, sequential, strict=True):
        merged = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
        single = {r["index"]: r["relevance_score"] for r in alone["results"]}
        assert merged == pytest.approx(single, abs=1e-5)


class _GatedEngine:
    """The real engine behind a gate the test opens, so requests can be made to wait."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.gate = threading.Event()
        self.entered = threading.Event()

    def score(self, query: Query, documents: list[Document], instruction: str | None = None) -> list[float]:
        self.entered.set()
        self.gate.wait(30)
        result: list[float] = self.engine.score(query, documents, instruction)
        return result


@pytest.fixture
def gated(tiny_reranker: LocalReranker) -> Iterator[tuple[str, Any, _GatedEngine]]:
    engine = _GatedEngine(tiny_reranker.engine)
    settings = ServerSettings(ui=False, max_queue=1, request_timeout_s=1.5, max_wait_ms=0)
    app = create_app(tiny_reranker, settings, score=engine.score)
    with BackgroundServer(app) as url:
        yield url, app, engine
        engine.gate.set()


def _post_in_thread(url: str, body: dict[str, Any], results: list[Any], timeout: float = 30) -> threading.Thread:
    def run() -> None:
        try:
            results.append(httpx.post(url, json=body, timeout=timeout))
        except httpx.HTTPError as error:
            results.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_full_queue_answers_429_with_retry_after_and_timeout_504(gated: tuple[str, Any, _GatedEngine]) -> None:
    url, app, engine = gated
    body = {"query": "q", "documents": ["a"]}
    first: list[Any] = []
    waiting: list[Any] = []
    threads = [_post_in_thread(f"{url}/v1/rerank", body, first)]
    assert engine.entered.wait(10)  # the worker is busy with the first request
    threads.append(_post_in_thread(f"{url}/v1/rerank", body, waiting))
    deadline = time.monotonic() + 10
    while app.state.scheduler.depth < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    refused = httpx.post(f"{url}/v1/rerank", json=body, timeout=10)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "overloaded"
    for thread in threads:
        thread.join(15)
    assert first[0].status_code == 504  # the gate stayed shut past the 1.5 s timeout
    assert first[0].json()["error"]["type"] == "timeout"
    assert waiting[0].status_code == 504
    engine.gate.set()
    assert httpx.get(f"{url}/health").status_code == 200


def test_disconnected_client_has_its_queued_work_dropped(gated: tuple[str, Any, _GatedEngine]) -> None:
    url, app, engine = gated
    body = {"query": "q", "documents": ["a"]}
    first: list[Any] = []
    gone: list[Any] = []
    thread = _post_in_thread(f"{url}/v1/rerank", body, first)
    assert engine.entered.wait(10)
    # This client gives up after 0.3 s and closes its connection while its request is still queued.
    _post_in_thread(f"{url}/v1/rerank", body, gone, timeout=0.3).join(10)
    assert isinstance(gone[0], httpx.TimeoutException)
    time.sleep(0.3)  # the server notices the disconnect
    engine.gate.set()
    thread.join(15)
    stats = app.state.scheduler.stats
    deadline = time.monotonic() + 5
    while stats.cancelled < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stats.cancelled == 1  # the disconnected request never reached the engine
    assert "lychee_requests_dropped_total 1.0" in httpx.get(f"{url}/metrics").text


def test_scheduler_merges_same_query_and_isolates_a_bad_request() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def score(query: Query, documents: list[Document], instruction: str | None) -> list[float]:
        gate.wait(10)
        if any(document.text == "bad" for document in documents):
            raise ValueError("bad document")
        calls.append(len(documents))
        return [float(len(document.text or "")) for document in documents]

    scheduler = Scheduler(score_plain(score), max_queue=2, max_wait_ms=0)
    scheduler.start()
    try:
        blocker = scheduler.submit(PlainRequest(Query("q"), [Document("x")], None))
        time.sleep(0.05)
        good = scheduler.submit(PlainRequest(Query("q"), [Document("aa"), Document("bbb")], None))
        bad = scheduler.submit(PlainRequest(Query("q"), [Document("bad")], None))
        with pytest.raises(QueueFullError):
            scheduler.submit(PlainRequest(Query("q"), [Document("c")], None))
        gate.set()
        assert blocker.result(5) == [1.0]
        assert good.result(5) == [2.0, 3.0]
        with pytest.raises(ValueError, match="bad document"):
            bad.result(5)
    finally:
        scheduler.close()


def test_settings_come_from_flags_then_environment_then_defaults() -> None:
    settings = ServerSettings.from_env(
        {"LYCHEE_MAX_DOCUMENTS": "7", "LYCHEE_LOCAL_ROOTS": "/a,/b", "LYCHEE_UI": "false", "LYCHEE_PORT": "9"},
        port=8080,
    )
    assert settings.max_documents == 7
    assert settings.local_roots == ("/a", "/b")
    assert settings.ui is False
    assert settings.port == 8080
    assert settings.media_policy().local_roots == ("/a", "/b")
    assert settings.media_policy().allow_private_urls is False
    with pytest.raises(ValueError, match="LYCHEE_MAX_QUEUE"):
        ServerSettings.from_env({"LYCHEE_MAX_QUEUE": "many"})


def test_serve_command_is_registered_with_every_setting_as_a_flag() -> None:
    from lychee_rerank.core.cli import build_parser
    from lychee_rerank.core.server.cli import settings_from_args

    args = build_parser().parse_args(["serve", "--model", "tiny", "--max-documents", "3", "--no-ui"])
    settings = settings_from_args(args)
    assert (settings.model, settings.max_documents, settings.ui) == ("tiny", 3, False)
    assert callable(args.handler)


def test_image_urls_are_fetched_under_the_policy_and_score_like_inline_bytes(
    tiny_model_dir: Path, image_files: list[Path]
) -> None:
    import http.server
    import socketserver

    folder = str(image_files[0].parent)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=folder, **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    with socketserver.TCPServer(("127.0.0.1", 0), Quiet) as images:
        threading.Thread(target=images.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{images.server_address[1]}/{image_files[1].name}"
        inline = encode_image(image_files[1])
        body = {"query": {"image": url}, "documents": [{"image": url}, {"image": inline}, {"text": "t", "image": url}]}
        try:
            with running_service(tiny_model_dir, allow_private_urls=True) as running:
                answer = httpx.post(f"{running.url}/v1/rerank", json=body, timeout=60)
                assert answer.status_code == 200, answer.text
                expected = running.reranker.score(
                    {"image": inline}, [{"image": inline}] * 2 + [{"text": "t", "image": inline}]
                )
                served = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
                assert [served[i] for i in range(3)] == pytest.approx(expected, abs=1e-6)
            with running_service(tiny_model_dir) as strict:  # the default policy refuses loopback URLs
                refused = httpx.post(f"{strict.url}/v1/rerank", json=body, timeout=60)
                assert refused.status_code == 422
                assert refused.json()["error"]["message"].startswith("query: ")
        finally:
            images.shutdown()


def test_the_service_enforces_its_own_media_policy_whatever_the_reranker_allowed(
    tiny_model_dir: Path, image_files: list[Path]
) -> None:
    permissive = LocalReranker(model=str(tiny_model_dir), device="cpu")  # the library default reads any path
    body = {"query": "q", "documents": [{"image": str(image_files[0])}]}
    with BackgroundServer(create_app(permissive, ServerSettings(ui=False))) as url:
        refused = httpx.post(f"{url}/v1/rerank", json=body, timeout=60)
    assert refused.status_code == 422
    assert refused.json()["error"]["reason"] == "forbidden"
    allowed_root = ServerSettings(ui=False, local_roots=(str(image_files[0].parent),))
    with BackgroundServer(create_app(permissive, allowed_root)) as url:
        assert httpx.post(f"{url}/v1/rerank", json=body, timeout=60).status_code == 200
