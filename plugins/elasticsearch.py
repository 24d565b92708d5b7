"""Elasticsearch side of lychee-rerank: an inference endpoint that calls the service's ``/v1/rerank``.

Elasticsearch 8.19+ and 9.1+ ship a ``custom`` inference service that sends any JSON template to any URL
and reads the answer back with JSONPath. One such endpoint, with task type ``rerank``, lets the
``text_similarity_reranker`` retriever rank a first-stage window with Lychee-Rerank-MM::

    from elasticsearch import Elasticsearch
    from lychee_rerank.plugins.elasticsearch import install_inference_endpoint, text_similarity_reranker_body

    es = Elasticsearch("http://localhost:9200")
    install_inference_endpoint(es, "http://rerank:8000")  # the URL as Elasticsearch sees the service
    es.search(index="docs", **text_similarity_reranker_body({"match": {"text": "red shoes"}},
                                                            field="text", inference_text="red shoes"))

Images travel through Elasticsearch only as strings: store ``{"text": ..., "image": ...}`` as a JSON string
in the ``field`` and install with ``multimodal=True``, which makes the service parse such strings.

The same is on the command line: ``lychee-rerank elasticsearch install-endpoint --es-url ... --rerank-url ...``,
``check-endpoint`` and ``delete-endpoint``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from lychee_rerank.core.errors import LycheeError
from lychee_rerank.core.wire import JSON_DOCUMENTS_HEADER
from lychee_rerank.plugins._common import (
    PROBE_DOCUMENTS,
    PROBE_QUERY,
    add_check_arguments,
    add_service_arguments,
    parse_version,
    print_check,
    rerank_endpoint_url,
    service_api_key,
)

if TYPE_CHECKING:  # the client is an optional extra: import it only where it is used
    from elasticsearch import Elasticsearch

DEFAULT_INFERENCE_ID = "lychee-rerank"
"""The inference endpoint's id unless told otherwise."""

MINIMUM_VERSION = "8.19 (or 9.1 on the 9.x line)"
"""The oldest Elasticsearch with the ``custom`` inference service (it is missing from 9.0)."""

# ${query} and ${input} are substituted as JSON (a quoted string and an array of strings). There is no
# ${top_n}: the text_similarity_reranker retriever and Elasticsearch's own validation call at creation
# send no top_n, and a placeholder left unfilled fails the request; the service then returns every
# document, which is what the retriever needs (it scores the whole window).
REQUEST_TEMPLATE = '{"query": ${query}, "documents": ${input}}'
JSON_PARSER = {
    "relevance_score": "$.results[*].relevance_score",
    "reranked_index": "$.results[*].index",
}

Action = Literal["created", "unchanged", "replaced"]

DESCRIPTION = """\
Creates an Elasticsearch inference endpoint (the 'custom' service, task type rerank) that calls the
lychee-rerank service's /v1/rerank, for the text_similarity_reranker retriever. Needs Elasticsearch 8.19+
or 9.1+ with a license that allows it (e.g. the trial). install-endpoint can be re-run: an identical
endpoint is left alone.
"""


def inference_endpoint_config(
    rerank_url: str, *, api_key: str | None = None, multimodal: bool = False
) -> dict[str, Any]:
    """The body of ``PUT _inference/rerank/<id>`` for the ``custom`` service pointing at the service.

    Args:
        rerank_url: The service's base URL (or its ``/v1/rerank`` URL) as Elasticsearch reaches it.
        api_key: The service's API key; stored by Elasticsearch as a secret and sent as a Bearer token.
        multimodal: Make the service parse string documents that hold ``{"text", "image"}`` JSON.

    Example:
        >>> inference_endpoint_config("http://rerank:8000")["service_settings"]["url"]
        'http://rerank:8000/v1/rerank'
    """
    headers = {"Content-Type": "application/json"}
    if api_key:
        # ${api_key} is filled from secret_parameters, which Elasticsearch never returns.
        headers["Authorization"] = "Bearer ${api_key}"
    if multimodal:
        headers[JSON_DOCUMENTS_HEADER] = "true"
    service_settings: dict[str, Any] = {
        "url": rerank_endpoint_url(rerank_url),
        "headers": headers,
        "request": REQUEST_TEMPLATE,
        "response": {"json_parser": dict(JSON_PARSER)},
    }
    if api_key:
        service_settings["secret_parameters"] = {"api_key": api_key}
    return {"service": "custom", "service_settings": service_settings}


@dataclass(frozen=True)
class InstallResult:
    """What ``install_inference_endpoint`` did.

    Attributes:
        inference_id: The endpoint's id, for ``text_similarity_reranker``'s ``inference_id``.
        action: ``created``, ``unchanged`` (an identical endpoint was there) or ``replaced``.
    """

    inference_id: str
    action: Action


@dataclass(frozen=True)
class EndpointStatus:
    """What ``check_inference_endpoint`` found.

    Attributes:
        inference_id: The endpoint looked at.
        exists: Whether Elasticsearch has it.
        url: The URL it calls, when it exists.
        multimodal: Whether it asks the service to parse JSON-string documents.
        probe_scores: Scores of a two-document test request through Elasticsearch, when probed and it worked.
        problems: What is wrong, one sentence each; empty when all is well.
    """

    inference_id: str
    exists: bool
    url: str | None = None
    multimodal: bool = False
    probe_scores: list[float] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the endpoint exists and nothing is wrong with it."""
        return self.exists and not self.problems


def cluster_version(client: Elasticsearch) -> tuple[int, int]:
    """The cluster's (major, minor) version from ``GET /``."""
    return parse_version(str(client.info()["version"]["number"]), "Elasticsearch")


def require_custom_service(client: Elasticsearch) -> tuple[int, int]:
    """Refuses clusters without the ``custom`` inference service; returns the (major, minor) version."""
    major, minor = cluster_version(client)
    if (major, minor) < (8, 19) or (major, minor) == (9, 0):
        raise LycheeError(
            f"Elasticsearch {major}.{minor} has no 'custom' inference service; "
            f"it needs Elasticsearch {MINIMUM_VERSION} or later (or use the client-side adapter)"
        )
    return major, minor


def _get_endpoint(client: Elasticsearch, inference_id: str) -> dict[str, Any] | None:
    from elasticsearch import NotFoundError

    try:
        response = client.inference.get(task_type="rerank", inference_id=inference_id)
    except NotFoundError:
        return None
    endpoints = response.body.get("endpoints") or []
    return dict(endpoints[0]) if endpoints else None


def _same_settings(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether the stored endpoint matches ``wanted`` in everything Elasticsearch returns (not secrets)."""
    if existing.get("service") != wanted["service"] or existing.get("task_type", "rerank") != "rerank":
        return False
    have = existing.get("service_settings") or {}
    want = wanted["service_settings"]
    return all(have.get(key) == want[key] for key in ("url", "headers", "request", "response"))


def _api_error(action: str, error: Exception) -> LycheeError:
    body = getattr(error, "body", None)
    reason = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        reason = body["error"].get("reason")
    return LycheeError(f"Elasticsearch refused to {action}: {reason or error}")


def install_inference_endpoint(
    client: Elasticsearch,
    rerank_url: str,
    *,
    inference_id: str = DEFAULT_INFERENCE_ID,
    api_key: str | None = None,
    multimodal: bool = False,
    replace: bool = False,
) -> InstallResult:
    """Creates the ``rerank`` inference endpoint, or leaves an identical one alone.

    Elasticsearch calls the service once while creating the endpoint, so the service must be up and
    reachable from the cluster. An endpoint with the same id but other settings is deleted and created
    again; so is an identical one with ``replace=True``, the way to rotate ``api_key`` (Elasticsearch
    never returns secrets, so a changed key alone cannot be seen).

    Args:
        client: An ``elasticsearch.Elasticsearch`` client.
        rerank_url: The service's base URL as the cluster reaches it, e.g. ``http://rerank:8000``.
        inference_id: The endpoint's id.
        api_key: The service's API key, if it has one.
        multimodal: Make the service parse JSON-string ``{"text", "image"}`` documents.
        replace: Recreate the endpoint even when it looks identical.

    Raises:
        LycheeError: The cluster is too old, or Elasticsearch refused the endpoint (its reason is quoted).
    """
    from elasticsearch import ApiError

    require_custom_service(client)
    config = inference_endpoint_config(rerank_url, api_key=api_key, multimodal=multimodal)
    existing = _get_endpoint(client, inference_id)
    action: Action = "created"
    if existing is not None:
        if _same_settings(existing, config) and not replace:
            return InstallResult(inference_id, "unchanged")
        delete_inference_endpoint(client, inference_id=inference_id)
        action = "replaced"
    try:
        client.inference.put(task_type="rerank", inference_id=inference_id, inference_config=config)
    except ApiError as error:
        raise _api_error(f"create the inference endpoint {inference_id!r}", error) from None
    return InstallResult(inference_id, action)


def check_inference_endpoint(
    client: Elasticsearch, *, inference_id: str = DEFAULT_INFERENCE_ID, probe: bool = True
) -> EndpointStatus:
    """Looks the endpoint up and, with ``probe``, reranks two test documents through it.

    Never raises for a missing or broken endpoint: the answer says what is wrong in ``problems``.
    """
    from elasticsearch import ApiError

    existing = _get_endpoint(client, inference_id)
    if existing is None:
        return EndpointStatus(inference_id, exists=False, problems=[f"no rerank endpoint {inference_id!r}"])
    settings = existing.get("service_settings") or {}
    headers = settings.get("headers") or {}
    problems = []
    if existing.get("service") != "custom":
        problems.append(f"the endpoint uses the {existing.get('service')!r} service, not 'custom'")
    probe_scores = None
    if probe:
        try:
            response = client.inference.rerank(inference_id=inference_id, query=PROBE_QUERY, input=PROBE_DOCUMENTS)
            ranked = sorted(response.body.get("rerank") or [], key=lambda item: int(item["index"]))
            probe_scores = [float(item["relevance_score"]) for item in ranked]
            if len(probe_scores) != len(PROBE_DOCUMENTS):
                problems.append(f"the probe got {len(probe_scores)} scores for {len(PROBE_DOCUMENTS)} documents")
        except ApiError as error:
            problems.append(str(_api_error("run a test rerank", error)))
    return EndpointStatus(
        inference_id,
        exists=True,
        url=settings.get("url"),
        multimodal=str(headers.get(JSON_DOCUMENTS_HEADER, "")).lower() == "true",
        probe_scores=probe_scores,
        problems=problems,
    )


def delete_inference_endpoint(client: Elasticsearch, *, inference_id: str = DEFAULT_INFERENCE_ID) -> bool:
    """Deletes the endpoint; ``False`` when there was none."""
    from elasticsearch import ApiError, NotFoundError

    try:
        client.inference.delete(task_type="rerank", inference_id=inference_id)
    except NotFoundError:
        return False
    except ApiError as error:
        raise _api_error(f"delete the inference endpoint {inference_id!r}", error) from None
    return True


def text_similarity_reranker_body(
    query: Mapping[str, Any],
    *,
    field: str,
    inference_text: str,
    inference_id: str = DEFAULT_INFERENCE_ID,
    rank_window_size: int = 50,
    min_probability: float | None = None,
) -> dict[str, Any]:
    """Search keyword arguments whose ``retriever`` reranks the first ``rank_window_size`` hits of ``query``.

    Pass them to ``client.search(index=..., **body)`` or send them as the JSON body of ``_search``.
    ``field`` holds the text (or the ``{"text", "image"}`` JSON string) the service scores.

    Scores come back shifted: Elasticsearch turns each score ``s`` into ``max(s, 0) + min(exp(s), 1)``, so the
    service's probability ``p`` becomes ``1 + p``. The retriever's ``min_score`` is compared with the raw
    ``p`` *before* that shift (``TextSimilarityRankFeaturePhaseRankCoordinatorContext.preprocess`` in
    elastic/elasticsearch), so a threshold is given in the service's own [0, 1] units: ``min_probability=0.5``
    keeps the hits the service scored 0.5 or more, which come back with scores of 1.5 or more.
    (``min_score: 1.5`` sent to Elasticsearch would drop every hit.)

    Args:
        query: The first-stage query.
        field: The ``_source`` field sent to the service.
        inference_text: The query text the service scores against.
        inference_id: The inference endpoint (``install_inference_endpoint``).
        rank_window_size: How many first-stage hits are reranked.
        min_probability: Drop hits the service scored below this probability, in [0, 1]; sent as the
            retriever's ``min_score``.

    Raises:
        LycheeError: ``rank_window_size`` below 1, or ``min_probability`` outside [0, 1].

    Example:
        >>> body = text_similarity_reranker_body({"match": {"text": "shoes"}}, field="text", inference_text="shoes")
        >>> sorted(body["retriever"]["text_similarity_reranker"])
        ['field', 'inference_id', 'inference_text', 'rank_window_size', 'retriever']
    """
    if rank_window_size < 1:
        raise LycheeError(f"rank_window_size must be at least 1, got {rank_window_size}")
    reranker: dict[str, Any] = {
        "retriever": {"standard": {"query": dict(query)}},
        "field": field,
        "inference_id": inference_id,
        "inference_text": inference_text,
        "rank_window_size": rank_window_size,
    }
    if min_probability is not None:
        if isinstance(min_probability, bool) or not 0.0 <= min_probability <= 1.0:
            raise LycheeError(
                f"min_probability is the service's probability, in [0, 1], got {min_probability!r}; Elasticsearch "
                "compares min_score with the raw probability p, before it shifts scores to 1 + p "
                "(for hits returned with scores of 1.5 or more, give 0.5)"
            )
        reranker["min_score"] = float(min_probability)
    return {"retriever": {"text_similarity_reranker": reranker}}


# -- command line --------------------------------------------------------------------------------------

ClientFactory = Callable[[argparse.Namespace], "Elasticsearch"]


def _default_client(args: argparse.Namespace) -> Elasticsearch:
    from lychee_rerank.core.extras import require

    module = require("elasticsearch", "elasticsearch")
    # The transport logs every retry with a traceback; the command ends with one clear line instead.
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)
    options: dict[str, Any] = {}
    if args.es_api_key:
        options["api_key"] = args.es_api_key
    client: Elasticsearch = module.Elasticsearch(args.es_url, **options)
    return client


def _reachable(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turns "cannot connect" into one clear line instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        from elastic_transport import ApiError, TransportError

        try:
            return handler(args)
        except TransportError as error:
            raise LycheeError(f"cannot reach Elasticsearch at {args.es_url}: {error}") from None
        except ApiError as error:
            raise _api_error(f"answer {args.es_url}", error) from None

    return run


def _install_command(args: argparse.Namespace) -> int:
    client = args.client_factory(args)
    result = install_inference_endpoint(
        client,
        args.rerank_url,
        inference_id=args.inference_id,
        api_key=service_api_key(args.api_key),
        multimodal=args.multimodal,
        replace=args.replace,
    )
    # Never print the API key: only the id, the URL and what happened.
    print(f"{result.action}: inference endpoint {result.inference_id!r} -> {rerank_endpoint_url(args.rerank_url)}")
    return 0


def _check_command(args: argparse.Namespace) -> int:
    status = check_inference_endpoint(
        args.client_factory(args), inference_id=args.inference_id, probe=not args.no_probe
    )
    return print_check(
        status,
        title=f"inference endpoint {status.inference_id!r}",
        lines=[f"url: {status.url}  multimodal: {status.multimodal}"] if status.exists else [],
        probe_scores=status.probe_scores,
        as_json=args.json,
    )


def _delete_command(args: argparse.Namespace) -> int:
    deleted = delete_inference_endpoint(args.client_factory(args), inference_id=args.inference_id)
    print(f"{'deleted' if deleted else 'absent'}: inference endpoint {args.inference_id!r}")
    return 0


def register(subparsers: Any, *, client_factory: ClientFactory | None = None) -> None:
    """Adds ``lychee-rerank elasticsearch {install-endpoint,check-endpoint,delete-endpoint}``.

    Args:
        subparsers: The ``add_subparsers()`` object of the ``lychee-rerank`` parser.
        client_factory: Builds the client from the parsed arguments; tests pass one that returns a client
            over a fake transport. By default an ``Elasticsearch(--es-url)``.
    """
    parser = subparsers.add_parser(
        "elasticsearch",
        help="install the Elasticsearch inference endpoint that reranks with the service",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="elasticsearch_command", required=True)

    def common(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--es-url",
            default=os.environ.get("ELASTICSEARCH_URL", "http://localhost:9200"),
            help="the cluster's URL (default: $ELASTICSEARCH_URL or http://localhost:9200)",
        )
        command.add_argument(
            "--es-api-key",
            default=os.environ.get("ELASTICSEARCH_API_KEY"),
            help="an Elasticsearch API key (default: $ELASTICSEARCH_API_KEY)",
        )
        command.add_argument("--inference-id", default=DEFAULT_INFERENCE_ID, help="the endpoint's id")
        command.set_defaults(client_factory=client_factory or _default_client)

    install = commands.add_parser("install-endpoint", help="create the rerank inference endpoint (idempotent)")
    common(install)
    add_service_arguments(install, engine="Elasticsearch", stored_as="an Elasticsearch secret")
    install.set_defaults(handler=_reachable(_install_command))

    check = commands.add_parser("check-endpoint", help="look the endpoint up and rerank two test documents")
    common(check)
    add_check_arguments(check)
    check.set_defaults(handler=_reachable(_check_command))

    delete = commands.add_parser("delete-endpoint", help="delete the endpoint")
    common(delete)
    delete.set_defaults(handler=_reachable(_delete_command))
