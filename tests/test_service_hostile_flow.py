"""The request path against hostile traffic: slow image hosts, huge bodies, invalid Unicode, internal errors.

Image hosts are real HTTP servers on loopback written here: a fast one, and a slow one that sends its
headers and then drips a byte every 50 ms for at most 20 s (so every test stops on its own), counting the
connections it accepted and those the *client* closed while it was still dripping. The services allow
private URLs, since loopback addresses are refused otherwise.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from lychee_rerank.core import Document, LocalReranker, Query
from lychee_rerank.core.errors import ImageError
from lychee_rerank.core.media import MediaPolicy, afetch_image_url, async_fetch_client, read_image_bytes
from lychee_rerank.core.server.app import create_app
from lychee_rerank.core.server.background import BackgroundServer, running_service
from lychee_rerank.core.server.fetching import FairSlots
from lychee_rerank.core.server.jsonio import parse_json, render_json
from lychee_rerank.core.server.scheduler import Scheduler
from lychee_rerank.core.server.serving import (
    EncodedWork,
    ScheduledReranker,
    Truncator,
    engine_batches,
    engine_preparer,
)
from lychee_rerank.core.server.settings import ServerSettings

DRIP_S = 0.05
DRIP_FOR_S = 20.0


def _png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


SMALL_PNG = _png((32, 32), (200, 30, 30))


class ImageHost:
    """A loopback HTTP server: ``/fast/...`` answers a PNG at once, ``/slow/...`` drips (see the module)."""

    def __init__(self) -> None:
        self.accepted = 0  # slow connections
        self.closed_by_client = 0
        self.open = 0
        self.fast_served = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/jump/"):  # a redirect to another scheme
                    self.send_response(302)
                    self.send_header("Location", "ftp://127.0.0.1/a.png")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path.startswith("/fast/"):
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(SMALL_PNG)))
                    self.end_headers()
                    self.wfile.write(SMALL_PNG)
                    with host._lock:
                        host.fast_served += 1
                    return
                with host._lock:
                    host.accepted += 1
                    host.open += 1
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    ends = time.monotonic() + DRIP_FOR_S
                    while time.monotonic() < ends and not host.stop.is_set():
                        self.wfile.write(b"\x00")
                        self.wfile.flush()
                        time.sleep(DRIP_S)
                except OSError:  # broken pipe or reset: the client went away
                    with host._lock:
                        host.closed_by_client += 1
                finally:
                    with host._lock:
                        host.open -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ImageHost:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def _wait_for(condition: Any, within_s: float = 10.0) -> bool:
    """Polls ``condition`` until it holds or ``within_s`` passes; a bound on waiting, not a timing check."""
    ends = time.monotonic() + within_s
    while time.monotonic() < ends:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


@pytest.fixture
def host() -> Iterator[ImageHost]:
    with ImageHost() as running:
        yield running


# -- 3. a slow image host delays nobody else ---------------------------------------------------------


def test_fast_requests_answer_while_a_request_of_slow_urls_times_out_and_its_fetches_stop(
    tiny_model_dir: Path, host: ImageHost
) -> None:
    slow = {"query": "q", "documents": [{"image": f"{host.url}/slow/{n}.png"} for n in range(12)]}
    settings = {
        "allow_private_urls": True,
        "request_timeout_s": 5.0,
        "fetch_timeout_s": 10.0,  # longer than the deadline: only the deadline can end the slow request
        "max_fetches_per_request": 4,
        "max_concurrent_fetches": 8,
    }
    with running_service(tiny_model_dir, **settings) as service:
        answers: dict[str, Any] = {}
        order: list[str] = []

        def post(name: str, body: dict[str, Any]) -> None:
            answers[name] = httpx.post(f"{service.url}/v1/rerank", json=body, timeout=60)
            order.append(name)

        threads = [threading.Thread(target=post, args=("slow", slow))]
        threads[0].start()
        assert _wait_for(lambda: host.open >= 4)  # the slow request holds its four download slots
        for n in range(3):
            fast = {"query": "q", "documents": [{"text": "t", "image": f"{host.url}/fast/{n}.png"}]}
            threads.append(threading.Thread(target=post, args=(f"fast{n}", fast)))
            threads[-1].start()
        for thread in threads:
            thread.join(60)
        for n in range(3):
            assert answers[f"fast{n}"].status_code == 200, answers[f"fast{n}"].text
        assert order[-1] == "slow"  # the fast requests did not wait for the slow one
        assert answers["slow"].status_code == 504
        assert answers["slow"].json()["error"]["type"] == "timeout"
        # Its downloads were cancelled at the deadline: connections closed by the service, no new ones.
        assert _wait_for(lambda: host.open == 0)
        assert host.closed_by_client == host.accepted == 4


def test_a_client_that_disconnects_cancels_its_downloads(tiny_model_dir: Path, host: ImageHost) -> None:
    body = {"query": "q", "documents": [{"image": f"{host.url}/slow/{n}.png"} for n in range(6)]}
    settings = {"allow_private_urls": True, "request_timeout_s": 60.0, "fetch_timeout_s": 30.0}
    with running_service(tiny_model_dir, **settings) as service:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{service.url}/v1/rerank", json=body, timeout=1.0)
        # The service notices the disconnect and closes its six connections long before the host's
        # 20 s of dripping or the 30 s fetch timeout would end them.
        assert _wait_for(lambda: host.open == 0)
        assert host.closed_by_client == host.accepted == 6


@pytest.mark.parametrize(
    ("path", "policy", "reason"),
    [
        ("/fast/a.png", MediaPolicy(allow_private_urls=True), None),
        ("/fast/a.png", MediaPolicy(), "forbidden"),  # loopback refused by default
        ("/jump/a.png", MediaPolicy(allow_private_urls=True), "forbidden"),
        ("/fast/a.png", MediaPolicy(allow_private_urls=True, max_image_bytes=50), "too_many_bytes"),
        ("/slow/a.png", MediaPolicy(allow_private_urls=True, max_image_bytes=100), "too_many_bytes"),
        ("/slow/a.png", MediaPolicy(allow_private_urls=True, fetch_timeout_s=0.5), "fetch_failed"),
    ],
)
def test_async_downloads_follow_the_same_media_policy_as_sync_ones(
    host: ImageHost, path: str, policy: MediaPolicy, reason: str | None
) -> None:
    async def download() -> bytes:
        async with async_fetch_client(policy) as client:
            return await afetch_image_url(host.url + path, policy, client)

    outcomes = []
    for fetch in (lambda: read_image_bytes(host.url + path, policy), lambda: asyncio.run(download())):
        try:
            outcomes.append(fetch())
        except ImageError as error:
            outcomes.append(error.reason)
    assert outcomes == [SMALL_PNG if reason is None else reason] * 2


def test_free_download_slots_go_to_waiting_requests_in_turn() -> None:
    async def scenario() -> list[str]:
        slots = FairSlots(2)
        greedy, modest = object(), object()
        await slots.acquire(greedy)
        await slots.acquire(greedy)
        got: list[str] = []

        async def take(owner: object, name: str) -> None:
            await slots.acquire(owner)
            got.append(name)

        waiting = [asyncio.ensure_future(take(greedy, f"greedy{n}")) for n in range(10)]
        waiting.append(asyncio.ensure_future(take(modest, "modest")))
        await asyncio.sleep(0)
        slots.release()  # one slot frees: the modest request's only download takes it, not greedy's 3rd
        await asyncio.sleep(0)
        slots.release()
        await asyncio.sleep(0)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        return got

    assert asyncio.run(scenario()) == ["greedy0", "modest"]


def test_a_text_request_is_not_held_behind_requests_whose_images_are_decoding(tiny_reranker: LocalReranker) -> None:
    """Image requests are prepared (decoded) on a pool of their own, off the model's worker: a text request
    is answered while every image thread is still busy. The image preparation is held by a gate rather
    than made slow, so the order does not depend on how busy the machine is."""
    engine = tiny_reranker.engine
    truncate = Truncator(engine.loaded.tokenizer, 4096, lock=engine.tokenizer_lock)
    real_prepare = engine_preparer(engine, truncate)
    release, decoding = threading.Event(), threading.Semaphore(0)

    def prepare(query: Query, documents: list[Document], instruction: str | None, max_tokens: int | None) -> Any:
        if query.has_image or any(document.has_image for document in documents):
            decoding.release()
            release.wait(60)  # an image that takes as long to decode as the test needs
        return real_prepare(query, documents, instruction, max_tokens)

    scheduler: Scheduler[Any] = Scheduler(engine_batches(engine), max_wait_ms=0)
    scorer = ScheduledReranker(scheduler, 120.0, prepare=prepare, prepare_threads=3)  # 2 image threads
    scheduler.start()
    picture = Image.new("RGB", (64, 48), (200, 30, 90))

    async def scenario() -> tuple[list[float], bool, list[list[float]]]:
        loop = asyncio.get_running_loop()
        image_calls = [asyncio.ensure_future(scorer.ascore("q", [Document(image=picture)])) for _ in range(4)]
        for _ in range(2):  # both image threads are busy "decoding"; two more image requests wait for them
            assert await loop.run_in_executor(None, decoding.acquire, True, 60)
        try:
            text = await asyncio.wait_for(scorer.ascore("q", ["a short text document"]), 60)
            images_still_waiting = not any(call.done() for call in image_calls)
        finally:
            release.set()
        images = await asyncio.gather(*image_calls)
        await scorer.aclose()
        return text, images_still_waiting, images

    try:
        text, images_still_waiting, images = asyncio.run(scenario())
    finally:
        release.set()
        scheduler.close()
    assert images_still_waiting
    assert text == pytest.approx(engine.score(Query("q"), [Document("a short text document")]), abs=1e-6)
    assert len(images) == 4
    assert all(len(scores) == 1 for scores in images)


# -- 4. the event loop never blocks; exact token counts; a text limit --------------------------------


def test_requests_are_tokenised_before_they_are_queued_with_exact_counts(tiny_reranker: LocalReranker) -> None:
    engine = tiny_reranker.engine
    gate, entered = threading.Event(), threading.Event()
    batches = engine_batches(engine)

    def gated(works: Any, share_prefix: bool) -> list[list[float]]:
        entered.set()
        gate.wait(30)
        return batches(works, share_prefix)

    scheduler: Scheduler[Any] = Scheduler(gated, max_wait_ms=0)
    truncate = Truncator(engine.loaded.tokenizer, 4096, lock=engine.tokenizer_lock)
    scorer = ScheduledReranker(scheduler, 60.0, prepare=engine_preparer(engine, truncate))
    scheduler.start()
    query, documents = Query("red dress"), [Document("a red dress"), Document("a blue car " * 20)]

    async def scenario() -> list[float]:
        first = asyncio.ensure_future(scorer.ascore("q", ["blocker"]))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)  # the worker holds the first
        second = asyncio.ensure_future(scorer.ascore(query, documents))
        for _ in range(3000):  # until the second request waits behind the gated first
            if scheduler.depth:
                break
            await asyncio.sleep(0.01)
        queued = scheduler.queued()[0]
        assert isinstance(queued, EncodedWork)
        expected = [
            len(engine.loaded.tokenizer(engine.render(query, document), add_special_tokens=False)["input_ids"])
            for document in documents
        ]
        assert [len(pair) for pair in queued.encoded.pairs] == expected
        assert queued.tokens == sum(expected)
        gate.set()
        await first
        try:
            return await second
        finally:
            await scorer.aclose()

    try:
        scores = asyncio.run(scenario())
    finally:
        gate.set()
        scheduler.close()
    assert scores == pytest.approx(engine.score(query, documents), abs=1e-6)


def test_usage_counts_the_exact_prompt_tokens(tiny_model_dir: Path) -> None:
    with running_service(tiny_model_dir) as service:
        documents = ["a red dress", "a blue car with four wheels"]
        answer = httpx.post(f"{service.url}/v1/rerank", json={"query": "red dress", "documents": documents}, timeout=60)
        engine = service.reranker.engine
        expected = engine.encode(Query("red dress"), [Document(text) for text in documents]).tokens
    assert answer.status_code == 200
    assert answer.json()["usage"]["total_tokens"] == expected


def test_too_much_text_is_413_naming_the_flag(tiny_model_dir: Path) -> None:
    with running_service(tiny_model_dir, max_request_text_bytes=1000) as service:
        small = httpx.post(f"{service.url}/v1/rerank", json={"query": "q", "documents": ["x" * 900]}, timeout=60)
        large = httpx.post(f"{service.url}/v1/rerank", json={"query": "q", "documents": ["x" * 600] * 2}, timeout=60)
        tei = httpx.post(f"{service.url}/rerank", json={"query": "q", "texts": ["é" * 600]}, timeout=60)
    assert small.status_code == 200
    for refused in (large, tei):
        assert refused.status_code == 413
        assert refused.json()["error"]["type"] == "too_large"
        assert "--max-request-text-bytes" in refused.json()["error"]["message"]
        assert "LYCHEE_MAX_REQUEST_TEXT_BYTES" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    "text",
    [
        '{"query": "q", "documents": ["a", {"text": "b\\u00e9\\n\\"c\\"", "image": null}], "top_n": 2}',
        '{"a": [1, -2.5e3, true, false, null, {}, [], ""], "b": "\\ud83d\\ude00 \\u4e2d\\t", "c": NaN}',
        '{"lone": "a\\ud800b", "key\\u00e9": "' + "long " * 300_000 + '"}',
        '["' + "x\\\\" * 400_000 + '"]',
        '  {"nested": [[[[{"x": "y"}]]]]}  ',
        '"\u4e2d\u6587 plain UTF-8"',
    ],
)
def test_bodies_parse_as_the_json_module_parses_them(text: str) -> None:
    assert json.dumps(parse_json(text.encode())) == json.dumps(json.loads(text))


def test_answers_render_as_the_json_module_renders_them() -> None:
    value = {"results": [{"index": 1, "score": 0.5, "text": '\u4e2d "q"\n'}, {"index": 0, "score": 1e-300}], "e": {}}
    assert render_json(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@pytest.mark.parametrize("body", [b'{"query": "q", "documents": ["a"', b'{"query": "\xff"}', b"[" * 5000])
def test_unparseable_bodies_are_400_invalid_json(tiny_model_dir: Path, body: bytes) -> None:
    with running_service(tiny_model_dir) as service:
        answer = httpx.post(
            f"{service.url}/v1/rerank", content=body, headers={"Content-Type": "application/json"}, timeout=60
        )
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_json"


# -- 5. malformed text is a 4xx, and a 5xx still answers properly ------------------------------------

SURROGATE = "a\\ud800b"  # as raw JSON: a lone high surrogate, which no UTF-8 text can hold
SURROGATE_CASES = [
    ("/v1/rerank", '{"query": "q", "documents": ["ok", "%s"]}', "documents[1]"),
    ("/v2/rerank", '{"query": "q", "documents": ["ok", {"text": "%s"}]}', "documents[1].text"),
    ("/rerank", '{"query": "q", "documents": ["ok", "ok", "%s"]}', "documents[2]"),
    ("/rerank", '{"query": "q", "texts": ["ok", "%s"]}', "texts[1]"),
    ("/v1/rerank", '{"query": "%s", "documents": ["ok"]}', "query"),
    ("/v1/rerank", '{"query": {"text": "%s"}, "documents": ["ok"]}', "query.text"),
    ("/v1/rerank", '{"query": "q", "documents": ["ok"], "instruction": "%s"}', "instruction"),
    ("/rerank_batch", '{"query": {"text": "q"}, "documents": [{"text": "%s"}]}', "documents[0].text"),
    ("/score", '{"query": "q", "document": "%s"}', "document"),
    ("/score", '{"query": "q", "document": "d", "instruction": "%s"}', "instruction"),
]


@pytest.fixture(scope="module")
def plain_service(tiny_model_dir: Path) -> Iterator[Any]:
    with running_service(tiny_model_dir) as running:
        yield running


@pytest.mark.parametrize(("path", "template", "field"), SURROGATE_CASES)
def test_a_lone_surrogate_is_422_naming_the_field(plain_service: Any, path: str, template: str, field: str) -> None:
    body = (template % SURROGATE).encode()
    answer = httpx.post(
        f"{plain_service.url}{path}", content=body, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    # The instruction's length limit makes pydantic read the string first: its own 422, naming the field.
    assert error["type"] == ("validation_error" if field == "instruction" else "invalid_input")
    assert error["message"].startswith(f"{field}: ")
    assert "surrogate" in error["message"] or "unicode" in error["message"]


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_an_unexpected_error_is_a_json_500_that_closes_the_connection_and_is_logged_once(
    tiny_reranker: LocalReranker,
) -> None:
    def broken(query: Query, documents: list[Document], instruction: str | None) -> list[float]:
        raise RuntimeError("the engine broke")

    server = BackgroundServer(create_app(tiny_reranker, ServerSettings(ui=False), score=broken))
    recorder = _Recorder()  # attached after uvicorn configured its loggers, which drops their handlers
    loggers = [logging.getLogger(name) for name in ("uvicorn", "lychee_rerank")]
    for logger in loggers:
        logger.addHandler(recorder)
    try:
        with server as url, httpx.Client(base_url=url, timeout=30) as client:
            failed = client.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
            follow_ups = [client.get("/health") for _ in range(10)]
    finally:
        for logger in loggers:
            logger.removeHandler(recorder)
    assert failed.status_code == 500
    assert failed.headers["connection"] == "close"
    assert failed.json()["error"]["type"] == "internal_error"
    assert [answer.status_code for answer in follow_ups] == [200] * 10
    with_traceback = [record for record in recorder.records if record.exc_info]
    assert len(with_traceback) == 1
    assert "POST /v1/rerank" in with_traceback[0].getMessage()


def test_a_500_on_a_raw_keep_alive_socket_says_close_then_the_next_connection_works(
    tiny_reranker: LocalReranker,
) -> None:
    def broken(query: Query, documents: list[Document], instruction: str | None) -> list[float]:
        raise RuntimeError("the engine broke")

    body = b'{"query": "q", "documents": ["a"]}'
    request = (
        b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with BackgroundServer(create_app(tiny_reranker, ServerSettings(ui=False), score=broken)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(request)
            received = b""
            while chunk := connection.recv(65536):  # the server closes after the complete answer
                received += chunk
        head, _, payload = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 500")
        assert b"connection: close" in head.lower()
        assert b'"internal_error"' in payload
