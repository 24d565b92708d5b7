"""Shared helpers of the integration tests: server URLs from the environment, skipping when one is unset.

Each server is named by an environment variable (``ELASTICSEARCH_URL``, ``OPENSEARCH_URL``, ``QDRANT_URL``,
``RERANK_URL``...; ``docker-compose.yml`` lists the values for the local stack). A module marks what it needs::

    pytestmark = pytest.mark.requires_env("OPENSEARCH_URL", "RERANK_URL")

and every test in it is skipped, naming the missing variables, when one is unset. Inside tests, the
``env_url`` fixture reads a URL (``env_url("QDRANT_URL")``) and skips when it is unset; ``require_url`` is the
same for a conftest or plugin. Test modules cannot import this file (pytest runs with
``--import-mode=importlib``), hence the marker and the fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

EXAMPLES = {
    "ELASTICSEARCH_URL": "http://localhost:9200",
    "OPENSEARCH_URL": "http://localhost:9201",
    "QDRANT_URL": "http://localhost:6333",
    "RERANK_URL": "http://localhost:8000",
    "RERANK_URL_FROM_ENGINE": "http://rerank:8000",
}
"""The values for the ``docker compose`` stack, quoted in skip reasons."""


def missing_reason(*names: str) -> str:
    """Why a test cannot run without ``names``, with the values to set for the compose stack."""
    settings = " ".join(f"{name}={EXAMPLES.get(name, '...')}" for name in names)
    return f"{', '.join(names)} not set: start the stack (docker compose up -d) and set e.g. {settings}"


def env_value(name: str) -> str | None:
    """The stripped value of ``name``, or ``None`` when it is unset or blank."""
    return os.environ.get(name, "").strip() or None


def require_url(name: str) -> str:
    """The URL in environment variable ``name`` without a trailing slash; skips the test when it is unset."""
    value = env_value(name)
    if value is None:
        pytest.skip(missing_reason(name))
    return value.rstrip("/")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_env(*names): skip unless every named environment variable (a server URL) is set"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("requires_env"):
        missing = [name for name in marker.args if env_value(name) is None]
        if missing:
            pytest.skip(missing_reason(*missing))


@pytest.fixture
def env_url() -> Callable[[str], str]:
    """``env_url(NAME)``: the URL in ``NAME``, or a skip naming it."""
    return require_url


@pytest.fixture
def rerank_url_from_engine() -> str:
    """The rerank service's URL as a search engine reaches it (``http://rerank:8000`` inside the compose stack).

    ``RERANK_URL_FROM_ENGINE``, else ``RERANK_URL`` (right when the engine and the tests share a network).
    """
    value = env_value("RERANK_URL_FROM_ENGINE") or env_value("RERANK_URL")
    if value is None:
        pytest.skip(missing_reason("RERANK_URL_FROM_ENGINE"))
    return value.rstrip("/")
