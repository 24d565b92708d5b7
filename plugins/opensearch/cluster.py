"""Talking to the cluster: version and plugin checks, cluster settings, and the install, check and uninstall
of the connector, model and search pipeline (idempotent: each part is looked up before it is created)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lychee_rerank.core.errors import LycheeError
from lychee_rerank.core.wire import JSON_DOCUMENTS_HEADER
from lychee_rerank.plugins._common import PROBE_DOCUMENTS, PROBE_QUERY, parse_version, rerank_endpoint_url
from lychee_rerank.plugins.opensearch.bodies import (
    DEFAULT_NAME,
    MINIMUM_VERSION,
    PRIVATE_IP_SETTING,
    REQUIRED_PLUGINS,
    TRUSTED_ENDPOINTS_SETTING,
    connector_body,
    document_fields_problem,
    ingest_pipeline_body,
    joined_fields_warning,
    model_body,
    model_group_body,
    pipeline_body,
    probe_document,
    rerank_search_body,
    trusted_endpoint_regex,
)
from lychee_rerank.plugins.opensearch.network import (
    PRIVATE_IP_MINIMUM_VERSION,
    PRIVATE_IP_REFUSAL,
    HostCheck,
    Resolver,
    check_host,
)

if TYPE_CHECKING:  # the client is an optional extra: import it only where it is used
    from opensearchpy import OpenSearch

_ML = "/_plugins/_ml"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstallResult:
    """What ``install_rerank_pipeline`` did.

    Attributes:
        connector_id: The ml-commons connector.
        model_id: The registered, deployed remote model.
        pipeline_id: The search pipeline to name in ``search_pipeline``.
        actions: Per part (``cluster_settings``, ``connector``, ``model``, ``deployment``, ``pipeline``, and
            ``ingest_pipeline`` when asked for), what happened: ``created``, ``updated``, ``replaced``,
            ``deployed`` or ``unchanged``.
        warnings: What works but may not do what was meant (fields glued together, a host judged by name).
        check: The final ``check_rerank_pipeline`` (predict probe and a real search), when ``verify``.
    """

    connector_id: str
    model_id: str
    pipeline_id: str
    actions: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    check: PipelineStatus | None = None


class InstallCheckError(LycheeError):
    """Everything was installed, but the final check found that the cluster cannot score through the service.

    Attributes:
        result: What the install did (``result.check.problems`` says what failed).
    """

    def __init__(self, result: InstallResult) -> None:
        problems = result.check.problems if result.check else []
        super().__init__(
            "installed, but OpenSearch cannot rerank through the service: " + "; ".join(problems or ["unknown"])
        )
        self.result = result


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
    return parse_version(str(version.get("number", "")), "OpenSearch")


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


def install_cluster_settings(
    client: OpenSearch,
    rerank_url: str,
    *,
    allow_private_ip: bool | None = None,
    resolver: Resolver | None = None,
    version: tuple[int, int] | None = None,
) -> str:
    """Adds the service to the trusted connector endpoints, and allows private IPs where its host needs it.

    The trusted list replaces, never extends, the default list, so the current list is read and the
    service's regex appended to it. ml-commons refuses a host that resolves to a private or loopback
    address unless ``plugins.ml_commons.connector.private_ip_enabled`` is true, a setting that exists from
    OpenSearch 2.15 on (see :mod:`lychee_rerank.plugins.opensearch.network`). Returns ``updated`` or
    ``unchanged``.

    Args:
        client: An ``opensearchpy.OpenSearch`` client.
        rerank_url: The service's URL as the cluster reaches it.
        allow_private_ip: Set ``private_ip_enabled`` (``True``) or never (``False``); ``None`` decides from
            what the URL's host resolves to (:func:`~lychee_rerank.plugins.opensearch.network.check_host`).
        resolver: How to resolve the host (``socket.getaddrinfo`` by default).
        version: The cluster's (major, minor); read from the cluster when not given.

    Raises:
        LycheeError: The host is private (or ``allow_private_ip`` is true) and the cluster is older than 2.15,
            which refuses private addresses with no setting to allow them.
    """
    host = check_host(rerank_url, resolver)
    private = host.private if allow_private_ip is None else allow_private_ip
    if private:
        version = version or cluster_version(client)
        if version < PRIVATE_IP_MINIMUM_VERSION:
            raise LycheeError(_old_cluster_refuses_private(host, version, asked=allow_private_ip is True))
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
    if private and str(_flat_setting(current, PRIVATE_IP_SETTING)).lower() != "true":
        wanted[PRIVATE_IP_SETTING] = True
    if not wanted:
        return "unchanged"
    _request(client, "PUT", "/_cluster/settings", body={"persistent": wanted}, what="update the cluster settings")
    return "updated"


def _old_cluster_refuses_private(host: HostCheck, version: tuple[int, int], *, asked: bool) -> str:
    why = "--private-ip was given" if asked else host.describe()
    return (
        f"{why}, but OpenSearch {version[0]}.{version[1]} refuses connectors to private or loopback addresses "
        f"and has no setting to allow them (plugins.ml_commons.connector.private_ip_enabled came with "
        f"{PRIVATE_IP_MINIMUM_VERSION[0]}.{PRIVATE_IP_MINIMUM_VERSION[1]}): serve the service on an address the "
        "cluster resolves as public, or upgrade OpenSearch; --no-private-ip installs anyway when the cluster "
        "resolves the host differently from here"
    )


def private_ip_hint(reason: str) -> str:
    """``reason`` with the fix appended when it is ml-commons' private-address refusal."""
    if PRIVATE_IP_REFUSAL not in reason:
        return reason
    return (
        f"{reason} — the cluster resolves the service's host to a private or loopback address: re-run install "
        f"with --private-ip (sets {PRIVATE_IP_SETTING}, OpenSearch "
        f"{PRIVATE_IP_MINIMUM_VERSION[0]}.{PRIVATE_IP_MINIMUM_VERSION[1]}+), or give a --rerank-url the cluster "
        "resolves to a public address"
    )


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
    combine_fields_into: str | None = None,
    ingest_pipeline_id: str | None = None,
    verify: bool = True,
    resolver: Resolver | None = None,
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
        document_fields: The ``_source`` fields the service scores (exactly one ``{"text", "image"}``
            JSON-string field with ``multimodal``). The rerank processor joins several with no separator.
        name: The connector's and the model's name.
        pipeline_id: The search pipeline's id; ``name`` by default.
        api_key: The service's API key, if it has one.
        multimodal: Make the service parse JSON-string ``{"text", "image"}`` documents.
        allow_private_ip: See ``install_cluster_settings``.
        replace: Recreate the connector and model even when they look identical.
        combine_fields_into: Also create an ingest pipeline that writes this field from ``document_fields``
            (one per line), and rerank on it alone; index with ``?pipeline=`` (or make it the index's
            ``index.default_pipeline``) and update existing documents with ``_update_by_query?pipeline=``.
        ingest_pipeline_id: That ingest pipeline's id; ``<name>-combine`` by default.
        verify: End with :func:`check_rerank_pipeline` (a test rerank through the model and a real search
            through the pipeline) and raise :class:`InstallCheckError` when it fails.
        resolver: How the service's host is resolved (``socket.getaddrinfo`` by default).
        deploy_timeout_s: How long to wait for the model's deployment.
        poll_interval_s: How often to look at the deployment task.

    Raises:
        LycheeError: The cluster is too old or lacks a plugin, the document fields cannot work, or OpenSearch
            refused a step (its reason quoted).
        InstallCheckError: Everything was installed but the final check failed (``verify``).
    """
    version = require_rerank_support(client)
    pipeline_id = pipeline_id or name
    source_fields = list(document_fields)
    problem = document_fields_problem(source_fields, multimodal=multimodal)
    if problem:
        raise LycheeError(problem)
    warnings: list[str] = []
    ingest_body = None
    if combine_fields_into is not None:
        if multimodal:
            raise LycheeError(
                "--combine-fields-into writes text; a multimodal JSON field must be written by your indexer"
            )
        ingest_body = ingest_pipeline_body(source_fields, combine_fields_into)
        wanted_pipeline_fields = [combine_fields_into]
    else:
        wanted_pipeline_fields = source_fields
        warning = joined_fields_warning(source_fields)
        if warning:
            warnings.append(warning)
    host = check_host(rerank_url, resolver)
    if allow_private_ip is None and not host.addresses:
        warnings.append(
            f"{host.describe()}; the final check shows what the cluster makes of it (--private-ip/--no-private-ip "
            "decide instead)"
        )
    actions = {
        "cluster_settings": install_cluster_settings(
            client,
            rerank_url,
            allow_private_ip=allow_private_ip,
            resolver=lambda _h, _p: host.addresses,
            version=version,
        )
    }
    if ingest_body is not None:
        actions["ingest_pipeline"] = _put_ingest_pipeline(client, ingest_pipeline_id or f"{name}-combine", ingest_body)
    for warning in warnings:
        logger.warning("%s", warning)

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
    result = InstallResult(connector_id, model_id, pipeline_id, actions, warnings)
    if not verify:
        return result
    status = check_rerank_pipeline(client, name=name, pipeline_id=pipeline_id)
    result = InstallResult(connector_id, model_id, pipeline_id, actions, warnings, status)
    if not status.ok:
        raise InstallCheckError(result)
    return result


def _put_ingest_pipeline(client: OpenSearch, ingest_pipeline_id: str, body: Mapping[str, Any]) -> str:
    from opensearchpy import TransportError

    try:
        existing = client.transport.perform_request("GET", f"/_ingest/pipeline/{ingest_pipeline_id}")
    except TransportError as error:
        if not _is_missing(error):
            raise _failure(error, f"read ingest pipeline {ingest_pipeline_id!r}") from None
        existing = None
    current = (existing or {}).get(ingest_pipeline_id)
    if current is not None and current.get("processors") == body["processors"]:
        return "unchanged"
    _request(client, "PUT", f"/_ingest/pipeline/{ingest_pipeline_id}", body=body, what="create the ingest pipeline")
    return "created" if current is None else "updated"


def check_rerank_pipeline(
    client: OpenSearch,
    *,
    name: str = DEFAULT_NAME,
    pipeline_id: str | None = None,
    probe: bool = True,
    search: bool = True,
) -> PipelineStatus:
    """Looks every part up and, with ``probe``, scores two test documents through the model; with ``search``
    too, runs a real search through the pipeline on a temporary index (created, searched, deleted).

    Never raises for a missing or broken part: the answer says what is wrong in ``problems``. A refusal of
    the service's host as private (ml-commons resolves it from the cluster) comes with the fix.
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
                body={"query_text": PROBE_QUERY, "text_docs": PROBE_DOCUMENTS},
                what="run a test rerank",
            )
            outputs = ((answer.get("inference_results") or [{}])[0]).get("output") or []
            probe_scores = [float(output["data"][0]) for output in outputs]
            if len(probe_scores) != len(PROBE_DOCUMENTS):
                problems.append(f"the probe got {len(probe_scores)} scores for {len(PROBE_DOCUMENTS)} documents")
        except LycheeError as error:
            problems.append(private_ip_hint(str(error)))
    if probe and search and pipeline is not None and not problems:
        multimodal = _connector_is_multimodal(connectors[0]) if connectors else False
        problem = _search_probe(client, pipeline_id, _pipeline_fields(pipeline), multimodal=multimodal)
        if problem:
            problems.append(problem)
    return PipelineStatus(connector_id, model_id, model_state, pipeline_id, pipeline_model_id, probe_scores, problems)


def _connector_is_multimodal(connector: Mapping[str, Any]) -> bool:
    actions = connector.get("actions") or [{}]
    headers = actions[0].get("headers") or {}
    return str(headers.get(JSON_DOCUMENTS_HEADER, "")).lower() == "true"


def _pipeline_fields(pipeline: Mapping[str, Any]) -> list[str]:
    for processor in pipeline.get("response_processors") or []:
        rerank = processor.get("rerank") if isinstance(processor, dict) else None
        if isinstance(rerank, dict):
            return list((rerank.get("context") or {}).get("document_fields") or [])
    return []


def _search_probe(client: OpenSearch, pipeline_id: str, fields: Sequence[str], *, multimodal: bool) -> str | None:
    """Indexes the probe documents in a temporary index, searches it through the pipeline; what failed, if any."""
    if not fields:
        return f"search pipeline {pipeline_id!r} names no document_fields"
    index = f"lychee-rerank-probe-{uuid.uuid4().hex[:12]}"
    settings = {"settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0}}}
    try:
        _request(client, "PUT", f"/{index}", body=settings, what="create a temporary index for the test search")
        for number, text in enumerate(PROBE_DOCUMENTS):
            _request(
                client,
                "PUT",
                f"/{index}/_doc/{number}",
                body=probe_document(fields, text, multimodal=multimodal),
                params={"refresh": "true"},
                what="index a test document",
            )
        answer = _request(
            client,
            "POST",
            f"/{index}/_search",
            body=rerank_search_body({"match_all": {}}, query_text=PROBE_QUERY, size=len(PROBE_DOCUMENTS)),
            params={"search_pipeline": pipeline_id},
            what=f"search through the pipeline {pipeline_id!r}",
        )
    except LycheeError as error:
        return private_ip_hint(str(error))
    finally:
        try:
            _delete(client, f"/{index}", what=f"delete the temporary index {index}")
        except LycheeError as error:
            logger.warning("%s", error)
    hits = ((answer or {}).get("hits") or {}).get("hits") or []
    scores = [hit.get("_score") for hit in hits]
    if len(scores) != len(PROBE_DOCUMENTS):
        return f"the test search through {pipeline_id!r} returned {len(scores)} hits for {len(PROBE_DOCUMENTS)}"
    if not all(isinstance(score, (int, float)) and 0.0 <= score <= 1.0 for score in scores):
        return f"the test search through {pipeline_id!r} came back without rerank scores: {scores}"
    return None


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
