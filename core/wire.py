"""What travels between the service, its client and the search-engine plugins: routes, headers, variables.

Defined once here, torch-free, so ``lychee-rerank serve``, :class:`~lychee_rerank.core.remote.RemoteReranker`
and the Elasticsearch and OpenSearch plugins cannot drift apart.
"""

from __future__ import annotations

RERANK_ROUTE = "/v1/rerank"
"""Cohere v2 / Jina shaped rerank: what the client and both search-engine plugins call."""

RERANK_V2_ROUTE = "/v2/rerank"
"""The same, at the path the Cohere v2 SDK calls."""

RERANK_ANY_ROUTE = "/rerank"
"""Cohere/Jina when the body has ``documents``, Text Embeddings Inference when it has ``texts``."""

RERANK_ROUTES = (RERANK_ROUTE, RERANK_V2_ROUTE, RERANK_ANY_ROUTE)
"""Every rerank route of the service."""

BATCH_ROUTE = "/rerank_batch"
SCORE_ROUTE = "/score"
HEALTH_ROUTE = "/health"
METRICS_ROUTE = "/metrics"
DOCS_ROUTE = "/docs"
UI_ROUTE = "/ui"

JSON_DOCUMENTS_HEADER = "X-Lychee-Json-Documents"
"""Asks the service to parse string documents holding a JSON ``{"text", "image"}`` object."""

JSON_DOCUMENTS_PARAM = "json_documents"
"""The same as a query parameter (``?json_documents=true``)."""

API_KEY_ENV = "LYCHEE_API_KEY"
"""The service's API key: the service requires it, the client and the plugins send it."""


def rerank_endpoint_url(rerank_url: str) -> str:
    """The service's rerank URL from its base URL; a URL already ending in a rerank route is kept.

    Raises:
        ValueError: The URL is not http(s).

    Example:
        >>> rerank_endpoint_url("http://rerank:8000/")
        'http://rerank:8000/v1/rerank'
    """
    url = rerank_url.strip().rstrip("/")
    if not url.lower().startswith(("http://", "https://")):
        raise ValueError(f"the rerank URL must start with http:// or https://, got {rerank_url!r}")
    if url.endswith(RERANK_ROUTES):
        return url
    return url + RERANK_ROUTE


def check_api_key(key: str, where: str) -> str:
    """Refuses an API key that cannot travel in an HTTP header (non-ASCII, control characters, blanks).

    Raises:
        ValueError: Naming ``where`` the key came from and what to do.

    Example:
        >>> check_api_key("s3cret", "api_key")
        's3cret'
    """
    if not key.isascii() or not key.isprintable() or key != key.strip() or not key:
        raise ValueError(
            f"{where}: the API key must be printable ASCII without surrounding spaces (it is sent in an "
            "'Authorization: Bearer' header); generate one with e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`"
        )
    return key
