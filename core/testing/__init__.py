"""Test aids, kept off the production load path: the tiny random checkpoint, model-free rerankers, the naive
reference scorer.

- :mod:`~lychee_rerank.core.testing.checkpoint`: writes small random Qwen2.5-VL checkpoints (``--model tiny``
  and the tests load them through the ordinary ``from_pretrained`` path).
- :mod:`~lychee_rerank.core.testing.fakes`: rerankers without a model, for fail-open and timeout tests.
- :mod:`~lychee_rerank.core.testing.reference`: one pair per forward pass, the engine's yardstick.

Nothing here is imported by the service, the client or the adapters.
"""

from __future__ import annotations

from lychee_rerank.core.testing.checkpoint import write_tiny_checkpoint

__all__ = ["write_tiny_checkpoint"]
