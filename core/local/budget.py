"""How much accelerator memory a forward pass takes, from the model's shape, so batches fit a byte budget.

A token budget alone does not bound memory: on a 7B model one token in flight holds ~130 KB of
activations, and on a 35M-parameter one ~10 KB, and what else a batch holds grows with other things
than its tokens: every row attends over the shared prefix as well as its own tokens, and the vision
tower holds its own activations for every patch of the batch's images. :class:`MemoryModel` estimates
the peak of each from the config, counting what eager PyTorch holds at once:

- per token of the language model: the residual stream and its normalised copy, and the MLP's gate,
  up and product (``3 × intermediate``), the largest moment of a decoder layer;
- per row and attended token (prefix included): that layer's keys and values after the prefix is
  joined, and again after they are repeated to every query head (transformers' SDPA path does when a
  mask is present);
- per patch of the vision tower: its pixels (moved to the device in float32, then cast), and the
  residual and normalised streams, q/k/v with their float32 rotated copies and the stacked copies the
  packed attention makes, or the MLP's three intermediates.

Checked on the CPU with the profiler's allocation events (``benchmarks/memory_budget.py``): scoring 40
image+text candidates on the ``medium`` shape under a 32 MiB budget peaked at 1.02× the budget (float32
and bf16), the prefix's keys and values and the batch's image features included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

# Activation memory one forward pass may plan for: with the vision cache's 256 MiB and the batch's image
# features, the peak above the weights of a 7B model stays under 2 GB.
DEFAULT_MAX_BATCH_MEMORY = 1024 * 1024 * 1024


@dataclass(frozen=True)
class MemoryModel:
    """Bytes a forward holds at its peak, per unit of work.

    Attributes:
        token_bytes: Per token the language model computes.
        context_bytes: Per row, per token it attends over (the shared prefix and its own).
        patch_bytes: Per patch the vision tower encodes.
    """

    token_bytes: int
    context_bytes: int
    patch_bytes: int

    @classmethod
    def of(cls, config: Any, dtype: torch.dtype) -> MemoryModel:
        """The estimate for a Qwen-VL model's ``config`` with weights in ``dtype``."""
        size = torch.empty((), dtype=dtype).element_size()
        text = getattr(config, "text_config", config)
        hidden, intermediate = int(text.hidden_size), int(text.intermediate_size)
        heads = int(text.num_attention_heads)
        kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
        vision = config.vision_config
        vision_hidden = int(getattr(vision, "hidden_size", 0) or vision.embed_dim)
        if hasattr(vision, "intermediate_size"):
            vision_intermediate = int(vision.intermediate_size)
        else:  # Qwen2-VL states its MLP as a ratio
            vision_intermediate = int(vision_hidden * float(getattr(vision, "mlp_ratio", 4)))
        attention_phase = size * 8 * vision_hidden + 4 * 3 * vision_hidden  # + float32 rotary copies
        mlp_phase = size * (2 * vision_hidden + 3 * vision_intermediate)
        # The patch's pixels, moved to the device in float32 and cast to the weights' type.
        pixel_values = int(vision.in_channels) * int(vision.temporal_patch_size) * int(vision.patch_size) ** 2
        return cls(
            token_bytes=size * (2 * hidden + 3 * intermediate),
            context_bytes=size * 2 * (kv_heads + heads) * head_dim,
            patch_bytes=max(attention_phase, mlp_phase) + pixel_values * (4 + size),
        )

    def batch_bytes(self, rows: int, width: int, context: int = 0) -> int:
        """The language model's peak for ``rows`` rows of ``width`` tokens after ``context`` shared ones."""
        return rows * (width * self.token_bytes + (context + width) * self.context_bytes)

    def token_limit(self, budget: int) -> int:
        """Padded tokens per forward within ``budget`` (each with its own key and value), at least 1."""
        return max(1, budget // (self.token_bytes + self.context_bytes))

    def row_overhead(self, context: int) -> int:
        """The shared ``context`` each row attends over, in tokens of :meth:`token_limit`'s kind."""
        return math.ceil(context * self.context_bytes / (self.token_bytes + self.context_bytes))

    def patch_limit(self, budget: int) -> int:
        """Vision patches per tower forward within ``budget``, at least 1."""
        return max(1, budget // self.patch_bytes)
