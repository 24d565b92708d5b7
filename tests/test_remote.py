"""RemoteReranker: congruent with LocalReranker through a live server, errors and retries as documented."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from lychee_rerank.core import Document, ImageError, InvalidInputError, LocalReranker, Query, as_reranker
from lychee_rerank.core.remote import RemoteAuthError, RemoteReranker, RemoteRerankerError, encode_image
from lychee_rerank.core.server.background import running_service


@pytest.fixture(scope="module")
def remote(tiny_model_dir: Path) -> Iterator[RemoteReranker]:
    with running_service(tiny_model_dir) as running:
        reranker = RemoteReranker(running.url)
        yield reranker
        reranker.close()


def _documents(image_files: list[Path]) -> list[Any]:
    with Image.open(image_files[2]) as opened:
        pil = opened.convert("RGB")
    return [
        "a white linen shirt",
        Document(text="a chart of revenue", image=image_files[0]),  # a local path: sent as a data URI
        {"image": str(image_files[1])},
        pil,
        Document(image=image_files[3].read_bytes()),
        "科学问题：准确率",
    ]


def test_remote_scores_equal_local_scores(
    remote: RemoteReranker, tiny_reranker: LocalReranker, image_files: list[Path]
) -> None:
    documents = _documents(image_files)
    for query in ("white shirt", Query(text="figure", image=image_files[5])):
        for instruction in (None, "academic"):
            local = tiny_reranker.score(query, documents, instruction=instruction)
            served = remote.score(query, documents, instruction=instruction)
            assert served == pytest.approx(local, abs=1e-5)


async def test_async_remote_equals_local_without_threads(
    remote: RemoteReranker, tiny_reranker: LocalReranker, image_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_threads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the async path must not use a thread")

    documents = _documents(image_files)
    local = tiny_reranker.rerank("white shirt", documents, top_n=3, min_score=0.0)
    monkeypatch.setattr(asyncio, "to_thread", no_threads)
    scores = await remote.ascore("white shirt", documents)
    results = await remote.arerank("white shirt", documents, top_n=3, min_score=0.0)
    assert scores == pytest.approx(tiny_reranker.score("white shirt", documents), abs=1e-5)
    assert [r.index for r in results] == [r.index for r in local]
    assert [r.score for r in results] == pytest.approx([r.score for r in local], abs=1e-5)
    assert results[0].document == local[0].document  # the caller's document, not a copy from the server


def test_rerank_passes_top_n_and_min_score_to_the_server(remote: RemoteReranker, tiny_reranker: LocalReranker) -> None:
    documents = ["a", "b", "c", "d"]
    local = tiny_reranker.rerank("q", documents)
    threshold = local[2].score
    served = remote.rerank("q", documents, top_n=2, min_score=threshold)
    assert [r.index for r in served] == [r.index for r in local[:2]]
    assert remote.rerank("q", []) == []
    assert remote.score("q", []) == []


def test_input_errors_raise_the_same_types_as_locally(remote: RemoteReranker) -> None:
    with pytest.raises(ImageError) as caught:
        remote.score("q", [{"image": "http://127.0.0.1:1/x.png"}])
    assert caught.value.reason == "forbidden"
    with pytest.raises(ImageError) as undecodable:
        remote.score("q", [Document(image=b"not an image at all")])
    assert undecodable.value.reason == "undecodable"
    with pytest.raises(InvalidInputError, match="top_n"):
        remote.rerank("q", ["a"], top_n=-1)
    with pytest.raises(ImageError, match="does not exist"):
        remote.score("q", [Document(image=Path("/no/such/image.png"))])


def test_unreachable_service_raises_remote_error() -> None:
    reranker = RemoteReranker("http://127.0.0.1:1", max_retries=1, backoff_s=0.01)
    with pytest.raises(RemoteRerankerError, match="unreachable"):
        reranker.score("q", ["a"])


def _ok(request: httpx.Request) -> httpx.Response:
    count = len(json.loads(request.content)["documents"])
    return httpx.Response(200, json={"results": [{"index": i, "relevance_score": 0.5} for i in range(count)]})


def test_retries_on_429_and_503_honouring_retry_after() -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "0"}, json={"message": "busy"}),
        httpx.Response(503, headers={"Retry-After": "0"}, json={"message": "loading"}),
    ]
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return answers.pop(0) if answers else _ok(request)

    # A 10 s backoff would make the test slow: finishing at once shows Retry-After won.
    reranker = RemoteReranker("http://svc", api_key="k", backoff_s=10, transport=httpx.MockTransport(handler))
    started = time.monotonic()
    assert reranker.score("q", ["a", "b"]) == [0.5, 0.5]
    assert time.monotonic() - started < 2
    assert len(calls) == 3
    assert calls[0].headers["authorization"] == "Bearer k"
    assert calls[0].url.path == "/v1/rerank"


def test_gives_up_after_max_retries_with_the_servers_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"message": "queue full"}})

    reranker = RemoteReranker("http://svc", max_retries=2, transport=httpx.MockTransport(handler))
    with pytest.raises(RemoteRerankerError, match="queue full") as caught:
        reranker.score("q", ["a"])
    assert caught.value.status == 429


def test_server_errors_and_auth_failures_are_remote_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        status = 401 if "authorization" not in request.headers else 500
        return httpx.Response(status, json={"error": {"message": f"status {status}"}, "message": f"status {status}"})

    with pytest.raises(RemoteRerankerError, match="401"):
        RemoteReranker("http://svc", api_key="", transport=httpx.MockTransport(handler)).score("q", ["a"])
    with pytest.raises(RemoteRerankerError, match="500"):
        RemoteReranker("http://svc", api_key="k", transport=httpx.MockTransport(handler)).score("q", ["a"])


async def test_async_retries_use_the_async_transport() -> None:
    answers = [httpx.Response(503, headers={"Retry-After": "0"})]

    async def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else _ok(request)

    reranker = RemoteReranker("http://svc", async_transport=httpx.MockTransport(handler))
    assert await reranker.ascore("q", ["a"]) == [0.5]
    assert not answers


def test_images_are_sent_as_something_the_server_can_read(image_files: list[Path]) -> None:
    png = image_files[0].read_bytes()
    assert encode_image(png).startswith("data:image/png;base64,")
    assert encode_image(image_files[0]) == encode_image(png)
    assert encode_image(str(image_files[0])) == encode_image(png)
    assert encode_image(Image.new("RGB", (2, 2))).startswith("data:image/png;base64,")
    assert encode_image("https://example.com/a.jpg") == "https://example.com/a.jpg"
    assert encode_image("data:image/jpeg;base64,AAAA") == "data:image/jpeg;base64,AAAA"


def test_a_url_string_means_a_remote_reranker() -> None:
    reranker = as_reranker("http://gpu-box:8000/")
    assert isinstance(reranker, RemoteReranker)
    assert reranker.url == "http://gpu-box:8000"


def test_the_services_own_401_is_an_auth_error_and_the_right_key_works(tiny_model_dir: Path) -> None:
    with running_service(tiny_model_dir, api_key="right-key") as running:
        with pytest.raises(RemoteAuthError, match="LYCHEE_API_KEY") as caught:
            RemoteReranker(running.url, api_key="wrong-key").score("q", ["a"])
        assert caught.value.status == 401
        with pytest.raises(RemoteAuthError, match="it was given none"):
            RemoteReranker(running.url, api_key="").score("q", ["a"])
        assert len(RemoteReranker(running.url, api_key="right-key").score("q", ["a", "b"])) == 2


def test_async_calls_on_one_event_loop_share_a_kept_alive_connection(tiny_reranker: LocalReranker) -> None:
    """Each async call used to open (and close) its own client: a new TCP, and TLS, handshake per call."""
    from lychee_rerank.core.server.app import create_app
    from lychee_rerank.core.server.background import BackgroundServer
    from lychee_rerank.core.server.settings import ServerSettings

    peers: list[tuple[str, int]] = []
    app = create_app(tiny_reranker, ServerSettings(log_level="warning"))

    async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            peers.append(tuple(scope["client"]))  # type: ignore[arg-type]
        await app(scope, receive, send)

    with BackgroundServer(recording) as url:
        reranker = RemoteReranker(url)
        expected = reranker.score("q", ["a", "b"])
        peers.clear()

        async def three_calls(close: bool) -> list[list[float]]:
            answers = [await reranker.ascore("q", ["a", "b"]) for _ in range(2)]
            answers.append(await reranker.with_timeout(30).ascore("q", ["a", "b"]))  # a view shares the client
            if close:
                await reranker.aclose()
            return answers

        first = asyncio.run(three_calls(close=True))
        second = asyncio.run(three_calls(close=False))  # a new loop, a new client, left open
        third = asyncio.run(three_calls(close=True))
        reranker.close()
    assert first == second == third == [pytest.approx(expected, abs=1e-6)] * 3
    # The ended loop's client was dropped when the third loop made its own: nothing is kept per dead loop.
    assert reranker._connections._async_clients == {}
    assert len(peers) == 9
    assert len(set(peers[6:])) == 1, peers
    assert len(set(peers[:3])) == 1, peers
    assert len(set(peers[3:6])) == 1, peers
    assert peers[0] != peers[3] != peers[6]
