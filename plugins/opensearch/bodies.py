"""The request bodies OpenSearch is sent: connector, model group, model, search pipeline, search.

ml-commons reaches a model over HTTP through a connector; its built-in Cohere rerank functions
(``connector.pre_process.cohere.rerank`` / ``connector.post_process.cohere.rerank``) speak the shape the
service's ``/v1/rerank`` answers. Pure functions: nothing here talks to a cluster.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from lychee_rerank.core.errors import LycheeError
from lychee_rerank.core.wire import JSON_DOCUMENTS_HEADER
from lychee_rerank.plugins._common import rerank_endpoint_url
from lychee_rerank.plugins.opensearch.network import Resolver, check_host

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


def needs_private_ip(rerank_url: str, resolver: Resolver | None = None) -> bool:
    """Whether ml-commons would count the service's host as private (see :mod:`.network`).

    IP literals are judged exactly; a name by what it resolves to here, or, when it does not resolve
    here, by its shape (``localhost``, single-label and internal names count as private).
    """
    return check_host(rerank_url, resolver).private


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
    """The body of ``PUT /_search/pipeline/<id>``: one ``rerank`` response processor using the model.

    The processor sends each hit's ``document_fields`` values concatenated with no separator (see
    :func:`joined_fields_warning`).
    """
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


def document_fields_problem(document_fields: Sequence[str], *, multimodal: bool) -> str | None:
    """Why these ``document_fields`` cannot work, or ``None``; several text fields are allowed (see warning).

    The rerank processor joins the fields' values with no separator (neural-search
    ``DocumentContextSourceFetcher.fetchContext`` appends them to one ``StringBuilder``), so a JSON-string
    ``{"text", "image"}`` field next to any other field is no longer JSON: the service would score it as
    text and the image would be lost.
    """
    fields = list(document_fields)
    if not fields:
        return "give at least one document field for the rerank processor to score"
    if multimodal and len(fields) > 1:
        return (
            f"with --multimodal give exactly one document field, not {fields}: the rerank processor joins "
            'document_fields with no separator, so a JSON {"text", "image"} field next to another field is '
            "no longer JSON and its image would be dropped. Write one JSON field at ingest that holds the "
            'text of all of them, e.g. {"text": title + "\\n" + body, "image": url}'
        )
    return None


def joined_fields_warning(document_fields: Sequence[str]) -> str | None:
    """The warning for several text fields: they reach the service glued together ("TitleBody")."""
    fields = list(document_fields)
    if len(fields) < 2:
        return None
    return (
        f"the rerank processor joins {', '.join(fields)} with no separator (a title 'Red dress' and a body "
        f"'Cotton' reach the service as 'Red dressCotton'); to keep them apart, write one combined field at "
        f"ingest: install with --combine-fields-into FIELD creates an ingest pipeline that does it"
    )


COMBINE_SCRIPT = """\
StringBuilder out = new StringBuilder();
for (def name : params.fields) {
  def value = ctx[name];
  if (value == null) { continue; }
  if (value instanceof List) {
    StringBuilder joined = new StringBuilder();
    for (def item : value) {
      if (joined.length() > 0) { joined.append(' '); }
      joined.append(String.valueOf(item));
    }
    value = joined.toString();
  }
  String text = String.valueOf(value);
  if (text.isEmpty()) { continue; }
  if (out.length() > 0) { out.append(params.separator); }
  out.append(text);
}
ctx[params.target] = out.toString();
"""
"""Painless for the ingest ``script`` processor: the non-empty fields, one per line, into ``target``."""


def ingest_pipeline_body(source_fields: Sequence[str], target_field: str, *, separator: str = "\n") -> dict[str, Any]:
    """The body of ``PUT /_ingest/pipeline/<id>`` writing ``target_field`` from ``source_fields`` at ingest.

    Lists are joined with spaces (as the rerank processor does), fields with ``separator``. Only top-level
    fields: the script reads ``ctx[name]``.

    Example:
        >>> ingest_pipeline_body(["title", "body"], "rerank_text")["processors"][0]["script"]["params"]
        {'fields': ['title', 'body'], 'target': 'rerank_text', 'separator': '\\n'}
    """
    fields = list(source_fields)
    if not fields:
        raise LycheeError("give the fields to combine (--document-field, repeated)")
    nested = [name for name in [*fields, target_field] if "." in name or not name]
    if nested:
        raise LycheeError(f"the combining ingest pipeline handles top-level fields only, not {nested}")
    if target_field in fields:
        raise LycheeError(f"the combined field {target_field!r} must not be one of the fields it combines")
    return {
        "description": f"{DESCRIPTION}: writes {target_field} for the rerank processor",
        "processors": [
            {
                "script": {
                    "lang": "painless",
                    "source": COMBINE_SCRIPT,
                    "params": {"fields": fields, "target": target_field, "separator": separator},
                }
            }
        ],
    }


def probe_document(document_fields: Sequence[str], text: str, *, multimodal: bool) -> dict[str, Any]:
    """A test document for the install probe: ``text`` in the first field (JSON with ``multimodal``)."""
    document: dict[str, Any] = {}
    for position, name in enumerate(document_fields):
        value = (json.dumps({"text": text}) if multimodal else text) if position == 0 else ""
        target = document
        *parents, leaf = name.split(".")
        for parent in parents:  # "meta.caption" is an object path in _source
            target = target.setdefault(parent, {})
        target[leaf] = value
    return document


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
