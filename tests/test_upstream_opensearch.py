"""Upstream contract: OpenSearch ml-commons and neural-search, as their source defines them.

``FACTS`` holds what was read in opensearch-project/ml-commons and opensearch-project/neural-search, with
where; the tests run the plugin against the fake cluster of ``test_plugin_opensearch`` (which applies the
same rules) and check the plugin's own tables against the facts, so the next upstream change is one edit.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opensearchpy", reason="the opensearch extra is not installed")

from lychee_rerank.core.errors import LycheeError
from lychee_rerank.plugins.opensearch import (
    POST_PROCESS_FUNCTION,
    PRE_PROCESS_FUNCTION,
    PRIVATE_IP_MINIMUM_VERSION,
    PRIVATE_IP_SETTING,
    REQUEST_BODY,
    InstallCheckError,
    check_host,
    install_rerank_pipeline,
    is_private_address,
)


def _load_fake() -> Any:
    # The fake cluster lives beside its own tests; tests/ is not a package (pytest runs in importlib mode).
    spec = importlib.util.spec_from_file_location(
        "_opensearch_fake", Path(__file__).with_name("test_plugin_opensearch.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_fake = _load_fake()
PRIVATE_IP, FakeOpenSearch, client_for, resolve, run_cli = (
    _fake.PRIVATE_IP,
    _fake.FakeOpenSearch,
    _fake.client_for,
    _fake.resolve,
    _fake.run_cli,
)

FACTS: dict[str, dict[str, Any]] = {
    "private_ip_setting": {
        "fact": "a connector host is resolved by DNS (all addresses) and refused when any is private, unless "
        "plugins.ml_commons.connector.private_ip_enabled (default false, dynamic) is true",
        "setting": "plugins.ml_commons.connector.private_ip_enabled",
        "refusal": "Remote inference host name has private ip address: ",
        "source": "opensearch-project/ml-commons common/.../httpclient/MLValidatableAsyncHttpClient.java "
        "validateIp; common/.../settings/MLCommonsSettings.java ML_COMMONS_CONNECTOR_PRIVATE_IP_ENABLED",
    },
    "private_ip_version_gate": {
        "fact": "the setting came with ml-commons 2.15.0 (PR #2534); before, private hosts were always refused",
        "since": (2, 15),
        "source": "opensearch-project/ml-commons release-notes/opensearch-ml-common.release-notes-2.15.0.0.md; "
        "2.14.0.0 ml-algorithms/.../httpclient/MLHttpClientFactory.java validateIp",
    },
    "private_addresses": {
        "fact": "private means IPv4 10/8, 172.16/12, 192.168/16, 169.254/16, or Java's isSiteLocal/isLoopback/"
        "isAnyLocal (so 127/8, 0.0.0.0, ::1, ::, fec0::/10; not fc00::/7)",
        "private": [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.1",
            "192.168.1.1",
            "169.254.169.254",
            "127.0.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fec0::1",
        ],
        "public": ["172.15.0.1", "172.32.0.1", "8.8.8.8", "100.64.0.1", "fd00::1", "2001:db8::1"],
        "source": "opensearch-project/ml-commons MLValidatableAsyncHttpClient.hasPrivateIpAddress / isPrivateIPv4",
    },
    "cohere_pre_process": {
        "fact": "connector.pre_process.cohere.rerank fills parameters query (string), documents (array) and "
        "top_n = number of documents",
        "name": "connector.pre_process.cohere.rerank",
        "parameters": ["query", "documents", "top_n"],
        "source": "opensearch-project/ml-commons common/.../functions/preprocess/CohereRerankPreProcessFunction.java",
    },
    "cohere_post_process": {
        "fact": "connector.post_process.cohere.rerank reads $.results, each needing index and relevance_score, and "
        "puts score i at position index",
        "name": "connector.post_process.cohere.rerank",
        "json_path": "$.results",
        "keys": ["index", "relevance_score"],
        "source": "opensearch-project/ml-commons common/.../connector/MLPostProcessFunction.java (COHERE_RERANK "
        "-> $.results); functions/postprocess/CohereRerankPostProcessFunction.java",
    },
    "document_fields_joined": {
        "fact": "the rerank processor appends each document_fields value to one StringBuilder, no separator; "
        "list values joined with a space; a missing field is the empty string",
        "source": "opensearch-project/neural-search src/main/java/org/opensearch/neuralsearch/processor/rerank/"
        "context/DocumentContextSourceFetcher.java fetchContext / contextFromSearchHit",
    },
}


def install(server: FakeOpenSearch, url: str = "http://rerank:8000", **options: Any) -> Any:
    return install_rerank_pipeline(client_for(server), url, poll_interval_s=0, resolver=resolve, **options)


def test_the_plugin_tables_match_ml_commons() -> None:
    """ml-commons MLCommonsSettings, MLPreProcessFunction/MLPostProcessFunction names, release notes 2.15."""
    assert FACTS["private_ip_setting"]["setting"] == PRIVATE_IP_SETTING
    assert FACTS["private_ip_version_gate"]["since"] == PRIVATE_IP_MINIMUM_VERSION
    assert FACTS["cohere_pre_process"]["name"] == PRE_PROCESS_FUNCTION
    assert FACTS["cohere_post_process"]["name"] == POST_PROCESS_FUNCTION
    for parameter in FACTS["cohere_pre_process"]["parameters"]:
        assert "${parameters." + parameter + "}" in REQUEST_BODY


@pytest.mark.parametrize("address", FACTS["private_addresses"]["private"])
def test_addresses_ml_commons_counts_private(address: str) -> None:
    """ml-commons MLValidatableAsyncHttpClient.hasPrivateIpAddress."""
    assert is_private_address(address)


@pytest.mark.parametrize("address", FACTS["private_addresses"]["public"])
def test_addresses_ml_commons_counts_public(address: str) -> None:
    """ml-commons MLValidatableAsyncHttpClient.hasPrivateIpAddress (Python's is_private differs on some)."""
    assert not is_private_address(address)


def test_a_dotted_name_that_resolves_to_a_private_address_gets_the_setting() -> None:
    """MLValidatableAsyncHttpClient.validateIp resolves names: a dotted name is not public by its dots."""
    server = FakeOpenSearch()
    host = check_host("http://rerank.corp.example:8000", lambda host, port: ["10.20.30.40"])
    assert host.private
    assert host.how == "resolves to 10.20.30.40"
    install_rerank_pipeline(
        client_for(server),
        "http://rerank.corp.example:8000",
        poll_interval_s=0,
        resolver=lambda h, p: ["10.20.30.40"],
        verify=False,
    )
    assert server.persistent[PRIVATE_IP] is True


def test_a_cluster_internal_name_the_installer_cannot_resolve_is_judged_by_its_name() -> None:
    """The issue's case: rerank.search.svc.cluster.local resolves only inside the cluster, to a private address."""
    server = FakeOpenSearch()
    result = install(server, "http://rerank.search.svc.cluster.local:8000")
    assert server.persistent[PRIVATE_IP] is True
    assert result.check is not None
    assert result.check.ok
    assert any("judged by its name" in warning for warning in result.warnings)


def test_split_horizon_dns_fails_the_final_check_with_the_fix() -> None:
    """validateIp runs on the cluster: a host public from here but private from there fails there, and says so."""
    server = FakeOpenSearch()
    server.cluster_dns["rerank.example.com"] = ["10.9.9.9"]
    with pytest.raises(InstallCheckError) as caught:
        install(server, "https://rerank.example.com")
    [problem] = caught.value.result.check.problems
    assert FACTS["private_ip_setting"]["refusal"] + "rerank.example.com" in problem
    assert "re-run install with --private-ip" in problem
    assert PRIVATE_IP not in server.persistent


def test_cli_install_exits_non_zero_saying_what_failed(capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeOpenSearch()
    server.cluster_dns["rerank.example.com"] = ["10.9.9.9"]
    assert run_cli(server, "install", "--rerank-url", "https://rerank.example.com") == 1
    out = capsys.readouterr().out
    assert "connector: created" in out
    assert "NOT OK: installed, but OpenSearch cannot rerank through the service" in out
    assert "has private ip address: rerank.example.com" in out
    assert "--private-ip" in out
    assert run_cli(server, "install", "--rerank-url", "https://rerank.example.com", "--private-ip") == 0
    assert server.persistent[PRIVATE_IP] is True


def test_no_private_ip_is_obeyed_and_the_check_reports_the_refusal() -> None:
    server = FakeOpenSearch()
    with pytest.raises(InstallCheckError, match="has private ip address: rerank"):
        install(server, allow_private_ip=False)
    assert PRIVATE_IP not in server.persistent


def test_install_ends_with_a_real_search_through_the_pipeline_on_a_temporary_index() -> None:
    server = FakeOpenSearch()
    result = install(server, document_fields=["title"])
    assert result.check is not None
    assert result.check.ok
    searches = [
        (path, params) for method, path, params, _ in server.requests if path.endswith("/_search") and method == "POST"
    ]
    [params] = [q for p, q in searches if p.startswith("/lychee-rerank-probe-")]
    assert params == {"search_pipeline": "lychee-rerank"}
    assert server.documents == {}  # the temporary index is gone
    assert server.reranked_texts == [["a short test document", "another test document"]]


def test_several_text_fields_are_joined_with_no_separator_and_warned_about() -> None:
    """neural-search DocumentContextSourceFetcher.fetchContext: StringBuilder.append per field, no separator."""
    server = FakeOpenSearch()
    result = install(server, document_fields=["title", "body"], verify=False)
    [warning] = result.warnings
    assert "joins title, body with no separator" in warning
    assert "--combine-fields-into" in warning
    client = client_for(server)
    client.index(index="docs", id="1", body={"title": "Red dress", "body": "Cotton"})
    client.search(index="docs", body={"query": {"match_all": {}}}, params={"search_pipeline": "lychee-rerank"})
    assert server.reranked_texts[-1] == ["Red dressCotton"]


def test_a_multimodal_field_with_any_other_field_is_refused() -> None:
    """DocumentContextSourceFetcher joins the JSON field with the others: the result is not JSON any more."""
    joined = json.dumps({"text": "a", "image": "https://x/1.png"}) + "Cotton"
    with pytest.raises(json.JSONDecodeError, match="Extra data"):
        json.loads(joined)
    server = FakeOpenSearch()
    with pytest.raises(LycheeError, match=r"with --multimodal give exactly one document field.*no longer JSON"):
        install(server, document_fields=["mm", "body"], multimodal=True)
    assert server.connectors == {}


def test_combine_fields_into_creates_an_ingest_pipeline_and_reranks_on_the_combined_field() -> None:
    server = FakeOpenSearch()
    result = install(server, document_fields=["title", "body"], combine_fields_into="rerank_text", verify=False)
    assert result.actions["ingest_pipeline"] == "created"
    assert result.warnings == []
    ingest = server.ingest_pipelines["lychee-rerank-combine"]  # type: ignore[attr-defined]
    script = ingest["processors"][0]["script"]
    assert script["params"] == {"fields": ["title", "body"], "target": "rerank_text", "separator": "\n"}
    assert server.pipelines["lychee-rerank"]["response_processors"][0]["rerank"]["context"] == {
        "document_fields": ["rerank_text"]
    }
    again = install(server, document_fields=["title", "body"], combine_fields_into="rerank_text", verify=False)
    assert again.actions["ingest_pipeline"] == "unchanged"


def test_the_multimodal_probe_document_is_json_in_the_one_field() -> None:
    server = FakeOpenSearch()
    result = install(server, document_fields=["mm"], multimodal=True)
    assert result.check is not None
    assert result.check.ok
    assert [json.loads(text) for text in server.reranked_texts[0]] == [
        {"text": "a short test document"},
        {"text": "another test document"},
    ]
