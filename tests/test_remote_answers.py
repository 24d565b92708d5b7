"""RemoteReranker checks what the service answers, maps error bodies honestly, and keeps credentials out of sight.

Answers come from a plain-socket loopback server (lychee_rerank.core.testing.servers), so they travel
through the real HTTP stack, bytes as a proxy or a broken service would send them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from lychee_rerank.adapters._second_stage import Pick, SecondStage
from lychee_rerank.core import (
    Document,
    ImageError,
    InvalidInputError,
    Query,
    RemoteAuthError,
    RemoteRerankerError,
)
from lychee_rerank.core.remote import RemoteReranker
from lychee_rerank.core.server.settings import ServerSettings
from lychee_rerank.core.testing.servers import LoopbackServer, Reply

DOCUMENTS = ["a red dress", "a blue car", "red shoes"]


def serving(reply: Reply) -> LoopbackServer:
    return LoopbackServer(lambda number, body: reply)


def results(*pairs: tuple[object, object]) -> bytes:
    return json.dumps({"results": [{"index": i, "relevance_score": s} for i, s in pairs]}).encode()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (results((0, 0.9), (1, 0.5), (99, 0.1)), "index 99"),
        (results((0, 0.9), (1, 0.5), (-1, 0.1)), "index -1"),
        (results((0, 0.9), (0, 0.5), (2, 0.1)), "document 0 is in the results twice"),
        (results((0, 0.9), (1, 0.5)), "2 results for 3 documents"),
        (results((0, 0.9), (1, 0.5), (2, 0.1), (1, 0.2)), "twice"),
        (results((0, 0.9), (1, 0.5), (True, 0.1)), "index True"),
        (results((0, 0.9), (1, 0.5), ("2", 0.1)), "index '2'"),
        (
            b'{"results": [{"index": 0, "relevance_score": NaN}, {"index": 1, "relevance_score": 0.5},'
            b' {"index": 2, "relevance_score": 0.1}]}',
            "relevance_score nan",
        ),
        (results((0, 1.5), (1, 0.5), (2, 0.1)), "relevance_score 1.5"),
        (results((0, -0.1), (1, 0.5), (2, 0.1)), "relevance_score -0.1"),
        (results((0, "0.9"), (1, 0.5), (2, 0.1)), "relevance_score '0.9'"),
        (b'{"results": [{"index": 0}, {"index": 1}, {"index": 2}]}', "relevance_score None"),
        (b"[]", "no 'results' list"),
        (b"null", "no 'results' list"),
        (b'"ok"', "no 'results' list"),
        (b'{"results": null}', "no 'results' list"),
        (b"<html>ok</html>", "no 'results' list"),
        (b'{"results": [1, 2, 3]}', "index None"),
    ],
)
async def test_an_invalid_200_is_a_remote_error_and_fails_open(body: bytes, problem: str) -> None:
    with serving(Reply(200, body, {"Content-Type": "application/json"})) as server:
        reranker = RemoteReranker(server.url)
        with pytest.raises(RemoteRerankerError, match="invalid rerank answer") as caught:
            reranker.score("q", DOCUMENTS)
        assert problem in str(caught.value)
        assert caught.value.status == 200
        with pytest.raises(RemoteRerankerError, match="invalid rerank answer"):
            await reranker.arerank("q", DOCUMENTS)
        stage = SecondStage(reranker)
        selection = stage.run(Query("q"), [Document(text) for text in DOCUMENTS])
        assert selection.failed
        assert selection.picks == (Pick(0, None), Pick(1, None), Pick(2, None))
        assert (await stage.arun(Query("q"), [Document(text) for text in DOCUMENTS])).failed


def test_top_n_and_min_score_allow_fewer_results_but_not_more() -> None:
    with serving(Reply(200, results((2, 0.9), (0, 0.5)))) as server:
        reranker = RemoteReranker(server.url)
        assert [(r.index, r.score) for r in reranker.rerank("q", DOCUMENTS, top_n=2)] == [(2, 0.9), (0, 0.5)]
        assert [r.index for r in reranker.rerank("q", DOCUMENTS, min_score=0.4)] == [2, 0]
        with pytest.raises(RemoteRerankerError, match="2 results for 3 documents"):
            reranker.rerank("q", DOCUMENTS, top_n=1)
        with pytest.raises(RemoteRerankerError, match="under the min_score"):
            reranker.rerank("q", DOCUMENTS, min_score=0.6)
        with pytest.raises(RemoteRerankerError, match="2 results for 3 documents"):
            reranker.score("q", DOCUMENTS)


def test_results_come_back_best_first_and_scores_in_input_order() -> None:
    with serving(Reply(200, results((1, 0.2), (0, 0.7), (2, 0.7)))) as server:
        reranker = RemoteReranker(server.url)
        assert [r.index for r in reranker.rerank("q", DOCUMENTS)] == [0, 2, 1]
        assert reranker.score("q", DOCUMENTS) == [0.7, 0.2, 0.7]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (413, b"<html><body><h1>413 Request Entity Too Large</h1>nginx</body></html>"),
        (502, b"<html><head><title>502 Bad Gateway</title></head></html>"),
        (400, b"[]"),
        (422, b"null"),
        (413, b'"too big"'),
        (400, b'{"error": "a string, not the service\'s object"}'),
        (500, b""),
        (404, b'{"detail": "Not Found"}'),
    ],
)
async def test_error_bodies_that_are_not_the_services_are_remote_errors_with_the_status(
    status: int, body: bytes
) -> None:
    with serving(Reply(status, body)) as server:
        reranker = RemoteReranker(server.url, max_retries=0)
        with pytest.raises(RemoteRerankerError, match=f"HTTP {status}") as caught:
            reranker.score("q", DOCUMENTS)
        assert caught.value.status == status
        assert not isinstance(caught.value, InvalidInputError)
        with pytest.raises(RemoteRerankerError, match=f"HTTP {status}"):
            await reranker.ascore("q", DOCUMENTS)
        assert SecondStage(reranker).run(Query("q"), [Document("a")]).failed


@pytest.mark.parametrize(
    ("status", "detail", "expected"),
    [
        (422, {"type": "invalid_input", "message": "document 1: empty"}, InvalidInputError),
        (400, {"type": "invalid_json", "message": "not JSON"}, InvalidInputError),
        (413, {"type": "image_error", "message": "too big", "reason": "too_many_bytes"}, ImageError),
        (422, {"type": "image_error", "message": "bad", "reason": "undecodable"}, ImageError),
    ],
)
def test_the_services_own_error_bodies_are_input_errors(
    status: int, detail: dict[str, str], expected: type[Exception]
) -> None:
    body = {"error": {**detail, "status": status}, "message": detail["message"]}
    with serving(Reply.json(status, body)) as server:
        with pytest.raises(expected, match=detail["message"]) as caught:
            RemoteReranker(server.url).score("q", DOCUMENTS)
        assert type(caught.value) is expected
        if isinstance(caught.value, ImageError):
            assert caught.value.reason == detail["reason"]


@pytest.fixture
def refusing() -> Iterator[LoopbackServer]:
    body = {"error": {"type": "unauthorized", "message": "missing or wrong API key", "status": 401}}
    with serving(Reply.json(401, body)) as server:
        yield server


async def test_a_refused_api_key_is_its_own_error_saying_to_check_the_key(refusing: LoopbackServer) -> None:
    reranker = RemoteReranker(refusing.url, api_key="wrong", max_retries=3)
    with pytest.raises(RemoteAuthError) as caught:
        reranker.score("q", DOCUMENTS)
    assert isinstance(caught.value, RemoteRerankerError)
    assert caught.value.status == 401
    assert "LYCHEE_API_KEY" in str(caught.value)
    assert "api_key=" in str(caught.value)
    assert refusing.requests == 1  # never retried
    with pytest.raises(RemoteAuthError):
        await reranker.ascore("q", DOCUMENTS)
    with (
        serving(Reply.json(403, {"error": {"message": "forbidden"}})) as forbidding,
        pytest.raises(RemoteAuthError, match="HTTP 403"),
    ):
        RemoteReranker(forbidding.url).score("q", DOCUMENTS)


async def test_a_refused_api_key_fails_open_logged_as_an_error(
    refusing: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    stage = SecondStage(RemoteReranker(refusing.url, api_key="wrong"), top_n=1)
    with caplog.at_level(logging.WARNING, logger="lychee_rerank.adapters._second_stage"):
        selection = stage.run(Query("q"), [Document("a"), Document("b")])
        await stage.arun(Query("q"), [Document("a"), Document("b")])
    assert selection.failed
    assert selection.error is not None
    assert selection.error.startswith("RemoteAuthError:")
    assert [record.levelno for record in caplog.records] == [logging.ERROR, logging.ERROR]
    assert "LYCHEE_API_KEY" in caplog.text
    connection_refused = SecondStage(RemoteReranker("http://127.0.0.1:9", max_retries=0))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lychee_rerank.adapters._second_stage"):
        assert connection_refused.run(Query("q"), [Document("a")]).failed
    assert [record.levelno for record in caplog.records] == [logging.WARNING]


async def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown(
    refusing: LoopbackServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LYCHEE_API_KEY", raising=False)
    secret_url = refusing.url.replace("http://", "http://admin:hunter2@")
    reranker = RemoteReranker(secret_url + "/")
    assert "hunter2" not in repr(reranker)
    assert reranker.url == refusing.url
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(RemoteAuthError) as caught:
            reranker.score("q", DOCUMENTS)
        with pytest.raises(RemoteAuthError) as acaught:
            await reranker.ascore("q", DOCUMENTS)
        selection = SecondStage(reranker).run(Query("q"), [Document("a")])
    for shown in (str(caught.value), str(acaught.value), caplog.text, selection.error or ""):
        assert "hunter2" not in shown
        assert "admin" not in shown
    assert "HTTP Request: POST" in caplog.text  # httpx logged the request, without the credentials
    heads = b"\n".join(refusing.heads).lower()
    assert b"authorization: basic ywrtaw46aHVudGVyMg==".lower() in heads  # admin:hunter2
    assert b"hunter2" not in heads


def test_credentials_in_the_url_and_an_api_key_are_refused_together() -> None:
    with pytest.raises(ValueError, match="not both"):
        RemoteReranker("http://user:pass@gpu-box:8000", api_key="key")


@pytest.mark.parametrize("key", ["clé", "tab\tkey", " padded", "trailing ", "line\nbreak"])
def test_an_api_key_that_cannot_travel_in_a_header_is_refused_at_construction(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        RemoteReranker("http://gpu-box:8000", api_key=key)
    monkeypatch.setenv("LYCHEE_API_KEY", key)
    with pytest.raises(ValueError, match="LYCHEE_API_KEY"):
        RemoteReranker("http://gpu-box:8000")
    with pytest.raises(ValueError, match="printable ASCII"):
        ServerSettings(api_key=key)
    with pytest.raises(ValueError, match="LYCHEE_API_KEY"):
        ServerSettings.from_env({}, api_key=key)


def test_bad_construction_arguments_are_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        RemoteReranker("gpu-box:8000")
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        RemoteReranker("http://gpu-box:8000", timeout=0)
    with pytest.raises(ValueError, match="max_retries"):
        RemoteReranker("http://gpu-box:8000", max_retries=-1)
    assert ServerSettings(api_key="s3cret").api_key == "s3cret"
    with pytest.raises(ValueError, match="printable ASCII"):
        ServerSettings.from_env({"LYCHEE_API_KEY": "clé"})
