"""The scoring core: inputs, profiles, the reranker interface and its backends.

Names are imported on first use, so ``import lychee_rerank.core`` (and anything built on the light client:
``RemoteReranker``, the adapters, the plugins) never loads torch. ``LocalReranker`` needs the ``[local]``
extra; using it without raises an ImportError that says what to install.

Example:
    >>> from lychee_rerank.core import LocalReranker, Query, Document
    >>> reranker = LocalReranker(model="tiny")  # doctest: +SKIP
    >>> reranker.rerank(Query("red dress"), [Document("a red dress"), Document("a car")])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it. Every module listed here but `local` is torch-free.
_EXPORTS = {
    "ImageError": "errors",
    "InvalidInputError": "errors",
    "LycheeError": "errors",
    "ModelLoadError": "errors",
    "UnknownProfileError": "errors",
    "Document": "inputs",
    "ImageInput": "inputs",
    "Query": "inputs",
    "MediaPolicy": "media",
    "INSTRUCTION_PRESETS": "profiles",
    "PROFILES": "profiles",
    "Profile": "profiles",
    "get_profile": "profiles",
    "BaseReranker": "interface",
    "Reranker": "interface",
    "RerankResult": "interface",
    "RemoteAuthError": "errors",
    "RemoteReranker": "remote",
    "RemoteRerankerError": "errors",
    "as_reranker": "remote",
    "LocalReranker": "local",
}


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
    "RemoteAuthError",
    "RemoteReranker",
    "RemoteRerankerError",
    "RerankResult",
    "Reranker",
    "UnknownProfileError",
    "__version__",
    "as_reranker",
    "get_profile",
]

if TYPE_CHECKING:
    from lychee_rerank.core.errors import (
        ImageError,
        InvalidInputError,
        LycheeError,
        ModelLoadError,
        RemoteAuthError,
        RemoteRerankerError,
        UnknownProfileError,
    )
    from lychee_rerank.core.inputs import Document, ImageInput, Query
    from lychee_rerank.core.interface import BaseReranker, Reranker, RerankResult
    from lychee_rerank.core.local import LocalReranker
    from lychee_rerank.core.media import MediaPolicy
    from lychee_rerank.core.profiles import INSTRUCTION_PRESETS, PROFILES, Profile, get_profile
    from lychee_rerank.core.remote import RemoteReranker, as_reranker


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lychee_rerank.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lychee_rerank.core.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
