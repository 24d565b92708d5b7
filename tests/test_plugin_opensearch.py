"""Contract tests of the OpenSearch plugin: opensearch-py over a fake connection records every request.

The fake connection (the client's ``connection_class=``) answers from a small in-memory model of ml-commons,
the search-pipeline API, indices and the cluster settings, with the refusals of the real thing that matter
here: a connector URL outside the trusted regexes, deleting a deployed model or a connector still in use, and
a service host the cluster resolves to a private address without ``private_ip_enabled``
(ml-commons ``MLValidatableAsyncHttpClient.validateIp``). Its rerank processor joins ``document_fields`` with
no separator, as neural-search's ``DocumentContextSourceFetcher`` does. Host names are resolved from a table,
never by DNS.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from typing import Any, ClassVar

import pytest

pytest.importorskip("opensearchpy", reason="the opensearch extra is not installed")

from opensearchpy import OpenSearch
from opensearchpy.connection import Connection

from lychee_rerank.core.errors import LycheeError
from lychee_rerank.plugins.opensearch import (
    check_rerank_pipeline,
    connector_body,
    install_rerank_pipeline,
    rerank_search_body,
    trusted_endpoint_regex,
    uninstall_rerank_pipeline,
)
from lychee_rerank.plugins.opensearch.cli import register
from lychee_rerank.plugins.opensearch.network import is_private_address

TRUSTED = "plugins.ml_commons.trusted_connector_endpoints_regex"
PRIVATE_IP = "plugins.ml_commons.connector.private_ip_enabled"
DEFAULT_TRUSTED = ["^https://api\\.cohere\\.ai/.*$", "^https://api\\.openai\\.com/.*$"]

EXPECTED_CONNECTOR = {
    "name": "lychee-rerank",
    "description": "Lychee-Rerank-MM through the lychee-rerank service (installed by lychee-rerank)",
    "version": "1",
    "protocol": "http",
    "parameters": {},
    "credential": {"no_api_key": "unused"},
    "actions": [
        {
            "action_type": "predict",
            "method": "POST",
            "url": "http://rerank:8000/v1/rerank",
            "headers": {"Content-Type": "application/json"},
            "request_body": (
                '{ "documents": ${parameters.documents}, "query": "${parameters.query}", "top_n": ${parameters.top_n} }'
            ),
            "pre_process_function": "connector.pre_process.cohere.rerank",
            "post_process_function": "connector.post_process.cohere.rerank",
        }
    ],
}


# What host names resolve to, here and (unless a test says otherwise) from the cluster.
DNS: dict[str, list[str]] = {
    "rerank": ["10.0.0.7"],
    "rerank-2": ["10.0.0.8"],
    "rerank.example.com": ["93.184.216.34"],
    "rerank.search.svc.cluster.local": [],  # does not resolve outside the cluster
}


def resolve(host: str, port: int) -> list[str]:
    if host not in DNS or not DNS[host]:
        raise OSError(f"cannot resolve {host}")
    return DNS[host]


class FakeOpenSearch:
    """Just enough of OpenSearch with ml-commons and neural-search for the plugin's requests."""

    def __init__(self, version: str = "2.19.1", *, private_ip_setting: bool = True) -> None:
        self.version = version
        self.plugins = ["opensearch-ml", "opensearch-neural-search", "opensearch-security"]
        self.persistent: dict[str, Any] = {}
        self.defaults: dict[str, Any] = {TRUSTED: list(DEFAULT_TRUSTED)}
        if private_ip_setting:
            self.defaults[PRIVATE_IP] = "false"
        self.connectors: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.model_groups: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, list[dict[str, Any]]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, Any], Any]] = []
        self.deploy_error: str | None = None
        self.scores = [0.25, 0.75]
        self.indices: set[str] = set()
        self.cluster_dns: dict[str, list[str]] = {host: list(addresses) for host, addresses in DNS.items()}
        self.cluster_dns["rerank.search.svc.cluster.local"] = ["10.96.0.12"]
        self.documents: dict[str, dict[str, Any]] = {}
        self.reranked_texts: list[list[str]] = []
        self._ids = (f"id{n}" for n in itertools.count(1))

    def calls(self, method: str, pattern: str = ".*") -> list[tuple[str, Any]]:
        return [(p, b) for m, p, _, b in self.requests if m == method and re.fullmatch(pattern, p)]

    def handle(self, method: str, path: str, params: dict[str, Any], body: Any) -> tuple[int, Any]:
        self.requests.append((method, path, params, body))
        key = (method, path)
        if key == ("GET", "/"):
            return 200, {"version": {"distribution": "opensearch", "number": self.version}}
        if key == ("GET", "/_cat/plugins"):
            return 200, [{"name": "node-1", "component": name, "version": self.version} for name in self.plugins]
        if key == ("GET", "/_cluster/settings"):
            return 200, {"persistent": dict(self.persistent), "transient": {}, "defaults": dict(self.defaults)}
        if key == ("PUT", "/_cluster/settings"):
            self.persistent.update(body["persistent"])
            return 200, {"acknowledged": True, "persistent": body["persistent"], "transient": {}}
        ml = re.fullmatch(r"/_plugins/_ml/(.+)", path)
        if ml:
            return self._ml(method, ml[1], body)
        pipeline = re.fullmatch(r"/_search/pipeline/([^/]+)", path)
        if pipeline:
            return self._pipeline(method, pipeline[1], body)
        if path.startswith("/_ingest/pipeline/"):
            return self._ingest(method, path.rsplit("/", 1)[1], body)
        if method in ("GET", "POST") and path.endswith("/_search"):
            return self._search(path.split("/")[1], params.get("search_pipeline"))
        document = re.fullmatch(r"/([^/_][^/]*)/_doc/([^/]+)", path)
        if document and method == "PUT":
            self.documents.setdefault(document[1], {})[document[2]] = body
            return 201, {"result": "created"}
        index = re.fullmatch(r"/([^/_][^/]*)", path)
        if index and method == "PUT":
            self.documents[index[1]] = {}
            return 200, {"acknowledged": True}
        if index and method == "DELETE":
            if self.documents.pop(index[1], None) is None:
                return 404, {"error": {"type": "index_not_found_exception", "reason": "no such index"}}
            return 200, {"acknowledged": True}
        return 400, {"error": {"type": "illegal_argument_exception", "reason": f"no handler for {method} {path}"}}

    def _refuses_host(self, model_id: str) -> str | None:
        """ml-commons' validateIp, from the cluster's point of view (its own DNS table)."""
        connector = self.connectors.get(self.models.get(model_id, {}).get("connector_id", ""))
        if connector is None:
            return None
        host = re.sub(r"^https?://([^:/]+).*$", r"\1", connector["actions"][0]["url"])
        addresses = self.cluster_dns.get(host, [host] if re.fullmatch(r"[\d.]+", host) else [])
        allowed = str(self.persistent.get(PRIVATE_IP, "false")).lower() == "true"
        if any(is_private_address(address) for address in addresses) and not allowed:
            return f"Remote inference host name has private ip address: {host}"
        return None

    def _search(self, index: str, pipeline_id: str | None) -> tuple[int, Any]:
        documents = self.documents.get(index, {})
        hits = [{"_id": key, "_score": 1.0, "_source": source} for key, source in documents.items()]
        if pipeline_id is not None:
            if pipeline_id not in self.pipelines:
                return 404, {"error": {"type": "resource_not_found_exception", "reason": "pipeline missing"}}
            rerank = self.pipelines[pipeline_id]["response_processors"][0]["rerank"]
            refusal = self._refuses_host(rerank["ml_opensearch"]["model_id"])
            if refusal:
                return 400, {"error": {"type": "illegal_argument_exception", "reason": refusal}}
            fields = rerank["context"]["document_fields"]
            # DocumentContextSourceFetcher: each field's value appended, with no separator.
            self.reranked_texts.append(["".join(str(_dig(hit["_source"], f) or "") for f in fields) for hit in hits])
            for hit, score in zip(hits, self.scores, strict=False):
                hit["_score"] = score
        return 200, {"hits": {"total": {"value": len(hits), "relation": "eq"}, "hits": hits}}

    def _ingest(self, method: str, pipeline_id: str, body: Any) -> tuple[int, Any]:
        store = self.__dict__.setdefault("ingest_pipelines", {})
        if method == "PUT":
            store[pipeline_id] = body
            return 200, {"acknowledged": True}
        if pipeline_id not in store:
            return 404, {}
        return 200, {pipeline_id: store[pipeline_id]}

    def _trusted(self, url: str) -> bool:
        patterns = self.persistent.get(TRUSTED, self.defaults[TRUSTED])
        return any(re.fullmatch(pattern, url) for pattern in patterns)

    def _ml(self, method: str, rest: str, body: Any) -> tuple[int, Any]:
        if (method, rest) == ("POST", "connectors/_create"):
            if not body.get("credential"):
                return 400, {"error": {"type": "illegal_argument_exception", "reason": "Connector credential is null"}}
            url = body["actions"][0]["url"]
            if not self._trusted(url):
                reason = "Connector URL is not matching the trusted connector endpoint regex, URL is: " + url
                return 400, {"error": {"type": "illegal_argument_exception", "reason": reason}}
            connector_id = next(self._ids)
            self.indices.add("connectors")
            self.connectors[connector_id] = {k: v for k, v in body.items() if k != "credential"}
            return 200, {"connector_id": connector_id}
        if (method, rest) == ("POST", "model_groups/_register"):
            return self._register_group(body["name"])
        if (method, rest) == ("POST", "models/_register"):
            if "model_group_id" not in body:  # ml-commons then creates a group named after the model
                status, answer = self._register_group(body["name"])
                if status != 200:
                    return status, answer
                body = {**body, "model_group_id": answer["model_group_id"]}
            if body["model_group_id"] not in self.model_groups:
                return 404, {"error": {"type": "status_exception", "reason": "Failed to find model group"}}
            model_id = next(self._ids)
            self.indices.add("models")
            self.models[model_id] = {**body, "model_state": "REGISTERED"}
            return 200, {"task_id": next(self._ids), "status": "CREATED", "model_id": model_id}
        search = re.fullmatch(r"(connectors|models|model_groups)/_search", rest)
        if search and method == "POST":
            store = {"connectors": self.connectors, "models": self.models, "model_groups": self.model_groups}[search[1]]
            if search[1] not in self.indices:  # ml-commons creates its system index on first use
                return 404, {"error": {"type": "index_not_found_exception", "reason": "no such index"}}
            phrase = body["query"]["match_phrase"]["name"]
            hits = [{"_id": i, "_source": s} for i, s in store.items() if phrase in s["name"]]
            return 200, {"hits": {"total": {"value": len(hits)}, "hits": hits}}
        deploy = re.fullmatch(r"models/([^/]+)/_(deploy|undeploy)", rest)
        if deploy and method == "POST":
            model = self.models.get(deploy[1])
            if model is None:
                return 404, {"error": {"type": "status_exception", "reason": "Failed to find model"}}
            if deploy[2] == "undeploy":
                model["model_state"] = "UNDEPLOYED"
                return 200, {"node-1": {"stats": {deploy[1]: "undeployed"}}}
            task_id = next(self._ids)
            if self.deploy_error:
                self.tasks[task_id] = [{"state": "RUNNING"}, {"state": "FAILED", "error": self.deploy_error}]
            else:
                self.tasks[task_id] = [{"state": "RUNNING"}, {"state": "COMPLETED", "model_id": deploy[1]}]
                model["model_state"] = "DEPLOYED"
            return 200, {"task_id": task_id, "task_type": "DEPLOY_MODEL", "status": "CREATED"}
        task = re.fullmatch(r"tasks/([^/]+)", rest)
        if task and method == "GET":
            states = self.tasks[task[1]]
            return 200, states.pop(0) if len(states) > 1 else states[0]
        item = re.fullmatch(r"(connectors|models|model_groups)/([^/]+)", rest)
        if item and method == "DELETE":
            if item[1] == "model_groups":
                if item[2] not in self.model_groups:
                    return 404, {"error": {"type": "status_exception", "reason": "Failed to find model group"}}
                if any(m["model_group_id"] == item[2] for m in self.models.values()):
                    return 400, {"error": {"type": "status_exception", "reason": "the group has model versions"}}
                del self.model_groups[item[2]]
            elif item[1] == "models":
                model = self.models.get(item[2])
                if model is None:
                    return 404, {"error": {"type": "status_exception", "reason": "Failed to find model"}}
                if any(_pipeline_model(body) == item[2] for body in self.pipelines.values()):
                    return 400, {"error": {"type": "status_exception", "reason": "search pipelines use this model"}}
                if model["model_state"] == "DEPLOYED":
                    return 400, {"error": {"type": "status_exception", "reason": "Model cannot be deleted in deployed"}}
                del self.models[item[2]]
            else:
                if item[2] not in self.connectors:
                    return 404, {"error": {"type": "status_exception", "reason": "Failed to find connector"}}
                if any(m["connector_id"] == item[2] for m in self.models.values()):
                    return 409, {"error": {"type": "status_exception", "reason": "models are still using it"}}
                del self.connectors[item[2]]
            return 200, {"result": "deleted"}
        predict = re.fullmatch(r"_predict/text_similarity/([^/]+)", rest)
        if predict and method == "POST":
            refusal = self._refuses_host(predict[1])
            if refusal:
                return 400, {"error": {"type": "illegal_argument_exception", "reason": refusal}}
            outputs = [{"name": "similarity", "data_type": "FLOAT32", "shape": [1], "data": [s]} for s in self.scores]
            return 200, {"inference_results": [{"output": outputs}]}
        return 400, {"error": {"type": "illegal_argument_exception", "reason": f"no handler for {method} {rest}"}}

    def _register_group(self, name: str) -> tuple[int, Any]:
        for group_id, group in self.model_groups.items():
            if group["name"] == name:
                reason = f"The name you provided is already being used by a model group with ID: {group_id}."
                return 400, {"error": {"type": "illegal_argument_exception", "reason": reason}}
        group_id = next(self._ids)
        self.indices.add("model_groups")
        self.model_groups[group_id] = {"name": name}
        return 200, {"model_group_id": group_id, "status": "CREATED"}

    def _pipeline(self, method: str, pipeline_id: str, body: Any) -> tuple[int, Any]:
        if method == "PUT":
            self.pipelines[pipeline_id] = body
            return 200, {"acknowledged": True}
        if pipeline_id not in self.pipelines:
            return 404, {"error": {"type": "resource_not_found_exception", "reason": f"[{pipeline_id}] missing"}}
        if method == "GET":
            return 200, {pipeline_id: self.pipelines[pipeline_id]}
        del self.pipelines[pipeline_id]
        return 200, {"acknowledged": True}


def _dig(source: dict[str, Any], path: str) -> Any:
    value: Any = source
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _pipeline_model(body: dict[str, Any]) -> str | None:
    model_id: str | None = body["response_processors"][0]["rerank"]["ml_opensearch"]["model_id"]
    return model_id


class FakeConnection(Connection):
    """A connection that answers from ``server`` instead of the network."""

    server: ClassVar[FakeOpenSearch]

    def perform_request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        timeout: Any = None,
        ignore: Any = (),
        headers: Any = None,
    ) -> tuple[int, dict[str, str], str]:
        status, payload = self.server.handle(method, url, dict(params or {}), json.loads(body) if body else None)
        raw = json.dumps(payload)
        if not 200 <= status < 300 and status not in ignore:
            self._raise_error(status, raw, "application/json")
        return status, {"content-type": "application/json"}, raw


@pytest.fixture
def server() -> FakeOpenSearch:
    return FakeOpenSearch()


def client_for(server: FakeOpenSearch) -> OpenSearch:
    connection_class = type("BoundFakeConnection", (FakeConnection,), {"server": server})
    return OpenSearch("http://os.test:9200", connection_class=connection_class, max_retries=0)


@pytest.fixture
def client(server: FakeOpenSearch) -> OpenSearch:
    return client_for(server)


def install(client: OpenSearch, url: str = "http://rerank:8000", **options: Any) -> Any:
    return install_rerank_pipeline(client, url, poll_interval_s=0, resolver=resolve, **options)


# -- the bodies ------------------------------------------------------------------------------------------------


def test_install_creates_the_cohere_shaped_connector(server: FakeOpenSearch, client: OpenSearch) -> None:
    result = install(client)

    assert server.calls("POST", "/_plugins/_ml/connectors/_create") == [
        ("/_plugins/_ml/connectors/_create", EXPECTED_CONNECTOR)
    ]
    assert result.connector_id in server.connectors


def test_install_registers_and_deploys_a_remote_model(server: FakeOpenSearch, client: OpenSearch) -> None:
    result = install(client)

    [(_, group_body)] = server.calls("POST", "/_plugins/_ml/model_groups/_register")
    assert group_body == {
        "name": "lychee-rerank",
        "description": "Lychee-Rerank-MM through the lychee-rerank service (installed by lychee-rerank)",
    }
    [(_, register_body)] = server.calls("POST", "/_plugins/_ml/models/_register")
    assert register_body == {
        "name": "lychee-rerank",
        "function_name": "remote",
        "model_group_id": next(iter(server.model_groups)),
        "description": "Lychee-Rerank-MM through the lychee-rerank service (installed by lychee-rerank)",
        "connector_id": result.connector_id,
    }
    assert [p for p, _ in server.calls("POST", r".*/_deploy")] == [f"/_plugins/_ml/models/{result.model_id}/_deploy"]
    assert len(server.calls("GET", r"/_plugins/_ml/tasks/.*")) == 2  # RUNNING, then COMPLETED
    assert server.models[result.model_id]["model_state"] == "DEPLOYED"


def test_install_puts_the_rerank_pipeline(server: FakeOpenSearch, client: OpenSearch) -> None:
    result = install(client, document_fields=["title", "body"], pipeline_id="rr")

    assert server.calls("PUT", "/_search/pipeline/.*") == [
        (
            "/_search/pipeline/rr",
            {
                "description": "Lychee-Rerank-MM through the lychee-rerank service (installed by lychee-rerank)",
                "response_processors": [
                    {
                        "rerank": {
                            "ml_opensearch": {"model_id": result.model_id},
                            "context": {"document_fields": ["title", "body"]},
                        }
                    }
                ],
            },
        )
    ]
    assert result.pipeline_id == "rr"


def test_service_is_added_to_the_trusted_endpoints_before_the_connector(
    server: FakeOpenSearch, client: OpenSearch
) -> None:
    result = install(client)

    assert server.persistent == {TRUSTED: [*DEFAULT_TRUSTED, "^http://rerank:8000/.*$"], PRIVATE_IP: True}
    assert result.actions["cluster_settings"] == "updated"
    order = [(m, p) for m, p, _, _ in server.requests]
    assert order.index(("PUT", "/_cluster/settings")) < order.index(("POST", "/_plugins/_ml/connectors/_create"))


def test_public_host_leaves_private_ips_off(server: FakeOpenSearch, client: OpenSearch) -> None:
    install(client, "https://rerank.example.com")
    assert server.persistent == {TRUSTED: [*DEFAULT_TRUSTED, "^https://rerank\\.example\\.com/.*$"]}


def test_private_host_on_a_cluster_without_the_setting_is_refused_with_the_reason() -> None:
    """ml-commons before 2.15 (MLHttpClientFactory.validateIp) refuses private hosts with no setting to allow them."""
    server = FakeOpenSearch(version="2.14.0", private_ip_setting=False)
    with pytest.raises(LycheeError, match=r"10\.0\.0\.5 is an IP address.*OpenSearch 2\.14 refuses.*came with 2\.15"):
        install(client_for(server), "http://10.0.0.5:8000")
    assert PRIVATE_IP not in server.persistent
    assert server.connectors == {}


def test_no_private_ip_installs_on_an_old_cluster_when_told(server: FakeOpenSearch) -> None:
    old = FakeOpenSearch(version="2.14.0", private_ip_setting=False)
    old.cluster_dns["rerank"] = ["52.1.2.3"]  # split-horizon DNS: public from the cluster's side
    install(client_for(old), allow_private_ip=False)
    assert PRIVATE_IP not in old.persistent


def test_trusted_regex_matches_only_the_service() -> None:
    pattern = trusted_endpoint_regex("http://rerank.local:8000/")
    assert re.fullmatch(pattern, "http://rerank.local:8000/v1/rerank")
    assert not re.fullmatch(pattern, "http://rerankXlocal:8000/v1/rerank")
    assert not re.fullmatch(pattern, "http://rerank.local:8000.evil.com/v1/rerank")


def test_api_key_is_a_credential_that_the_header_references(server: FakeOpenSearch, client: OpenSearch) -> None:
    install(client, api_key="s3cret", multimodal=True)

    [(_, body)] = server.calls("POST", "/_plugins/_ml/connectors/_create")
    assert body["credential"] == {"api_key": "s3cret"}
    assert body["actions"][0]["headers"] == {
        "Content-Type": "application/json",
        "Authorization": "Bearer ${credential.api_key}",
        "X-Lychee-Json-Documents": "true",
    }


def test_connector_template_filled_as_ml_commons_does_is_a_valid_service_request() -> None:
    pytest.importorskip("fastapi", reason="the server extra is not installed")
    from lychee_rerank.core.server.protocol import RerankRequest
    from lychee_rerank.core.server.serving import content_fields

    template = connector_body("http://rerank:8000", multimodal=True)["actions"][0]["request_body"]
    documents = ["plain text", json.dumps({"text": "a red shoe", "image": "https://img.example/1.png"})]
    # The Cohere pre-process function gives the documents as a JSON array, the query JSON-escaped inside the
    # template's quotes, and top_n as the number of documents.
    filled = (
        template.replace("${parameters.documents}", json.dumps(documents))
        .replace("${parameters.query}", json.dumps('red "running" shoes')[1:-1])
        .replace("${parameters.top_n}", str(len(documents)))
    )
    request = RerankRequest.model_validate_json(filled)
    assert (request.query, request.documents, request.top_n) == ('red "running" shoes', documents, 2)
    assert content_fields(request.documents[1], "document 1", json_documents=True) == {
        "text": "a red shoe",
        "image": "https://img.example/1.png",
    }


# -- idempotency, replacement, versions --------------------------------------------------------------------------


def test_second_install_changes_nothing(server: FakeOpenSearch, client: OpenSearch) -> None:
    first = install(client)
    before = len(server.requests)
    second = install(client)

    assert (second.connector_id, second.model_id) == (first.connector_id, first.model_id)
    assert second.actions == {
        "cluster_settings": "unchanged",
        "connector": "unchanged",
        "model": "unchanged",
        "deployment": "unchanged",
        "pipeline": "unchanged",
    }
    writes = [(m, p) for m, p, _, _ in server.requests[before:] if m in ("PUT", "DELETE") or "_create" in p]
    assert [write for write in writes if not write[1].startswith("/lychee-rerank-probe-")] == []
    assert len(server.connectors) == 1
    assert len(server.models) == 1


def test_changed_url_replaces_connector_and_model(server: FakeOpenSearch, client: OpenSearch) -> None:
    first = install(client)
    second = install(client, "http://rerank-2:8000")

    assert second.actions["connector"] == "replaced"
    assert second.actions["pipeline"] == "updated"
    assert list(server.connectors) == [second.connector_id]
    assert list(server.models) == [second.model_id]
    assert server.pipelines["lychee-rerank"]["response_processors"][0]["rerank"]["ml_opensearch"] == {
        "model_id": second.model_id
    }
    assert (f"/_plugins/_ml/models/{first.model_id}/_undeploy", None) in server.calls("POST")
    assert len(server.model_groups) == 1  # the new model joined the old group: group names are unique


def test_a_leftover_model_group_is_reused(server: FakeOpenSearch, client: OpenSearch) -> None:
    server.indices.add("model_groups")
    server.model_groups["g-old"] = {"name": "lychee-rerank"}

    result = install(client)

    assert server.models[result.model_id]["model_group_id"] == "g-old"
    assert server.calls("POST", "/_plugins/_ml/model_groups/_register") == []


def test_undeployed_model_is_deployed_again(server: FakeOpenSearch, client: OpenSearch) -> None:
    result = install(client)
    server.models[result.model_id]["model_state"] = "UNDEPLOYED"

    assert install(client).actions["deployment"] == "deployed"
    assert server.models[result.model_id]["model_state"] == "DEPLOYED"


@pytest.mark.parametrize("version", ["2.11.1", "1.3.19"])
def test_cluster_without_rerank_processor_is_refused(version: str) -> None:
    server = FakeOpenSearch(version=version)

    with pytest.raises(LycheeError, match=rf"OpenSearch {version[:4].rstrip('.')} has no rerank processor.*2\.12"):
        install(client_for(server))
    assert not any(p.startswith("/_plugins/_ml") for _, p, _, _ in server.requests)


def test_cluster_without_neural_search_is_refused(server: FakeOpenSearch, client: OpenSearch) -> None:
    server.plugins = ["opensearch-ml"]
    with pytest.raises(LycheeError, match="lacks the neural-search"):
        install(client)


def test_failed_deployment_quotes_the_task_error(server: FakeOpenSearch, client: OpenSearch) -> None:
    server.deploy_error = "no eligible node found"
    with pytest.raises(LycheeError, match="failed to deploy the model: no eligible node found"):
        install(client)


def test_locked_down_trusted_list_gets_the_service_appended(server: FakeOpenSearch, client: OpenSearch) -> None:
    server.defaults[TRUSTED] = []
    server.persistent[TRUSTED] = ["^https://only\\.this/.*$"]
    # The plugin appends its regex to the current list, so even a locked-down list gets the service.
    install(client)
    assert server.persistent[TRUSTED] == ["^https://only\\.this/.*$", "^http://rerank:8000/.*$"]


# -- check and uninstall --------------------------------------------------------------------------------------------


def test_check_finds_every_part_and_probes(server: FakeOpenSearch, client: OpenSearch) -> None:
    result = install(client, verify=False)

    status = check_rerank_pipeline(client)

    assert status.ok, status.problems
    assert (status.connector_id, status.model_id, status.model_state) == (
        result.connector_id,
        result.model_id,
        "DEPLOYED",
    )
    assert status.pipeline_model_id == result.model_id
    assert status.probe_scores == [0.25, 0.75]
    [(_, body)] = server.calls("POST", r"/_plugins/_ml/_predict/text_similarity/.*")
    assert set(body) == {"query_text", "text_docs"}
    assert len(body["text_docs"]) == 2


def test_check_of_nothing_names_what_is_missing(client: OpenSearch) -> None:
    status = check_rerank_pipeline(client)
    assert not status.ok
    assert status.problems == ["no connector named 'lychee-rerank'", "no search pipeline 'lychee-rerank'"]


def test_check_reports_an_undeployed_model(server: FakeOpenSearch, client: OpenSearch) -> None:
    result = install(client)
    server.models[result.model_id]["model_state"] = "UNDEPLOYED"
    assert f"model {result.model_id} is UNDEPLOYED, not DEPLOYED" in check_rerank_pipeline(client, probe=False).problems


def test_uninstall_removes_everything_in_order_and_twice_is_harmless(
    server: FakeOpenSearch, client: OpenSearch
) -> None:
    result = install(client)

    groups = dict(server.model_groups)
    deleted = uninstall_rerank_pipeline(client)

    assert deleted == {
        "pipelines": ["lychee-rerank"],
        "models": [result.model_id],
        "model_groups": list(groups),
        "connectors": [result.connector_id],
    }
    assert server.pipelines == {}
    assert server.models == {}
    assert server.connectors == {}
    assert server.model_groups == {}
    assert uninstall_rerank_pipeline(client) == {"pipelines": [], "models": [], "model_groups": [], "connectors": []}
    assert install(client).actions["model"] == "created"  # a reinstall finds no stale group in its way


# -- search body ------------------------------------------------------------------------------------------------------


def test_search_body_reaches_search_with_the_pipeline(server: FakeOpenSearch, client: OpenSearch) -> None:
    install(client)
    body = rerank_search_body({"match": {"text": "red shoes"}}, query_text="red shoes", size=30)
    assert body == {
        "query": {"match": {"text": "red shoes"}},
        "ext": {"rerank": {"query_context": {"query_text": "red shoes"}}},
        "size": 30,
    }

    client.search(index="docs", body=body, params={"search_pipeline": "lychee-rerank"})

    [(method, _path, params, sent)] = [r for r in server.requests if r[1] == "/docs/_search"]
    assert (method, params, sent) == ("POST", {"search_pipeline": "lychee-rerank"}, body)


# -- the command line -----------------------------------------------------------------------------------------------


def run_cli(server: FakeOpenSearch, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lychee-rerank")
    register(
        parser.add_subparsers(dest="command", required=True),
        client_factory=lambda args: client_for(server),
        resolver=resolve,
    )
    args = parser.parse_args(["opensearch", *argv])
    status: int = args.handler(args)
    return status


def test_cli_install_check_uninstall(server: FakeOpenSearch, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["install", "--rerank-url", "http://rerank:8000", "--api-key", "s3cret", "--document-field", "caption"]

    assert run_cli(server, *argv) == 0
    assert run_cli(server, *argv) == 0
    assert run_cli(server, "check") == 0
    assert run_cli(server, "uninstall") == 0
    assert run_cli(server, "check", "--no-probe") == 1

    out = capsys.readouterr().out
    assert "s3cret" not in out
    assert out.count("connector: created") == 1
    assert out.count("connector: unchanged") == 1
    assert "ok: search pipeline 'lychee-rerank'" in out
    assert "NOT OK: search pipeline 'lychee-rerank'" in out
    assert len(server.calls("POST", "/_plugins/_ml/connectors/_create")) == 1
    pipeline_put = server.calls("PUT", "/_search/pipeline/.*")[0][1]
    assert pipeline_put["response_processors"][0]["rerank"]["context"] == {"document_fields": ["caption"]}


def test_cli_refuses_an_old_cluster_with_one_clear_error() -> None:
    with pytest.raises(LycheeError, match=r"OpenSearch 2\.11 has no rerank processor"):
        run_cli(FakeOpenSearch(version="2.11.0"), "install", "--rerank-url", "http://rerank:8000")
