"""schemathesis against the published schema: every schema-valid request is accepted, nothing is a 5xx.

A bounded, fixed set of examples per operation keeps this in the suite; run more (and new ones) by hand
with ``LYCHEE_SCHEMATHESIS_EXAMPLES=500``. Image strings are the one part of a body whose validity a schema
cannot state (the bytes must decode as an image), so generated image values are replaced by a real PNG
data URI before sending; everything else is as schemathesis generates it.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from PIL import Image  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from lychee_rerank.core.local import LocalReranker  # noqa: E402
from lychee_rerank.core.server.app import create_app  # noqa: E402
from lychee_rerank.core.server.background import BackgroundServer  # noqa: E402
from lychee_rerank.core.server.settings import ServerSettings  # noqa: E402

BY_HAND = os.environ.get("LYCHEE_SCHEMATHESIS_EXAMPLES")
EXAMPLES = int(BY_HAND or "25")
_buffer = io.BytesIO()
Image.new("RGB", (8, 8), (200, 30, 30)).save(_buffer, "PNG")
PNG = "data:image/png;base64," + base64.b64encode(_buffer.getvalue()).decode()


def with_real_images(value: Any) -> Any:
    """``value`` with every image string (``image``, ``image_url``, ``image_url.url``) a real PNG."""
    if isinstance(value, list):
        return [with_real_images(item) for item in value]
    if not isinstance(value, dict):
        return value
    replaced = {key: with_real_images(item) for key, item in value.items()}
    for key in ("image", "image_url", "url"):
        if isinstance(replaced.get(key), str):
            replaced[key] = PNG
    return replaced


@pytest.fixture(scope="module")
def published_schema(tiny_reranker: LocalReranker) -> Iterator[Any]:
    # URLs off: a generated URL must never be fetched (no network beyond loopback in tests).
    # A small document limit (the schema states it) keeps each generated request quick on a busy machine.
    served = ServerSettings(ui=False, allow_urls=False, max_documents=32, max_queue=1000)
    with BackgroundServer(create_app(tiny_reranker, served)) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")

        @schema.hook
        def map_body(context: Any, body: Any) -> Any:
            return with_real_images(body)

        yield schema


def test_schema_valid_requests_are_accepted(published_schema: Any) -> None:
    rejected: list[str] = []
    operations = [result.ok() for result in published_schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=not BY_HAND,  # the suite runs the same examples every time; by hand, new ones
        )
        def call(case: Any) -> None:
            response = case.call(timeout=60)
            try:
                case.validate_response(response, checks=[positive_data_acceptance, not_a_server_error])
            except Exception:  # a schemathesis failure (one, or a group of several)
                rejected.append(f"{case.operation.label}: {response.status_code} {response.text[:300]} <- {case.body}")

        call()
    assert rejected == [], "\n".join(rejected[:10])
