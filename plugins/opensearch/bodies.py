"""The request bodies OpenSearch is sent: connector, model group, model, search pipeline, search.

ml-commons reaches a model over HTTP through a connector; its built-in Cohere rerank functions
(``connector.pre_process.cohere.rerank`` / ``connector.post_process.cohere.rerank``) speak the shape the
service's ``/v1/rerank`` answers. Pure functions: nothing here talks to a cluster.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from lychee_rerank.core.errors import LycheeError
from lychee_rerank.core.wire import JSON_DOCUMENTS_HEADER
from lychee_rerank.plugins._common import rerank_endpoint_url

DEFAULT_NAME = "lychee-rerank"
"""The connector's and the model's name and the search pipeline's id unless told otherwise."""

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

DESCRIPTION = "Lychee-Rerank-MM through the lychee-rerank service (installed by lychee-rerank)"


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
        "description": DESCRIPTION,
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
    return {"name": name, "description": DESCRIPTION}


def model_body(connector_id: str, model_group_id: str, *, name: str = DEFAULT_NAME) -> dict[str, Any]:
    """The body of ``POST /_plugins/_ml/models/_register`` for the remote model behind ``connector_id``."""
    return {
        "name": name,
        "function_name": "remote",
        "model_group_id": model_group_id,
        "description": DESCRIPTION,
        "connector_id": connector_id,
    }


def pipeline_body(model_id: str, document_fields: Sequence[str]) -> dict[str, Any]:
    """The body of ``PUT /_search/pipeline/<id>``: one ``rerank`` response processor using the model."""
    if not document_fields:
        raise LycheeError("give at least one document field for the rerank processor to score")
    return {
        "description": DESCRIPTION,
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
