"""What the Elasticsearch and OpenSearch plugins share: the service's URL, version numbers, probe data and
the command-line arguments and output their ``install``/``check`` commands have in common."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from lychee_rerank.core import wire
from lychee_rerank.core.errors import LycheeError

PROBE_QUERY = "lychee-rerank check"
PROBE_DOCUMENTS = ["a short test document", "another test document"]
"""What ``check`` reranks through the engine to show that it reaches the service."""

_LEGACY_API_KEY_ENV = "LYCHEE_RERANK_API_KEY"  # what the first release read; still honoured


def rerank_endpoint_url(rerank_url: str) -> str:
    """The service's ``/v1/rerank`` URL from its base URL; a URL already ending in a rerank route is kept.

    Example:
        >>> rerank_endpoint_url("http://rerank:8000")
        'http://rerank:8000/v1/rerank'
    """
    try:
        return wire.rerank_endpoint_url(rerank_url)
    except ValueError as error:
        raise LycheeError(str(error)) from None


def parse_version(number: str, engine: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``9.1.3`` or ``2.19.0-SNAPSHOT``.

    Example:
        >>> parse_version("2.19.0-SNAPSHOT", "OpenSearch")
        (2, 19)
    """
    parts = number.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise LycheeError(f"cannot read the {engine} version {number!r}") from None


def service_api_key(explicit: str | None) -> str | None:
    """The service's API key: ``explicit``, else ``$LYCHEE_API_KEY`` (or the older ``$LYCHEE_RERANK_API_KEY``)."""
    key = explicit or os.environ.get(wire.API_KEY_ENV) or os.environ.get(_LEGACY_API_KEY_ENV)
    if key:
        try:
            wire.check_api_key(key, "--api-key")
        except ValueError as error:
            raise LycheeError(str(error)) from None
    return key or None


def add_service_arguments(parser: argparse.ArgumentParser, *, engine: str, stored_as: str) -> None:
    """``--rerank-url``, ``--api-key``, ``--multimodal`` and ``--replace`` of an ``install`` command."""
    parser.add_argument(
        "--rerank-url",
        required=True,
        help=f"the service's base URL as {engine} reaches it, e.g. http://rerank:8000",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"the service's API key, stored as {stored_as} (default: ${wire.API_KEY_ENV})",
    )
    parser.add_argument(
        "--multimodal",
        action="store_true",
        help='documents are JSON strings {"text": ..., "image": ...}: make the service read their images',
    )
    parser.add_argument("--replace", action="store_true", help="recreate what exists even if it looks identical")


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """``--no-probe`` and ``--json`` of a ``check`` command."""
    parser.add_argument("--no-probe", action="store_true", help="only look the parts up; rerank nothing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def print_check(
    status: Any, *, title: str, lines: Sequence[str], probe_scores: Sequence[float] | None, as_json: bool
) -> int:
    """Prints a ``check`` result (``status`` is a dataclass with ``ok`` and ``problems``); 0 when all is well."""
    if as_json:
        print(json.dumps({**status.__dict__, "ok": status.ok}, indent=2))
    else:
        print(f"{'ok' if status.ok else 'NOT OK'}: {title}")
        for line in lines:
            print(f"  {line}")
        if probe_scores is not None:
            print(f"  probe scores: {', '.join(f'{score:.4f}' for score in probe_scores)}")
        for problem in status.problems:
            print(f"  problem: {problem}")
    return 0 if status.ok else 1


def print_actions(actions: Mapping[str, str]) -> None:
    """One ``part: action`` line per installed part (never a secret)."""
    for part, action in actions.items():
        print(f"{part}: {action}")
