"""What the rerank service answers, checked: a 200's results, and what an error answer means.

A 200 is trusted only once every result has an index in range, seen once, and a relevance score that is
a finite number in [0, 1], and the results cover every document unless ``top_n`` or ``min_score`` was
asked: a scorer that silently dropped or duplicated documents would otherwise reorder a search wrongly.
An error answer is read as the service's own JSON error (``{"error": {"message", "reason"?}}``) only when
it has that shape; a proxy's HTML page, ``[]`` or ``null`` is shown as text with its status.

Example:
    >>> answer = Answer(200, httpx.Headers(), b'{"results": [{"index": 0, "relevance_score": 0.9}]}')
    >>> checked_results(answer, documents=1, top_n=None, min_score=None, where="http://gpu-box:8000")
    [(0, 0.9)]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast, get_args

import httpx

from lychee_rerank.core import wire
from lychee_rerank.core.errors import (
    ImageError,
    ImageErrorReason,
    InvalidInputError,
    LycheeError,
    RemoteAuthError,
    RemoteRerankerError,
)

_INPUT_STATUSES = frozenset({400, 413, 422})
_AUTH_STATUSES = frozenset({401, 403})
_REASONS = frozenset(get_args(ImageErrorReason))
_SHOWN_BODY_CHARS = 200


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer: its body was read to the end before the deadline.

    Attributes:
        status: The HTTP status.
        headers: The response headers.
        content: The body.
    """

    status: int
    headers: httpx.Headers
    content: bytes


def shown(content: bytes) -> str:
    """A body as a short single line for a message (a proxy's HTML page, say)."""
    text = " ".join(content.decode("utf-8", "replace").split())
    return text if len(text) <= _SHOWN_BODY_CHARS else text[:_SHOWN_BODY_CHARS] + "..."


def _json(content: bytes) -> object:
    try:
        return json.loads(content)
    except ValueError:  # UnicodeDecodeError included
        return None


def _service_error(answer: Answer) -> dict[str, Any] | None:
    """The service's own error detail (``{"error": {"message", "reason"?, ...}}``), or ``None``."""
    body = _json(answer.content)
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("message"), str):
        return detail
    return None


def server_says(answer: Answer) -> str:
    """What an answer says went wrong: the service's message, else the start of the body."""
    detail = _service_error(answer)
    if detail is not None:
        return str(detail["message"])
    return shown(answer.content) or "(empty body)"


def checked_results(
    answer: Answer,
    *,
    documents: int,
    top_n: int | None,
    min_score: float | None,
    where: str,
    key_sent: bool = True,
) -> list[tuple[int, float]]:
    """``(index, score)`` pairs, best first, from a successful answer to a request of ``documents`` documents.

    Raises:
        RemoteRerankerError: The answer is not a valid rerank answer to that request (status 200 kept), or
            it is an error answer (see :func:`error_from`).
        InvalidInputError: The service refused the input.
    """
    if not 200 <= answer.status < 300:
        raise error_from(answer, where, key_sent=key_sent)
    body = _json(answer.content)
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list):
        raise _invalid(answer, where, f"no 'results' list in {shown(answer.content)!r}")
    pairs: list[tuple[int, float]] = []
    seen: set[int] = set()
    for position, item in enumerate(results):
        index = item.get("index") if isinstance(item, dict) else None
        score = item.get("relevance_score") if isinstance(item, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < documents:
            raise _invalid(answer, where, f"result {position} has index {index!r}, not one of the {documents} sent")
        if index in seen:
            raise _invalid(answer, where, f"document {index} is in the results twice")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
            # NaN fails the range test too (json.loads reads the NaN and Infinity literals as floats).
            raise _invalid(answer, where, f"document {index} has relevance_score {score!r}, not a number in [0, 1]")
        if min_score is not None and score < min_score:
            raise _invalid(answer, where, f"document {index} scores {score!r}, under the min_score asked for")
        seen.add(index)
        pairs.append((index, float(score)))
    expected = documents if top_n is None else min(top_n, documents)
    if len(pairs) > expected or (min_score is None and len(pairs) < expected):
        raise _invalid(answer, where, f"{len(pairs)} results for {documents} documents (top_n={top_n})")
    pairs.sort(key=lambda pair: -pair[1])  # stable: the service's order among equal scores
    return pairs


def _invalid(answer: Answer, where: str, problem: str) -> RemoteRerankerError:
    return RemoteRerankerError(
        f"the reranking service at {where} sent an invalid rerank answer: {problem}", status=answer.status
    )


def error_from(answer: Answer, where: str, *, key_sent: bool = True) -> LycheeError:
    """The error an unsuccessful answer means.

    401 and 403 are :class:`RemoteAuthError`; the service's own error body on 400, 413 or 422 is the caller's
    input (:class:`ImageError` with its reason, else :class:`InvalidInputError`); anything else is a
    :class:`RemoteRerankerError` carrying the status.
    """
    status, detail = answer.status, _service_error(answer)
    message = server_says(answer)
    if status in _AUTH_STATUSES:
        advice = "check the key it was given" if key_sent else "it was given none"
        return RemoteAuthError(
            f"the reranking service at {where} refused the API key (HTTP {status}: {message}); {advice}: "
            f"set {wire.API_KEY_ENV} or pass api_key= to RemoteReranker",
            status=status,
        )
    if status in _INPUT_STATUSES and detail is not None:
        reason = detail.get("reason")
        if reason in _REASONS:
            return ImageError(message, reason=cast(ImageErrorReason, reason))
        return InvalidInputError(message)
    return RemoteRerankerError(f"the reranking service at {where} answered HTTP {status}: {message}", status=status)
