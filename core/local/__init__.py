"""The model in this process: ``LocalReranker``, the batching engine behind it, and checkpoint loading.

Needs the ``[local]`` extra (torch, torchvision, transformers); importing this package without it raises an
ImportError that names it.
"""

from __future__ import annotations

from lychee_rerank.core.extras import require

require("torch", "local")
require("transformers", "local")

from lychee_rerank.core.local.reranker import LocalReranker  # noqa: E402

__all__ = ["LocalReranker"]
