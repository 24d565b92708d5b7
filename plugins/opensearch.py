"""OpenSearch side of lychee-rerank: an ml-commons connector, a remote model and a rerank search pipeline.

OpenSearch 2.12+ reranks search results with the ``rerank`` response processor, which calls a
text-similarity model. ml-commons reaches a model over HTTP through a connector; its built-in Cohere
rerank functions (``connector.pre_process.cohere.rerank`` / ``connector.post_process.cohere.rerank``)
speak the shape the service's ``/v1/rerank`` answers (DESIGN §6). ``install_rerank_pipeline`` sets up all
of it, idempotently::

    from opensearchpy import OpenSearch
    from lychee_rerank.plugins.opensearch import install_rerank_pipeline, rerank_search_body

    client = OpenSearch("http://localhost:9200")
    installed = install_rerank_pipeline(client, "http://rerank:8000", document_fields=["text"])
    client.search(index="docs", body=rerank_search_body({"match": {"text": "red shoes"}}, query_text="red shoes"),
                  params={"search_pipeline": installed.pipeline_id})

Images travel through OpenSearch only as strings: store ``{"text": ..., "image": ...}`` as a JSON string in a
document field, list that field in ``document_fields`` and install with ``multimodal=True``.

The same is on the command line: ``lychee-rerank opensearch install --os-url ... --rerank-url ...``, ``check``
and ``uninstall``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lychee_rerank.core.errors import LycheeError

if TYPE_CHECKING:  # the client is an optional extra: import it only where it is used
    from opensearchpy import OpenSearch

DEFAULT_NAME = "lychee-rerank"
"""The connector's and the model's name and the search pipeline's id unless told otherwise."""

JSON_DOCUMENTS_HEADER = "X-Lychee-Json-Documents"
"""Asks the service to parse string documents holding ``{"text", "image"}`` JSON (core/server/serving.py)."""

MINIMUM_VERSION = (2, 12)
"""The oldest OpenSearch with the ``rerank`` processor and the Cohere rerank connector functions."""

TRUSTED_ENDPOINTS_SETTING = "plugins.ml_commons.trusted_connector_endpoints_regex"
PRIVATE_IP_SETTING = "plugins.ml_commons.connector.private_ip_enabled"
REQUIRED_PLUGINS = {"opensearch-ml": "ml-commons", "opensearch-neural-search": "neural-search (the rerank processor)"}

# The pre-process function fills ${parameters.query} (a string: the blueprint quotes it),
# ${parameters.documents} (a JSON array) and ${parameters.top_n} (the number of documents).
REQUEST_BODY = '{ "documents": ${parameters.documents}, "query": "${parameters.query}", "top_n": ${parameters.top_n} }'
PRE_PROCESS_FUNCTION = "connector.pre_process.cohere.rerank"
POST_PROCESS_FUNCTION = "connector.post_process.cohere.rerank"

_ML = "/_plugins/_ml"
_PROBE_QUERY = "lychee-rerank check"
_PROBE_DOCUMENTS = ["a short test document", "another test document"]
_DESCRIPTION = "Lychee-Rerank-MM through the lychee-rerank service (installed by lychee-rerank)"


def rerank_endpoint_url(rerank_url: str) -> str:
    """The service's ``/v1/rerank`` URL from its base URL; a URL already ending in a rerank route is kept.

    Example:
        >>> rerank_endpoint_url("http://rerank:8000")
        'http://rerank:8000/v1/rerank'
    """
    url = rerank_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise LycheeError(f"the rerank URL must start with http:// or https://, got {rerank_url!r}")
    if url.endswith(("/v1/rerank", "/v2/rerank", "/rerank")):
        return url
    return url + "/v1/rerank"


def trusted_endpoint_regex(rerank_url: str) -> str:
    """The regex for ``trusted_connector_endpoints_regex`` that admits the service and nothing else.

    Example:
        >>> trusted_endpoint_regex("http://rerank.local:8000")
        '^http://rerank\\\\.local:8000/.*$'
    """
    parts = urlsplit(rerank_endpoint_url(rerank_url))
    return "^" + re.escape(f"{parts.scheme}://{parts.netloc}") + "/.*$"


def needs_private_ip(rerank_url: str) -> bool:
    """Whether the service's host is (or likely resolves to) a loopback or private address.

    IP literals are judged exactly; ``localhost`` and single-label names (``rerank`` in docker compose)
    count as private, dotted names as public.
    """
    host = urlsplit(rerank_endpoint_url(rerank_url)).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or "." not in host
    return address.is_private or address.is_loopback or address.is_link_local


def connector_body(
    rerank_url: str, *, name: str = DEFAULT_NAME, api_key: str | None = None, multimodal: bool = False
) -> dict[str, Any]:
    """The body of ``POST /_plugins/_ml/connectors/_create`` for an HTTP connector to ``/v1/rerank``.

    Example:
        >>> connector_body("http://rerank:8000")["actions"][0]["url"]
        'http://rerank:8000/v1/rerank'
    """
    headers = {"Content-Type": "application/json"}
    if api_key:
        # ${credential.api_key} is filled from the encrypted credential, which OpenSearch never returns.
        headers["Authorization"] = "Bearer ${credential.api_key}"
    if multimodal:
        headers[JSON_DOCUMENTS_HEADER] = "true"
    body: dict[str, Any] = {
        "name": name,
        "description": _DESCRIPTION,
        "version": "1",
        "protocol": "http",
        "parameters": {},
        "actions": [
            {
                "action_type": "predict",
                "method": "POST",
                "url": rerank_endpoint_url(rerank_url),
                "headers": headers,
                "request_body": REQUEST_BODY,
                "pre_process_function": PRE_PROCESS_FUNCTION,
                "post_process_function": POST_PROCESS_FUNCTION,
            }
        ],
    }
    # ml-commons refuses a connector without a credential ("Connector credential is null or empty list"),
    # so a service without a key gets a placeholder that no header references.
    body["credential"] = {"api_key": api_key} if api_key else {"no_api_key": "unused"}
    return body


def model_group_body(*, name: str = DEFAULT_NAME) -> dict[str, Any]:
    """The body of ``POST /_plugins/_ml/model_groups/_register`` for the group holding the model."""
    return {"name": name, "description": _DESCRIPTION}


def model_body(connector_id: str, model_group_id: str, *, name: str = DEFAULT_NAME) -> dict[str, Any]:
    """The body of ``POST /_plugins/_ml/models/_register`` for the remote model behind ``connector_id``."""
    return {
        "name": name,
        "function_name": "remote",
        "model_group_id": model_group_id,
        "description": _DESCRIPTION,
        "connector_id": connector_id,
    }


def pipeline_body(model_id: str, document_fields: Sequence[str]) -> dict[str, Any]:
    """The body of ``PUT /_search/pipeline/<id>``: one ``rerank`` response processor using the model."""
    if not document_fields:
        raise LycheeError("give at least one document field for the rerank processor to score")
    return {
        "description": _DESCRIPTION,
        "response_processors": [
            {
                "rerank": {
                    "ml_opensearch": {"model_id": model_id},
                    "context": {"document_fields": list(document_fields)},
                }
            }
        ],
    }


def rerank_search_body(query: Mapping[str, Any], *, query_text: str, size: int | None = None) -> dict[str, Any]:
    """A search body for an index searched with the rerank pipeline: the query plus ``ext.rerank``.

    Send it with ``params={"search_pipeline": <pipeline id>}`` (or make the pipeline the index's
    ``index.search.default_pipeline``). The processor reranks the hits the query returns, so ``size`` is the
    rerank window.

    Example:
        >>> rerank_search_body({"match": {"text": "shoes"}}, query_text="shoes")["ext"]
        {'rerank': {'query_context': {'query_text': 'shoes'}}}
    """
    body: dict[str, Any] = {"query": dict(query), "ext": {"rerank": {"query_context": {"query_text": query_text}}}}
    if size is not None:
        body["size"] = size
    return body


@dataclass(frozen=True)
class InstallResult:
    """What ``install_rerank_pipeline`` did.

    Attributes:
        connector_id: The ml-commons connector.
        model_id: The registered, deployed remote model.
        pipeline_id: The search pipeline to name in ``search_pipeline``.
        actions: Per part (``cluster_settings``, ``connector``, ``model``, ``deployment``, ``pipeline``), what
            happened: ``created``, ``updated``, ``replaced``, ``deployed`` or ``unchanged``.
    """

    connector_id: str
    model_id: str
    pipeline_id: str
    actions: dict[str, str]


@dataclass(frozen=True)
class PipelineStatus:
    """What ``check_rerank_pipeline`` found.

    Attributes:
        connector_id: The connector found by name, if any.
        model_id: The model found by name, if any.
        model_state: The model's state (``DEPLOYED`` when usable).
        pipeline_id: The pipeline looked at.
        pipeline_model_id: The model the pipeline's rerank processor calls, if the pipeline exists.
        probe_scores: Scores of a two-document test through the model, when probed and it worked.
        problems: What is wrong, one sentence each; empty when all is well.
    """

    connector_id: str | None
    model_id: str | None
    model_state: str | None
    pipeline_id: str
    pipeline_model_id: str | None
    probe_scores: list[float] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every part is there and nothing is wrong."""
        return not self.problems


# -- helpers over the low-level transport -----------------------------------------------------------------


def _request(
    client: OpenSearch,
    method: str,
    path: str,
    *,
    body: Any = None,
    params: Mapping[str, Any] | None = None,
    what: str,
) -> Any:
    from opensearchpy import TransportError

    try:
        return client.transport.perform_request(method, path, params=params, body=body)
    except TransportError as error:
        raise _failure(error, what) from None


def _failure(error: Any, what: str) -> LycheeError:
    status = getattr(error, "status_code", None)
    if not isinstance(status, int):  # a connection problem ("N/A"), not an answer
        return LycheeError(f"cannot reach OpenSearch to {what}: {error}")
    return LycheeError(f"OpenSearch refused to {what} ({status}): {_reason(error)}")


def _reason(error: Any) -> str:
    info = getattr(error, "info", None)
    if isinstance(info, dict):
        inner = info.get("error")
        if isinstance(inner, dict):
            return str(inner.get("reason") or inner.get("type") or inner)
        if inner:
            return str(inner)
    return str(getattr(error, "error", error))


def _is_missing(error: Any) -> bool:
    return getattr(error, "status_code", None) == 404


def cluster_version(client: OpenSearch) -> tuple[int, int]:
    """The cluster's (major, minor) version; refuses Elasticsearch, which has no ml-commons."""
    info = _request(client, "GET", "/", what="read the cluster version")
    version = info.get("version") or {}
    if version.get("distribution") not in (None, "opensearch"):
        raise LycheeError(f"{version.get('distribution')!r} is not OpenSearch; use the elasticsearch plugin")
    number = str(version.get("number", ""))
    parts = number.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise LycheeError(f"cannot read the OpenSearch version {number!r}") from None


def require_rerank_support(client: OpenSearch) -> tuple[int, int]:
    """Refuses clusters older than 2.12 or without ml-commons and neural-search; returns (major, minor)."""
    version = cluster_version(client)
    if version < MINIMUM_VERSION:
        raise LycheeError(
            f"OpenSearch {version[0]}.{version[1]} has no rerank processor; it needs OpenSearch "
            f"{MINIMUM_VERSION[0]}.{MINIMUM_VERSION[1]} or later (or use the client-side adapter)"
        )
    rows = _request(client, "GET", "/_cat/plugins", params={"format": "json"}, what="list the plugins")
    installed = {row.get("component") for row in rows or []}
    missing = [label for component, label in REQUIRED_PLUGINS.items() if component not in installed]
    if rows and missing:  # an empty list means a cluster that hides _cat/plugins: let the APIs answer
        raise LycheeError(f"OpenSearch lacks the {' and '.join(missing)} plugin: install it on every node")
    return version


def _flat_setting(settings: Mapping[str, Any], key: str) -> Any:
    """A setting from ``_cluster/settings?flat_settings&include_defaults``: transient, persistent, default."""
    for section in ("transient", "persistent", "defaults"):
        values = settings.get(section) or {}
        if key in values:
            return values[key]
        listed = [values[name] for name in sorted(values) if re.fullmatch(re.escape(key) + r"\.\d+", name)]
        if listed:
            return listed
    return None


def install_cluster_settings(client: OpenSearch, rerank_url: str, *, allow_private_ip: bool | None = None) -> str:
    """Adds the service to the trusted connector endpoints (and allows private IPs where needed).

    The trusted list replaces, never extends, the default list, so the current list is read and the
    service's regex appended to it. Returns ``updated`` or ``unchanged``.

    Args:
        client: An ``opensearchpy.OpenSearch`` client.
        rerank_url: The service's URL as the cluster reaches it.
        allow_private_ip: Set ``plugins.ml_commons.connector.private_ip_enabled`` (on versions that have it);
            ``None`` decides from the URL's host (see ``needs_private_ip``).
    """
    current = _request(
        client,
        "GET",
        "/_cluster/settings",
        params={"include_defaults": "true", "flat_settings": "true"},
        what="read the cluster settings",
    )
    wanted: dict[str, Any] = {}
    patterns = _flat_setting(current, TRUSTED_ENDPOINTS_SETTING)
    patterns = [patterns] if isinstance(patterns, str) else list(patterns or [])
    url = rerank_endpoint_url(rerank_url)
    if not any(_matches(pattern, url) for pattern in patterns):
        wanted[TRUSTED_ENDPOINTS_SETTING] = [*patterns, trusted_endpoint_regex(rerank_url)]
    private = needs_private_ip(rerank_url) if allow_private_ip is None else allow_private_ip
    known = _flat_setting(current, PRIVATE_IP_SETTING)
    if private and known is not None and str(known).lower() != "true":
        wanted[PRIVATE_IP_SETTING] = True
    if not wanted:
        return "unchanged"
    _request(client, "PUT", "/_cluster/settings", body={"persistent": wanted}, what="update the cluster settings")
    return "updated"


def _matches(pattern: str, url: str) -> bool:
    # OpenSearch matches with Java regexes; Python's agree on the plain patterns these lists hold.
    try:
        return re.fullmatch(pattern, url) is not None
    except re.error:
        return False


def _search(client: OpenSearch, kind: str, name: str) -> list[dict[str, Any]]:
    """Connectors, models or model groups (``kind``) named exactly ``name``: each ``_source`` plus ``_id``."""
    from opensearchpy import TransportError

    body = {"query": {"match_phrase": {"name": name}}, "size": 100}
    try:
        response = client.transport.perform_request("POST", f"{_ML}/{kind}/_search", body=body)
    except TransportError as error:
        if _is_missing(error):  # no connector or model was ever created: the index does not exist yet
            return []
        raise _failure(error, f"search {kind}") from None
    hits = ((response or {}).get("hits") or {}).get("hits") or []
    # match_phrase also finds longer names; chunks of uploaded models carry the name too.
    return [
        {**hit.get("_source", {}), "_id": hit["_id"]}
        for hit in hits
        if hit.get("_source", {}).get("name") == name and "chunk_number" not in hit.get("_source", {})
    ]


def _same_connector(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    actions = existing.get("actions") or []
    if existing.get("protocol") != "http" or len(actions) != 1:
        return False
    have, want = actions[0], wanted["actions"][0]
    keys = ("method", "url", "headers", "request_body", "pre_process_function", "post_process_function")
    return all(have.get(key) == want[key] for key in keys)


def _wait_for_task(
    client: OpenSearch, task_id: str, *, what: str, timeout_s: float, poll_interval_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        task: dict[str, Any] = _request(client, "GET", f"{_ML}/tasks/{task_id}", what=f"follow the task to {what}")
        state = task.get("state")
        if state == "COMPLETED":
            return task
        if state in ("FAILED", "COMPLETED_WITH_ERROR", "CANCELLED"):
            raise LycheeError(f"OpenSearch failed to {what}: {task.get('error') or state}")
        if time.monotonic() >= deadline:
            raise LycheeError(f"OpenSearch did not {what} within {timeout_s:g} s (task {task_id} is {state})")
        time.sleep(poll_interval_s)


def _deploy(client: OpenSearch, model_id: str, *, timeout_s: float, poll_interval_s: float) -> None:
    answer = _request(client, "POST", f"{_ML}/models/{model_id}/_deploy", what="deploy the model")
    if answer.get("status") != "COMPLETED" and answer.get("task_id"):
        _wait_for_task(
            client, answer["task_id"], what="deploy the model", timeout_s=timeout_s, poll_interval_s=poll_interval_s
        )


def _remove_model(client: OpenSearch, model_id: str) -> None:
    from opensearchpy import TransportError

    try:
        client.transport.perform_request("POST", f"{_ML}/models/{model_id}/_undeploy")
    except TransportError as error:
        if not _is_missing(error):
            raise _failure(error, f"undeploy model {model_id}") from None
    _delete(client, f"{_ML}/models/{model_id}", what=f"delete model {model_id}")


def _delete(client: OpenSearch, path: str, *, what: str) -> bool:
    from opensearchpy import TransportError

    try:
        client.transport.perform_request("DELETE", path)
    except TransportError as error:
        if _is_missing(error):
            return False
        raise _failure(error, what) from None
    return True


def _get_pipeline(client: OpenSearch, pipeline_id: str) -> dict[str, Any] | None:
    from opensearchpy import TransportError

    try:
        answer = client.transport.perform_request("GET", f"/_search/pipeline/{pipeline_id}")
    except TransportError as error:
        if _is_missing(error):
            return None
        raise _failure(error, f"read search pipeline {pipeline_id!r}") from None
    pipeline = (answer or {}).get(pipeline_id)
    return dict(pipeline) if isinstance(pipeline, dict) else None


def _pipeline_model_id(pipeline: Mapping[str, Any]) -> str | None:
    for processor in pipeline.get("response_processors") or []:
        rerank = processor.get("rerank") if isinstance(processor, dict) else None
        if isinstance(rerank, dict):
            model_id = (rerank.get("ml_opensearch") or {}).get("model_id")
            return str(model_id) if model_id else None
    return None


def install_rerank_pipeline(
    client: OpenSearch,
    rerank_url: str,
    *,
    document_fields: Sequence[str] = ("text",),
    name: str = DEFAULT_NAME,
    pipeline_id: str | None = None,
    api_key: str | None = None,
    multimodal: bool = False,
    allow_private_ip: bool | None = None,
    replace: bool = False,
    deploy_timeout_s: float = 120.0,
    poll_interval_s: float = 1.0,
) -> InstallResult:
    """Installs, or brings up to date, the connector, the remote model and the rerank search pipeline.

    Each part is looked up first (connector and model by ``name``, the pipeline by id) and created only when
    missing or different, so running it twice changes nothing. A connector with other settings (or any,
    with ``replace=True``, the way to rotate ``api_key``: OpenSearch never returns credentials) is removed
    with its models and created again.

    Args:
        client: An ``opensearchpy.OpenSearch`` client.
        rerank_url: The service's base URL as the cluster reaches it, e.g. ``http://rerank:8000``.
        document_fields: The ``_source`` fields the service scores (a ``{"text", "image"}`` JSON-string field
            with ``multimodal``).
        name: The connector's and the model's name.
        pipeline_id: The search pipeline's id; ``name`` by default.
        api_key: The service's API key, if it has one.
        multimodal: Make the service parse JSON-string ``{"text", "image"}`` documents.
        allow_private_ip: See ``install_cluster_settings``.
        replace: Recreate the connector and model even when they look identical.
        deploy_timeout_s: How long to wait for the model's deployment.
        poll_interval_s: How often to look at the deployment task.

    Raises:
        LycheeError: The cluster is too old or lacks a plugin, or OpenSearch refused a step (its reason quoted).
    """
    require_rerank_support(client)
    pipeline_id = pipeline_id or name
    wanted_pipeline_fields = list(document_fields)
    if not wanted_pipeline_fields:
        raise LycheeError("give at least one document field for the rerank processor to score")
    actions = {"cluster_settings": install_cluster_settings(client, rerank_url, allow_private_ip=allow_private_ip)}

    wanted_connector = connector_body(rerank_url, name=name, api_key=api_key, multimodal=multimodal)
    connectors = _search(client, "connectors", name)
    keep = [c for c in connectors if _same_connector(c, wanted_connector)] if not replace else []
    stale = [c for c in connectors if c not in keep[:1]]
    models = _search(client, "models", name)
    if keep:
        connector_id = str(keep[0]["_id"])
        actions["connector"] = "unchanged"
    else:
        created = _request(client, "POST", f"{_ML}/connectors/_create", body=wanted_connector, what="create connector")
        connector_id = str(created["connector_id"])
        actions["connector"] = "replaced" if stale else "created"

    model = next((m for m in models if m.get("connector_id") == connector_id), None)
    if model is None:
        # Without a group ml-commons creates one named after the model and, as group names are unique, refuses
        # the next registration under that name (after a replacement or a reinstall): reuse the group instead.
        groups = _search(client, "model_groups", name)
        if groups:
            group_id = str(groups[0]["_id"])
        else:
            group = _request(
                client, "POST", f"{_ML}/model_groups/_register", body=model_group_body(name=name), what="create group"
            )
            group_id = str(group["model_group_id"])
        registered = _request(
            client,
            "POST",
            f"{_ML}/models/_register",
            body=model_body(connector_id, group_id, name=name),
            what="register the model",
        )
        model_id = registered.get("model_id")
        if not model_id:  # older ml-commons answer with the task only
            task = _wait_for_task(
                client,
                registered["task_id"],
                what="register the model",
                timeout_s=deploy_timeout_s,
                poll_interval_s=poll_interval_s,
            )
            model_id = task["model_id"]
        model_id = str(model_id)
        actions["model"] = "created"
        state = None
    else:
        model_id = str(model["_id"])
        actions["model"] = "unchanged"
        state = model.get("model_state")
    if state != "DEPLOYED":
        _deploy(client, model_id, timeout_s=deploy_timeout_s, poll_interval_s=poll_interval_s)
        actions["deployment"] = "deployed"
    else:
        actions["deployment"] = "unchanged"

    wanted_pipeline = pipeline_body(model_id, wanted_pipeline_fields)
    existing = _get_pipeline(client, pipeline_id)
    if existing is not None and existing.get("response_processors") == wanted_pipeline["response_processors"]:
        actions["pipeline"] = "unchanged"
    else:
        _request(
            client, "PUT", f"/_search/pipeline/{pipeline_id}", body=wanted_pipeline, what="create the search pipeline"
        )
        actions["pipeline"] = "created" if existing is None else "updated"

    # Stale parts go last: ml-commons refuses to delete a model a search pipeline still uses, and searches
    # keep working on the old model until the pipeline points at the new one.
    for connector in stale:
        for stale_model in models:
            if stale_model.get("connector_id") == connector["_id"]:
                _remove_model(client, stale_model["_id"])
        _delete(client, f"{_ML}/connectors/{connector['_id']}", what=f"delete connector {connector['_id']}")
    return InstallResult(connector_id, model_id, pipeline_id, actions)


def check_rerank_pipeline(
    client: OpenSearch, *, name: str = DEFAULT_NAME, pipeline_id: str | None = None, probe: bool = True
) -> PipelineStatus:
    """Looks every part up and, with ``probe``, scores two test documents through the model.

    Never raises for a missing or broken part: the answer says what is wrong in ``problems``.
    """
    pipeline_id = pipeline_id or name
    problems: list[str] = []
    connectors = _search(client, "connectors", name)
    connector_id = str(connectors[0]["_id"]) if connectors else None
    if connector_id is None:
        problems.append(f"no connector named {name!r}")
    models = [m for m in _search(client, "models", name) if connector_id and m.get("connector_id") == connector_id]
    model_id = str(models[0]["_id"]) if models else None
    model_state = str(models[0].get("model_state")) if models else None
    if connector_id and model_id is None:
        problems.append(f"no model named {name!r} uses connector {connector_id}")
    elif model_id and model_state != "DEPLOYED":
        problems.append(f"model {model_id} is {model_state}, not DEPLOYED")
    pipeline = _get_pipeline(client, pipeline_id)
    pipeline_model_id = _pipeline_model_id(pipeline) if pipeline is not None else None
    if pipeline is None:
        problems.append(f"no search pipeline {pipeline_id!r}")
    elif pipeline_model_id != model_id:
        problems.append(f"search pipeline {pipeline_id!r} calls model {pipeline_model_id}, not {model_id}")
    probe_scores = None
    if probe and model_id:
        try:
            answer = _request(
                client,
                "POST",
                f"{_ML}/_predict/text_similarity/{model_id}",
                body={"query_text": _PROBE_QUERY, "text_docs": _PROBE_DOCUMENTS},
                what="run a test rerank",
            )
            outputs = ((answer.get("inference_results") or [{}])[0]).get("output") or []
            probe_scores = [float(output["data"][0]) for output in outputs]
            if len(probe_scores) != len(_PROBE_DOCUMENTS):
                problems.append(f"the probe got {len(probe_scores)} scores for {len(_PROBE_DOCUMENTS)} documents")
        except LycheeError as error:
            problems.append(str(error))
    return PipelineStatus(connector_id, model_id, model_state, pipeline_id, pipeline_model_id, probe_scores, problems)


def uninstall_rerank_pipeline(
    client: OpenSearch, *, name: str = DEFAULT_NAME, pipeline_id: str | None = None
) -> dict[str, list[str]]:
    """Deletes the pipeline, then the models (undeployed first), their group and the connectors named ``name``.

    The trusted-endpoint cluster setting stays: other connectors may rely on it. Returns what was deleted,
    per kind (``pipelines``, ``models``, ``model_groups``, ``connectors``); running it again deletes nothing.
    """
    pipeline_id = pipeline_id or name
    deleted: dict[str, list[str]] = {"pipelines": [], "models": [], "model_groups": [], "connectors": []}
    if _delete(client, f"/_search/pipeline/{pipeline_id}", what=f"delete search pipeline {pipeline_id!r}"):
        deleted["pipelines"].append(pipeline_id)
    for model in _search(client, "models", name):
        _remove_model(client, model["_id"])
        deleted["models"].append(str(model["_id"]))
    for group in _search(client, "model_groups", name):
        _delete(client, f"{_ML}/model_groups/{group['_id']}", what=f"delete model group {group['_id']}")
        deleted["model_groups"].append(str(group["_id"]))
    for connector in _search(client, "connectors", name):
        _delete(client, f"{_ML}/connectors/{connector['_id']}", what=f"delete connector {connector['_id']}")
        deleted["connectors"].append(str(connector["_id"]))
    return deleted


# -- command line --------------------------------------------------------------------------------------

ClientFactory = Callable[[argparse.Namespace], "OpenSearch"]


def _default_client(args: argparse.Namespace) -> OpenSearch:
    from lychee_rerank.core.extras import require

    module = require("opensearchpy", "opensearch")
    options: dict[str, Any] = {}
    if args.os_user:
        options["http_auth"] = (args.os_user, args.os_password or "")
    if args.insecure:
        options["verify_certs"] = False
        options["ssl_show_warn"] = False
    client: OpenSearch = module.OpenSearch(args.os_url, **options)
    return client


def _install_command(args: argparse.Namespace) -> int:
    result = install_rerank_pipeline(
        args.client_factory(args),
        args.rerank_url,
        document_fields=args.document_field or ["text"],
        name=args.name,
        pipeline_id=args.pipeline_id,
        api_key=args.api_key,
        multimodal=args.multimodal,
        allow_private_ip=args.allow_private_ip,
        replace=args.replace,
    )
    # Never print the API key: only ids and what happened.
    for part, action in result.actions.items():
        print(f"{part}: {action}")
    print(f"connector_id: {result.connector_id}")
    print(f"model_id: {result.model_id}")
    print(f"search with: ?search_pipeline={result.pipeline_id} and ext.rerank.query_context.query_text")
    return 0


def _check_command(args: argparse.Namespace) -> int:
    status = check_rerank_pipeline(
        args.client_factory(args), name=args.name, pipeline_id=args.pipeline_id, probe=not args.no_probe
    )
    if args.json:
        print(json.dumps({**status.__dict__, "ok": status.ok}, indent=2))
    else:
        print(f"{'ok' if status.ok else 'NOT OK'}: search pipeline {status.pipeline_id!r}")
        print(f"  connector: {status.connector_id}  model: {status.model_id} ({status.model_state})")
        if status.probe_scores is not None:
            print(f"  probe scores: {', '.join(f'{score:.4f}' for score in status.probe_scores)}")
        for problem in status.problems:
            print(f"  problem: {problem}")
    return 0 if status.ok else 1


def _uninstall_command(args: argparse.Namespace) -> int:
    deleted = uninstall_rerank_pipeline(args.client_factory(args), name=args.name, pipeline_id=args.pipeline_id)
    for kind, ids in deleted.items():
        print(f"deleted {kind}: {', '.join(ids) if ids else 'none'}")
    return 0


def register(subparsers: Any, *, client_factory: ClientFactory | None = None) -> None:
    """Adds ``lychee-rerank opensearch {install,check,uninstall}``.

    Args:
        subparsers: The ``add_subparsers()`` object of the ``lychee-rerank`` parser.
        client_factory: Builds the client from the parsed arguments; tests pass one that returns a client
            over a fake connection. By default an ``OpenSearch(--os-url)``.
    """
    parser = subparsers.add_parser(
        "opensearch",
        help="install the OpenSearch connector, model and rerank search pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="opensearch_command", required=True)

    def common(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--os-url",
            default=os.environ.get("OPENSEARCH_URL", "http://localhost:9200"),
            help="the cluster's URL (default: $OPENSEARCH_URL or http://localhost:9200)",
        )
        command.add_argument("--os-user", default=os.environ.get("OPENSEARCH_USER"), help="basic-auth user")
        command.add_argument(
            "--os-password", default=os.environ.get("OPENSEARCH_PASSWORD"), help="(default: $OPENSEARCH_PASSWORD)"
        )
        command.add_argument("--insecure", action="store_true", help="do not verify the cluster's TLS certificate")
        command.add_argument("--name", default=DEFAULT_NAME, help="the connector's and model's name")
        command.add_argument("--pipeline-id", help="the search pipeline's id (default: --name)")
        command.set_defaults(client_factory=client_factory or _default_client)

    install = commands.add_parser("install", help="create or update connector, model and pipeline (idempotent)")
    common(install)
    install.add_argument("--rerank-url", required=True, help="the service's URL as the cluster reaches it")
    install.add_argument(
        "--document-field",
        action="append",
        help="a _source field the service scores (repeat; default: text)",
    )
    install.add_argument(
        "--api-key",
        default=os.environ.get("LYCHEE_RERANK_API_KEY"),
        help="the service's API key, stored as an encrypted connector credential (default: $LYCHEE_RERANK_API_KEY)",
    )
    install.add_argument(
        "--multimodal", action="store_true", help="make the service parse {text, image} JSON-string documents"
    )
    install.add_argument(
        "--allow-private-ip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="set plugins.ml_commons.connector.private_ip_enabled (default: when the URL's host looks private)",
    )
    install.add_argument("--replace", action="store_true", help="recreate connector and model even if identical")
    install.set_defaults(handler=_install_command)

    check = commands.add_parser("check", help="look every part up and rerank two test documents")
    common(check)
    check.add_argument("--no-probe", action="store_true", help="only look the parts up")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(handler=_check_command)

    uninstall = commands.add_parser("uninstall", help="delete the pipeline, the model and the connector")
    common(uninstall)
    uninstall.set_defaults(handler=_uninstall_command)
