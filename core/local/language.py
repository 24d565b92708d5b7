"""The language model's half of a forward pass: embeddings, Qwen-VL positions, the shared prefix's cache.

The engine calls the checkpoint's text model (``model.model.language_model``) directly, with everything
the multimodal wrapper around it would otherwise compute, so that the wrapper's per-release changes (its
keyword names, its output fields, how it takes precomputed image features) do not reach the engine:

- the token embeddings, with each image's vision features written over its placeholder tokens (and,
  for Qwen3-VL, the deepstack features with the mask of where they go);
- the multimodal rotary positions (:func:`multimodal_positions`): text counts one position per token;
  an image of t×h×w merged units takes positions ``start + (i, j, k)`` on its three axes, and the text
  after it resumes at ``start + max(t, h, w)``: Qwen2-VL's, Qwen2.5-VL's and Qwen3-VL's rule for
  images. Computed on the CPU from the token lists the engine already holds, per row over real tokens
  only, so padding moves nothing;
- a :class:`PrefixCache`, which hands every layer the shared prefix's keys and values followed by the
  batch's own, and keeps nothing: the stock cache would hold every layer's keys and values for every row
  (prefix copies included) until the forward ends, 0.9 GB for 41 rows of 400 tokens on a 7B model.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

KeyValues = list[tuple[torch.Tensor, torch.Tensor]]


class PrefixCache(DynamicCache):  # type: ignore[misc]
    """A key/value cache for one forward: the prefix's entries (or none), then each layer's own, kept nowhere.

    With ``prefix``, every layer sees the prefix's keys and values (expanded over ``rows`` without a copy)
    followed by its own; the cache itself still holds only the prefix, so its length is the prefix's for
    the whole forward. Without, the cache records each layer's keys and values in :attr:`recorded` (the
    run that computes a prefix) and returns them unchanged.
    """

    def __init__(self, prefix: KeyValues | None = None, rows: int = 1) -> None:
        expanded = (
            None if prefix is None else [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix]
        )
        super().__init__(ddp_cache_data=expanded)
        self._prefix = expanded
        self.recorded: KeyValues = []

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values layer ``layer_idx`` attends over: the prefix's, then ``key_states``'."""
        if self._prefix is None:
            self.recorded.append((key_states, value_states))
            return key_states, value_states
        keys, values = self._prefix[layer_idx]
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


@dataclass(frozen=True)
class ImageSlot:
    """Where an image sits in a row: its placeholder tokens ``[start, end)`` and its merged grid (t, h, w)."""

    start: int
    end: int
    grid: tuple[int, int, int]


def multimodal_positions(
    lengths: Sequence[int], slots: Sequence[Sequence[ImageSlot]], width: int, starts: Sequence[int] | None = None
) -> torch.Tensor:
    """(3, rows, width) positions for rows of ``lengths`` real tokens, right-aligned (padding on the left
    gets position 0), the images of each row at ``slots`` (offsets within the row's real tokens).

    ``starts`` is the position each row's first token continues from (a shared prefix's next position).

    Example:
        >>> multimodal_positions([3], [[]], 4)[0].tolist()
        [[0, 0, 1, 2]]
        >>> multimodal_positions([4], [[ImageSlot(1, 3, (1, 1, 2))]], 4)[:, 0].tolist()
        [[0, 1, 1, 3], [0, 1, 1, 3], [0, 1, 2, 3]]
    """
    positions = torch.zeros(3, len(lengths), width, dtype=torch.long)
    for row, (length, row_slots) in enumerate(zip(lengths, slots, strict=True)):
        start = 0 if starts is None else starts[row]
        pieces: list[torch.Tensor] = []
        cursor = 0
        for slot in row_slots:
            if slot.start > cursor:
                pieces.append(torch.arange(start, start + slot.start - cursor).expand(3, -1))
                start += slot.start - cursor
            pieces.append(_grid_positions(slot.grid) + start)
            start += max(slot.grid)
            cursor = slot.end
        if length > cursor:
            pieces.append(torch.arange(start, start + length - cursor).expand(3, -1))
        if pieces:
            positions[:, row, width - length :] = torch.cat(pieces, dim=1)
    return positions


def next_position(length: int, slots: Sequence[ImageSlot]) -> int:
    """The position the token after ``length`` real tokens with images at ``slots`` takes."""
    return length + sum(max(slot.grid) - (slot.end - slot.start) for slot in slots)


_GRID_POSITIONS: dict[tuple[int, int, int], torch.Tensor] = {}


def _grid_positions(grid: tuple[int, int, int]) -> torch.Tensor:
    """(3, t·h·w) axis indices of a merged grid, row-major; kept per grid (a few distinct sizes recur)."""
    found = _GRID_POSITIONS.get(grid)
    if found is None:
        frames, height, width = grid
        axes = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
        found = torch.stack(axes).reshape(3, -1)
        if len(_GRID_POSITIONS) < 4096:
            _GRID_POSITIONS[grid] = found
    return found


class TextModel:
    """The checkpoint's text model called with precomputed embeddings and positions.

    Args:
        base: The multimodal base model (``model.model``): its ``language_model`` and input embeddings.
        image_token_id: The placeholder token an image's features replace.
    """

    def __init__(self, base: Any, image_token_id: int) -> None:
        self.language_model = base.language_model
        self.embeddings = base.get_input_embeddings()
        self.image_token_id = image_token_id
        parameters = inspect.signature(self.language_model.forward).parameters
        # transformers renamed ``past_key_values`` to ``cache`` in 5.2x (the old name is deprecated).
        self._cache_keyword = "cache" if "cache" in parameters else "past_key_values"
        self.takes_deepstack = "deepstack_visual_embeds" in parameters

    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        *,
        prefix: KeyValues | None,
        image_features: torch.Tensor | None = None,
        deepstack: Sequence[torch.Tensor] | None = None,
        record: bool = False,
    ) -> tuple[torch.Tensor, KeyValues]:
        """The last position's hidden state for each row, and (with ``record``) each layer's keys and values.

        Args:
            input_ids: (rows, length) tokens after the prefix, padded on the left.
            attention_mask: (rows, prefix + length), 1 on real tokens.
            positions: (3, rows, length) from :func:`multimodal_positions`.
            prefix: The shared prefix's keys and values per layer (batch 1), or None.
            image_features: One row per placeholder token of ``input_ids``, in order.
            deepstack: Qwen3-VL's per-layer visual features for the same tokens.
            record: Return the keys and values this forward computed (to reuse as a prefix).
        """
        embeds = self.embeddings(input_ids)
        extra: dict[str, Any] = {}
        if image_features is not None:
            slots = input_ids == self.image_token_id
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), image_features.to(embeds.dtype))
            if deepstack is not None and self.takes_deepstack:
                extra["visual_pos_masks"] = slots
                extra["deepstack_visual_embeds"] = [layer.to(embeds.dtype) for layer in deepstack]
        cache = PrefixCache(prefix, rows=input_ids.shape[0])
        extra[self._cache_keyword] = cache
        output = self.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, use_cache=True, **extra
        )
        return output.last_hidden_state[:, -1, :], cache.recorded if record else []
