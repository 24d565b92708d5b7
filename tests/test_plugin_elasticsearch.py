"""Contract tests of the Elasticsearch plugin: the official client over a fake node records every request.

The fake node is an ``elastic_transport.BaseNode`` (the client's ``node_class=``) in front of a small in-memory
model of the inference API, so idempotency shows up as requests that are, or are not, sent.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any, ClassVar

import pytest

pytest.importorskip("elasticsearch", reason="the elasticsearch extra is not installed")

from elastic_transport import ApiResponseMeta, BaseNode, HttpHeaders
from elastic_transport._node import NodeApiResponse  # the public BaseNode.perform_request returns it
from elasticsearch import Elasticsearch

from lychee_rerank.core.errors import LycheeError
from lychee_rerank.plugins.elasticsearch import (
    check_inference_endpoint,
    delete_inference_endpoint,
    inference_endpoint_config,
    install_inference_endpoint,
    register,
    rerank_endpoint_url,
    text_similarity_reranker_body,
)

EXPECTED_ENDPOINT = {
    "service": "custom",
    "service_settings": {
        "url": "http://rerank:8000/v1/rerank",
        "headers": {"Content-Type": "application/json"},
        "request": '{"query": ${query}, "documents": ${input}}',
        "response": {
            "json_parser": {
                "relevance_score": "$.results[*].relevance_score",
                "reranked_index": "$.results[*].index",
            }
        },
    },
}


class FakeElasticsearch:
    """Just enough of Elasticsearch's REST API: ``GET /``, ``_inference/rerank/<id>`` and ``_search``."""

    def __init__(self, version: str = "9.1.4") -> None:
        self.version = version
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.scores = [0.25, 0.75]
        self.put_error: str | None = None

    def calls(self, method: str) -> list[tuple[str, Any]]:
        return [(path, body) for verb, path, body in self.requests if verb == method]

    def handle(self, method: str, target: str, body: Any) -> tuple[int, Any]:
        path = target.partition("?")[0]
        self.requests.append((method, path, body))
        if method == "GET" and path == "/":
            return 200, {"name": "node-1", "version": {"number": self.version}, "tagline": "You Know, for Search"}
        match = re.fullmatch(r"/_inference/rerank/([^/]+)", path)
        if match:
            return self._inference(method, match[1], body)
        if method == "POST" and path.endswith("/_search"):
            return 200, {"hits": {"total": {"value": 1, "relation": "eq"}, "hits": [{"_id": "1", "_score": 1.9}]}}
        return 400, {"error": {"type": "illegal_argument_exception", "reason": f"no handler for {method} {path}"}}

    def _inference(self, method: str, inference_id: str, body: Any) -> tuple[int, Any]:
        missing = {
            "error": {
                "type": "resource_not_found_exception",
                "reason": f"Inference endpoint not found [{inference_id}]",
            }
        }
        if method == "GET":
            if inference_id not in self.endpoints:
                return 404, missing
            return 200, {"endpoints": [self.endpoints[inference_id]]}
        if method == "PUT":
            if inference_id in self.endpoints:
                return 400, {"error": {"type": "status_exception", "reason": "Inference endpoint already exists"}}
            if self.put_error:
                return 400, {"error": {"type": "status_exception", "reason": self.put_error}}
            settings = {k: v for k, v in body["service_settings"].items() if k != "secret_parameters"}
            stored = {
                "inference_id": inference_id,
                "task_type": "rerank",
                "service": body["service"],
                "service_settings": {**settings, "rate_limit": {"requests_per_minute": 10000}},
                "task_settings": {},
            }
            self.endpoints[inference_id] = stored
            return 200, stored
        if method == "DELETE":
            if self.endpoints.pop(inference_id, None) is None:
                return 404, missing
            return 200, {"acknowledged": True, "pipelines": [], "indexes": []}
        if inference_id not in self.endpoints:
            return 404, missing
        ranked = sorted(enumerate(self.scores), key=lambda item: -item[1])
        return 200, {"rerank": [{"index": index, "relevance_score": score} for index, score in ranked]}


class FakeNode(BaseNode):
    """A node that answers from ``server`` instead of the network."""

    server: ClassVar[FakeElasticsearch]

    def perform_request(self, method: str, target: str, body: bytes | None = None, **_: Any) -> NodeApiResponse:
        status, payload = self.server.handle(method, target, json.loads(body) if body else None)
        headers = HttpHeaders({"content-type": "application/json", "x-elastic-product": "Elasticsearch"})
        meta = ApiResponseMeta(status=status, http_version="1.1", headers=headers, duration=0.0, node=self.config)
        return NodeApiResponse(meta, json.dumps(payload).encode())


@pytest.fixture
def server() -> FakeElasticsearch:
    return FakeElasticsearch()


def client_for(server: FakeElasticsearch) -> Elasticsearch:
    node_class = type("BoundFakeNode", (FakeNode,), {"server": server})
    return Elasticsearch("http://es.test:9200", node_class=node_class, max_retries=0)


@pytest.fixture
def client(server: FakeElasticsearch) -> Elasticsearch:
    return client_for(server)


# -- the endpoint body -------------------------------------------------------------------------------------


def test_install_puts_the_custom_rerank_endpoint(server: FakeElasticsearch, client: Elasticsearch) -> None:
    result = install_inference_endpoint(client, "http://rerank:8000")

    assert (result.inference_id, result.action) == ("lychee-rerank", "created")
    assert server.calls("PUT") == [("/_inference/rerank/lychee-rerank", EXPECTED_ENDPOINT)]


def test_api_key_is_a_secret_that_the_header_references(server: FakeElasticsearch, client: Elasticsearch) -> None:
    install_inference_endpoint(client, "https://gpu.example.com/v1/rerank", api_key="s3cret", inference_id="mm")

    [(path, body)] = server.calls("PUT")
    assert path == "/_inference/rerank/mm"
    settings = body["service_settings"]
    assert settings["url"] == "https://gpu.example.com/v1/rerank"
    assert settings["secret_parameters"] == {"api_key": "s3cret"}
    assert settings["headers"]["Authorization"] == "Bearer ${api_key}"
    assert "s3cret" not in json.dumps({k: v for k, v in settings.items() if k != "secret_parameters"})


def test_multimodal_endpoint_asks_the_service_to_parse_json_documents() -> None:
    headers = inference_endpoint_config("http://rerank:8000", multimodal=True)["service_settings"]["headers"]
    assert headers == {"Content-Type": "application/json", "X-Lychee-Json-Documents": "true"}

    # The header must be the one the service reads.
    pytest.importorskip("fastapi", reason="the server extra is not installed")
    from starlette.requests import Request

    from lychee_rerank.core.server.serving import wants_json_documents
    from lychee_rerank.core.server.settings import ServerSettings

    scope = {
        "type": "http",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    assert wants_json_documents(Request(scope), ServerSettings())
    plain = inference_endpoint_config("http://rerank:8000")["service_settings"]["headers"]
    plain_scope = {**scope, "headers": [(k.lower().encode(), v.encode()) for k, v in plain.items()]}
    assert not wants_json_documents(Request(plain_scope), ServerSettings())


def test_request_template_filled_as_elasticsearch_does_is_a_valid_service_request() -> None:
    pytest.importorskip("fastapi", reason="the server extra is not installed")
    from lychee_rerank.core.server.protocol import RerankRequest

    template = inference_endpoint_config("http://rerank:8000")["service_settings"]["request"]
    # Elasticsearch substitutes ${query} and ${input} as JSON; the retriever sends no top_n, so no other
    # placeholder may be left (it would fail every request).
    documents = ['say "hi"', json.dumps({"text": "a red shoe", "image": "https://img.example/1.png"})]
    filled = template.replace("${query}", json.dumps("red shoes")).replace("${input}", json.dumps(documents))
    assert "${" not in filled
    request = RerankRequest.model_validate_json(filled)
    assert request.query == "red shoes"
    assert request.documents == documents
    assert request.top_n is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://rerank:8000", "http://rerank:8000/v1/rerank"),
        ("http://rerank:8000/", "http://rerank:8000/v1/rerank"),
        ("https://h/prefix/v1/rerank", "https://h/prefix/v1/rerank"),
    ],
)
def test_rerank_url_gets_the_cohere_route(given: str, expected: str) -> None:
    assert rerank_endpoint_url(given) == expected


def test_rerank_url_without_scheme_is_refused() -> None:
    with pytest.raises(LycheeError, match="http:// or https://"):
        rerank_endpoint_url("rerank:8000")


# -- idempotency and versions --------------------------------------------------------------------------------


def test_second_install_sends_no_put(server: FakeElasticsearch, client: Elasticsearch) -> None:
    install_inference_endpoint(client, "http://rerank:8000")
    again = install_inference_endpoint(client, "http://rerank:8000")

    assert again.action == "unchanged"
    assert len(server.calls("PUT")) == 1
    assert server.calls("DELETE") == []


def test_changed_settings_replace_the_endpoint(server: FakeElasticsearch, client: Elasticsearch) -> None:
    install_inference_endpoint(client, "http://rerank:8000")
    changed = install_inference_endpoint(client, "http://rerank:8000", multimodal=True)

    assert changed.action == "replaced"
    assert [path for path, _ in server.calls("DELETE")] == ["/_inference/rerank/lychee-rerank"]
    assert server.endpoints["lychee-rerank"]["service_settings"]["headers"]["X-Lychee-Json-Documents"] == "true"


def test_replace_recreates_an_identical_endpoint(server: FakeElasticsearch, client: Elasticsearch) -> None:
    install_inference_endpoint(client, "http://rerank:8000", api_key="old")
    result = install_inference_endpoint(client, "http://rerank:8000", api_key="new", replace=True)

    assert result.action == "replaced"
    assert server.calls("PUT")[-1][1]["service_settings"]["secret_parameters"] == {"api_key": "new"}


@pytest.mark.parametrize("version", ["8.18.3", "9.0.7", "7.17.20"])
def test_cluster_without_custom_service_is_refused(version: str) -> None:
    server = FakeElasticsearch(version=version)

    with pytest.raises(LycheeError, match=r"no 'custom' inference service; it needs Elasticsearch 8\.19"):
        install_inference_endpoint(client_for(server), "http://rerank:8000")
    assert server.calls("PUT") == []


@pytest.mark.parametrize("version", ["8.19.0", "9.1.0", "9.2.1-SNAPSHOT", "10.0.0"])
def test_clusters_with_custom_service_are_accepted(version: str) -> None:
    server = FakeElasticsearch(version=version)
    assert install_inference_endpoint(client_for(server), "http://rerank:8000").action == "created"


def test_refusal_quotes_elasticsearch_reason(server: FakeElasticsearch, client: Elasticsearch) -> None:
    server.put_error = "Could not complete inference endpoint creation: connection refused [rerank:8000]"

    with pytest.raises(LycheeError, match=r"refused to create the inference endpoint.*connection refused"):
        install_inference_endpoint(client, "http://rerank:8000")


# -- check and delete --------------------------------------------------------------------------------------------


def test_check_probes_and_returns_scores_in_document_order(server: FakeElasticsearch, client: Elasticsearch) -> None:
    install_inference_endpoint(client, "http://rerank:8000", multimodal=True)

    status = check_inference_endpoint(client)

    assert status.ok
    assert (status.url, status.multimodal) == ("http://rerank:8000/v1/rerank", True)
    assert status.probe_scores == [0.25, 0.75]  # the fake answers in score order; indexes put them back
    [(path, body)] = server.calls("POST")
    assert path == "/_inference/rerank/lychee-rerank"
    assert set(body) == {"query", "input"}
    assert len(body["input"]) == 2


def test_check_of_a_missing_endpoint_is_not_ok(client: Elasticsearch) -> None:
    status = check_inference_endpoint(client, inference_id="nope")
    assert not status.ok
    assert not status.exists
    assert status.problems == ["no rerank endpoint 'nope'"]


def test_check_reports_a_short_answer(server: FakeElasticsearch, client: Elasticsearch) -> None:
    install_inference_endpoint(client, "http://rerank:8000")
    server.scores = [0.5]
    assert check_inference_endpoint(client).problems == ["the probe got 1 scores for 2 documents"]


def test_delete_says_whether_there_was_an_endpoint(server: FakeElasticsearch, client: Elasticsearch) -> None:
    install_inference_endpoint(client, "http://rerank:8000")
    assert delete_inference_endpoint(client) is True
    assert delete_inference_endpoint(client) is False
    assert server.endpoints == {}


# -- the retriever -------------------------------------------------------------------------------------------------


def test_retriever_body_reaches_search_unchanged(server: FakeElasticsearch, client: Elasticsearch) -> None:
    body = text_similarity_reranker_body(
        {"match": {"text": "red shoes"}},
        field="text",
        inference_text="red shoes",
        rank_window_size=20,
        min_probability=0.5,
    )
    assert body == {
        "retriever": {
            "text_similarity_reranker": {
                "retriever": {"standard": {"query": {"match": {"text": "red shoes"}}}},
                "field": "text",
                "inference_id": "lychee-rerank",
                "inference_text": "red shoes",
                "rank_window_size": 20,
                "min_score": 0.5,
            }
        }
    }

    client.search(index="docs", **body)

    assert server.calls("POST") == [("/docs/_search", body)]


@pytest.mark.parametrize("threshold", [1.5, -0.1, True])
def test_retriever_threshold_is_a_probability_because_min_score_is_compared_before_the_shift(threshold: float) -> None:
    """elastic/elasticsearch TextSimilarityRankFeaturePhaseRankCoordinatorContext.preprocess: ``doc.score >=
    minScore`` is tested on the raw score, then ``normalizeScore`` makes p into 1 + p; 1.5 would drop every hit."""
    with pytest.raises(LycheeError, match=r"in \[0, 1\].*before it shifts scores to 1 \+ p"):
        text_similarity_reranker_body({"match_all": {}}, field="text", inference_text="q", min_probability=threshold)


def test_retriever_window_must_be_positive() -> None:
    with pytest.raises(LycheeError, match="rank_window_size"):
        text_similarity_reranker_body({"match_all": {}}, field="text", inference_text="q", rank_window_size=0)


# -- the command line -----------------------------------------------------------------------------------------------


def run_cli(server: FakeElasticsearch, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lychee-rerank")
    register(parser.add_subparsers(dest="command", required=True), client_factory=lambda args: client_for(server))
    args = parser.parse_args(["elasticsearch", *argv])
    status: int = args.handler(args)
    return status


def test_cli_install_is_idempotent_and_never_prints_the_key(
    server: FakeElasticsearch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["install-endpoint", "--rerank-url", "http://rerank:8000", "--api-key", "s3cret", "--multimodal"]

    assert run_cli(server, *argv) == 0
    assert run_cli(server, *argv) == 0

    out = capsys.readouterr().out
    assert out.splitlines() == [
        "created: inference endpoint 'lychee-rerank' -> http://rerank:8000/v1/rerank",
        "unchanged: inference endpoint 'lychee-rerank' -> http://rerank:8000/v1/rerank",
    ]
    assert "s3cret" not in out
    assert len(server.calls("PUT")) == 1
    assert server.calls("PUT")[0][1]["service_settings"]["secret_parameters"] == {"api_key": "s3cret"}


def test_cli_check_and_delete(server: FakeElasticsearch, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(server, "check-endpoint") == 1
    run_cli(server, "install-endpoint", "--rerank-url", "http://rerank:8000", "--inference-id", "x")
    assert run_cli(server, "check-endpoint", "--inference-id", "x", "--json") == 0
    assert run_cli(server, "delete-endpoint", "--inference-id", "x") == 0
    assert run_cli(server, "delete-endpoint", "--inference-id", "x") == 0

    out = capsys.readouterr().out
    assert "NOT OK: inference endpoint 'lychee-rerank'" in out
    assert '"probe_scores": [\n    0.25,\n    0.75\n  ]' in out
    assert "deleted: inference endpoint 'x'\nabsent: inference endpoint 'x'" in out


def test_cli_refuses_an_old_cluster_with_one_clear_error() -> None:
    with pytest.raises(LycheeError, match=r"Elasticsearch 9\.0 has no 'custom' inference service"):
        run_cli(FakeElasticsearch(version="9.0.2"), "install-endpoint", "--rerank-url", "http://rerank:8000")
