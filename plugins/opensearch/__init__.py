"""OpenSearch side of lychee-rerank: an ml-commons connector, a remote model and a rerank search pipeline.

OpenSearch 2.12+ reranks search results with the ``rerank`` response processor, which calls a
text-similarity model. ml-commons reaches a model over HTTP through a connector; its built-in Cohere
rerank functions (``connector.pre_process.cohere.rerank`` / ``connector.post_process.cohere.rerank``)
speak the shape the service's ``/v1/rerank`` answers. ``install_rerank_pipeline`` sets up all
of it, idempotently::

    from opensearchpy import OpenSearch
    from lychee_rerank.plugins.opensearch import install_rerank_pipeline, rerank_search_body

    client = OpenSearch("http://localhost:9200")
    installed = install_rerank_pipeline(client, "http://rerank:8000", document_fields=["text"])
    client.search(index="docs", body=rerank_search_body({"match": {"text": "red shoes"}}, query_text="red shoes"),
                  params={"search_pipeline": installed.pipeline_id})

Images travel through OpenSearch only as strings: store ``{"text": ..., "image": ...}`` as a JSON string in a
document field, list that field alone in ``document_fields`` and install with ``multimodal=True``: the rerank
processor joins several fields with no separator, so a JSON field next to another is no longer JSON.
``install_rerank_pipeline`` ends with a test rerank and a real search through the pipeline and raises
:class:`InstallCheckError` when the cluster cannot score through the service.

The same is on the command line: ``lychee-rerank opensearch install --os-url ... --rerank-url ...``, ``check``
and ``uninstall``.
"""

from __future__ import annotations

from lychee_rerank.plugins.opensearch.bodies import (
    DEFAULT_NAME,
    MINIMUM_VERSION,
    POST_PROCESS_FUNCTION,
    PRE_PROCESS_FUNCTION,
    PRIVATE_IP_SETTING,
    REQUEST_BODY,
    TRUSTED_ENDPOINTS_SETTING,
    connector_body,
    document_fields_problem,
    ingest_pipeline_body,
    joined_fields_warning,
    model_body,
    model_group_body,
    needs_private_ip,
    pipeline_body,
    rerank_search_body,
    trusted_endpoint_regex,
)
from lychee_rerank.plugins.opensearch.cluster import (
    InstallCheckError,
    InstallResult,
    PipelineStatus,
    check_rerank_pipeline,
    cluster_version,
    install_cluster_settings,
    install_rerank_pipeline,
    require_rerank_support,
    uninstall_rerank_pipeline,
)
from lychee_rerank.plugins.opensearch.network import PRIVATE_IP_MINIMUM_VERSION, check_host, is_private_address

__all__ = [
    "DEFAULT_NAME",
    "MINIMUM_VERSION",
    "POST_PROCESS_FUNCTION",
    "PRE_PROCESS_FUNCTION",
    "PRIVATE_IP_MINIMUM_VERSION",
    "PRIVATE_IP_SETTING",
    "REQUEST_BODY",
    "TRUSTED_ENDPOINTS_SETTING",
    "InstallCheckError",
    "InstallResult",
    "PipelineStatus",
    "check_host",
    "check_rerank_pipeline",
    "cluster_version",
    "connector_body",
    "document_fields_problem",
    "ingest_pipeline_body",
    "install_cluster_settings",
    "install_rerank_pipeline",
    "is_private_address",
    "joined_fields_warning",
    "model_body",
    "model_group_body",
    "needs_private_ip",
    "pipeline_body",
    "require_rerank_support",
    "rerank_search_body",
    "trusted_endpoint_regex",
    "uninstall_rerank_pipeline",
]
