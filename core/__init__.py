"""The scoring core: inputs, profiles, the batching engine and the rerankers.

Example:
    >>> from lychee_rerank.core import LocalReranker, Query, Document
    >>> reranker = LocalReranker(model="tiny")  # doctest: +SKIP
    >>> reranker.rerank(Query("red dress"), [Document("a red dress"), Document("a car")])  # doctest: +SKIP
"""

from __future__ import annotations

from lychee_rerank.core.errors import (
    ImageError,
    InvalidInputError,
    LycheeError,
    ModelLoadError,
    UnknownProfileError,
)
from lychee_rerank.core.inputs import Document, ImageInput, Query
from lychee_rerank.core.media import MediaPolicy
from lychee_rerank.core.profiles import INSTRUCTION_PRESETS, PROFILES, Profile, get_profile
from lychee_rerank.core.remote import RemoteReranker, RemoteRerankerError
from lychee_rerank.core.reranker import BaseReranker, LocalReranker, Reranker, RerankResult, as_reranker

__version__ = "0.1.0"

__all__ = [
    "INSTRUCTION_PRESETS",
    "PROFILES",
    "BaseReranker",
    "Document",
    "ImageError",
    "ImageInput",
    "InvalidInputError",
    "LocalReranker",
    "LycheeError",
    "MediaPolicy",
    "ModelLoadError",
    "Profile",
    "Query",
    "RemoteReranker",
    "RemoteRerankerError",
    "RerankResult",
    "Reranker",
    "UnknownProfileError",
    "__version__",
    "as_reranker",
    "get_profile",
]
