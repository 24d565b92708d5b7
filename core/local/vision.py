"""The vision tower of Qwen2-VL and Qwen2.5-VL over many images at once, in a few large attention calls.

Why: transformers runs the tower's attention, on every path but FlashAttention's, by splitting the
packed patches at each window's and each image's boundary and attending each piece alone. Qwen2.5-VL
attends within windows of 8x8 patches in all but four of its 32 layers, so one request of 100 images
of 448² pixels made 45,284 attention calls on an H200, and the CPU spent 4.9 s issuing kernels that
the GPU finished in 1.9 s. Here the tower's own weights (patch embedding, norms, projections, MLPs,
merger) run unchanged and only the attention is done differently: every window (or every image, in
the full-attention layers) of every image of a batch goes through one call per layer:

- ``flash-attn-varlen``: FlashAttention's variable-length kernel over the packed patches, where
  ``flash_attn`` is installed (CUDA, half precision);
- ``torch-varlen``: PyTorch's own variable-length attention (``torch.nn.attention.varlen``, CUDA, half
  precision), where this torch has it;
- ``sdpa-packed``: one ``scaled_dot_product_attention`` over the pieces stacked as a batch, the few
  shorter ones padded and their padding masked (everywhere else: the CPU, float32). Pieces of very
  different lengths (a large image beside small ones) go in separate calls, so that padding never
  costs more than a quarter of the real work: the number of calls depends on how many different
  lengths there are, never on how many images or windows.

A varlen kernel is checked against ``sdpa-packed`` on a small input before it is used, and not used
when it fails or disagrees. What does not depend on pixels (rotary angles, the window permutation,
window lengths) is computed once per distinct image grid and kept, so a batch of images of sizes seen
before costs a few concatenations to lay out.

An image's features equal those of transformers' own forward up to float rounding (1e-5 in float32),
whatever it is batched with: padding is masked, and attention never crosses a window or an image.
Other vision towers (Qwen3-VL's, with its interpolated position table and deepstack taps) run through
transformers' forward (path ``transformers``), which can also be asked for to compare.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lychee_rerank.core.caches import ByteBudgetLRU

logger = logging.getLogger(__name__)

FLASH_VARLEN = "flash-attn-varlen"
TORCH_VARLEN = "torch-varlen"
SDPA_PACKED = "sdpa-packed"
TRANSFORMERS = "transformers"
VISION_ATTENTION_PATHS = (FLASH_VARLEN, TORCH_VARLEN, SDPA_PACKED, TRANSFORMERS)

# Padding allowed in one stacked attention call, as a fraction of the real patches in it. Above it, the
# longest pieces go in a call of their own: a 5,120-patch image beside 16-patch ones would otherwise pad
# each small one 300-fold.
MAX_ATTENTION_PADDING = 0.25
# Rotary angles and window layouts of recent image grids (a 7B grid of 5,120 patches holds 3.3 MB).
LAYOUT_CACHE_BYTES = 64 * 1024 * 1024
_SUPPORTED_TOWERS = ("Qwen2_5_VisionTransformerPretrainedModel", "Qwen2VisionTransformerPretrainedModel")
Grid = tuple[int, int, int]


def supports(visual: Any) -> bool:
    """Whether :class:`VisionTower` can run ``visual`` (Qwen2-VL's and Qwen2.5-VL's towers)."""
    return type(visual).__name__ in _SUPPORTED_TOWERS and all(
        hasattr(visual, name) for name in ("patch_embed", "blocks", "merger", "rotary_pos_emb", "spatial_merge_size")
    )


# -- where each patch goes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Segments:
    """Contiguous runs of the packed patches that attend only among themselves (windows, or images).

    ``lengths`` are in sequence order. For the varlen kernels: ``cu_seqlens`` (int32, on the device) and
    ``max_length``. For ``sdpa-packed``: ``groups``, each one stacked attention call, and ``inverse``,
    which takes every patch back from the concatenated outputs of the groups (``None`` when the single
    group is the sequence itself, cut into equal pieces).
    """

    lengths: tuple[int, ...]
    cu_seqlens: torch.Tensor
    max_length: int
    groups: tuple[_Group, ...]
    inverse: torch.Tensor | None


@dataclass(frozen=True)
class _Group:
    """``count`` pieces padded to ``width``: ``gather`` picks their patches (a pad slot picks patch 0,
    whose key is masked and whose output is dropped); ``mask`` is (count, 1, 1, width), True where real."""

    count: int
    width: int
    gather: torch.Tensor | None
    mask: torch.Tensor | None


def group_by_length(lengths: Sequence[int], max_padding: float = MAX_ATTENTION_PADDING) -> list[list[int]]:
    """Indices of ``lengths``, longest first, in groups whose padding to their longest stays within
    ``max_padding`` of their real length; a single piece is always a group.

    Example:
        >>> group_by_length([64, 64, 48, 64, 16])
        [[0, 1, 3, 2, 4]]
        >>> group_by_length([1024, 16, 16, 1024])
        [[0, 3], [1, 2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    real = 0
    for index in order:
        if groups:
            width = lengths[groups[-1][0]]
            if (len(groups[-1]) + 1) * width <= (1 + max_padding) * (real + lengths[index]):
                groups[-1].append(index)
                real += lengths[index]
                continue
        groups.append([index])
        real = lengths[index]
    return groups


def plan_segments(lengths: Sequence[int], device: torch.device) -> Segments:
    """The cumulative lengths and the stacked-call groups for pieces of ``lengths``, in sequence order."""
    lengths = tuple(int(length) for length in lengths)
    starts = [0]
    for length in lengths:
        starts.append(starts[-1] + length)
    total = starts[-1]
    cu_seqlens = torch.tensor(starts, dtype=torch.int32).to(device)
    if len(set(lengths)) == 1:
        # The common case (every window full, images of one size): the sequence cut into equal pieces.
        return Segments(lengths, cu_seqlens, lengths[0], (_Group(len(lengths), lengths[0], None, None),), None)
    groups = []
    inverse = torch.empty(total, dtype=torch.long)
    slot = 0
    for members in group_by_length(lengths):
        width = lengths[members[0]]
        gather = torch.zeros(len(members), width, dtype=torch.long)
        mask = torch.zeros(len(members), 1, 1, width, dtype=torch.bool)
        for row, member in enumerate(members):
            length, start = lengths[member], starts[member]
            positions = torch.arange(start, start + length)
            gather[row, :length] = positions
            mask[row, ..., :length] = True
            inverse[positions] = torch.arange(slot + row * width, slot + row * width + length)
        slot += len(members) * width
        padded = bool((~mask).any())
        groups.append(_Group(len(members), width, gather.flatten().to(device), mask.to(device) if padded else None))
    return Segments(lengths, cu_seqlens, max(lengths), tuple(groups), inverse.to(device))


@dataclass(frozen=True)
class _GridLayout:
    """What one image grid needs beyond its pixels, in the order the tower's blocks see its patches.

    ``window_index`` orders the image's merged 2x2 units window by window (None: no windows);
    ``reverse_index`` undoes it. ``cos``/``sin`` are the rotary angles per patch, (patches, head_dim),
    float32. ``window_lengths`` are patches per window; ``frame_length`` patches per frame.
    """

    patches: int
    frames: int
    frame_length: int
    window_lengths: tuple[int, ...]
    window_index: torch.Tensor | None
    reverse_index: torch.Tensor | None
    cos: torch.Tensor
    sin: torch.Tensor

    @property
    def nbytes(self) -> int:
        tensors = [self.cos, self.sin, *(t for t in (self.window_index, self.reverse_index) if t is not None)]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


@dataclass(frozen=True)
class _BatchLayout:
    """The grids of one forward laid out together: per-patch angles, window order, attention pieces."""

    cos: torch.Tensor
    sin: torch.Tensor
    window_index: torch.Tensor | None
    reverse_index: torch.Tensor | None
    windows: Segments | None
    frames: Segments


def _patch_positions(grid: Grid, merge: int) -> torch.Tensor:
    """(patches, 2) row and column of each patch, in the processor's order: 2x2 merge units row-major."""
    frames, height, width = grid
    rows = torch.arange(height).view(-1, 1).expand(height, width)
    columns = torch.arange(width).view(1, -1).expand(height, width)
    shape = (height // merge, merge, width // merge, merge)
    rows = rows.reshape(shape).transpose(1, 2).flatten()
    columns = columns.reshape(shape).transpose(1, 2).flatten()
    return torch.stack([rows, columns], dim=-1).repeat(frames, 1)


def _window_order(grid: Grid, merge: int, window_units: int) -> tuple[torch.Tensor, list[int]]:
    """The merged units of ``grid`` window by window (row-major windows of ``window_units`` a side,
    row-major inside), and the patches in each non-empty window; frame after frame."""
    frames, height, width = grid
    units_h, units_w = height // merge, width // merge
    order: list[torch.Tensor] = []
    lengths: list[int] = []
    units = torch.arange(frames * units_h * units_w).view(frames, units_h, units_w)
    for frame in range(frames):
        for top in range(0, units_h, window_units):
            for left in range(0, units_w, window_units):
                window = units[frame, top : top + window_units, left : left + window_units].flatten()
                order.append(window)
                lengths.append(window.numel() * merge * merge)
    return torch.cat(order), lengths


class VisionTower:
    """Encodes the images of a batch with a Qwen2-VL or Qwen2.5-VL vision tower (see the module docstring).

    Args:
        visual: The model's vision tower (``model.model.visual``); only read, never changed.
        attention: One of :data:`VISION_ATTENTION_PATHS`, or None for the fastest that works here.

    Example:
        >>> tower = VisionTower(model.model.visual)  # doctest: +SKIP
        >>> tower.attention  # doctest: +SKIP
        'sdpa-packed'
        >>> features = tower(pixel_values, [(1, 32, 32), (1, 16, 24)])  # doctest: +SKIP
        >>> features.shape  # 256 + 96 merged tokens, the language model's width  # doctest: +SKIP
        torch.Size([352, 3584])
    """

    def __init__(self, visual: Any, *, attention: str | None = None) -> None:
        if attention is not None and attention not in VISION_ATTENTION_PATHS:
            raise ValueError(f"unknown vision attention {attention!r}; choose one of {VISION_ATTENTION_PATHS}")
        self.visual = visual
        self.supported = supports(visual)
        weight = next(visual.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self.attention = self._choose(attention)
        self.attention_calls = 0  # kernel calls made, for benchmarks and stats
        if self.supported:
            rotary = visual.rotary_pos_emb
            self._inv_freq = rotary.inv_freq.detach().to(self.device, torch.float32)
            self._rotary_scale = float(getattr(rotary, "attention_scaling", 1.0))
            self._merge = int(visual.spatial_merge_size)
            self._full_layers = frozenset(getattr(visual, "fullatt_block_indexes", range(len(visual.blocks))))
            window_size = getattr(visual, "window_size", None)
            self._window_units = None if window_size is None else window_size // self._merge // visual.patch_size
            self._layouts: ByteBudgetLRU[_GridLayout] = ByteBudgetLRU(LAYOUT_CACHE_BYTES)
        logger.info("vision tower %s: attention path %s", type(visual).__name__, self.attention)

    # -- choosing the attention path ------------------------------------------------------------------

    def _choose(self, requested: str | None) -> str:
        if not self.supported:
            if requested not in (None, TRANSFORMERS):
                raise ValueError(
                    f"vision attention {requested!r} needs a Qwen2-VL or Qwen2.5-VL vision tower; "
                    f"{type(self.visual).__name__} runs through transformers' own forward only"
                )
            return TRANSFORMERS
        if requested is not None:
            if requested in (FLASH_VARLEN, TORCH_VARLEN) and not self._varlen_works(requested):
                raise ValueError(
                    f"vision attention {requested!r} does not work here ({self.device.type}, "
                    f"{str(self.dtype).removeprefix('torch.')}); it needs CUDA, half precision and "
                    + ("flash_attn installed" if requested == FLASH_VARLEN else "torch.nn.attention.varlen")
                )
            return requested
        for path in (FLASH_VARLEN, TORCH_VARLEN):
            if self._varlen_works(path):
                return path
        return SDPA_PACKED

    def _varlen_works(self, path: str) -> bool:
        """Whether ``path`` runs here and agrees with ``sdpa-packed`` on a small ragged input."""
        if self.device.type != "cuda" or self.dtype not in (torch.float16, torch.bfloat16):
            return False
        if path == FLASH_VARLEN and importlib.util.find_spec("flash_attn") is None:
            return False
        if path == TORCH_VARLEN and importlib.util.find_spec("torch.nn.attention.varlen") is None:
            return False
        generator = torch.Generator(device="cpu").manual_seed(0)
        heads, head_dim = 2, 64
        segments = plan_segments([64, 17, 5, 64], self.device)
        total = sum(segments.lengths)
        q, k, v = (
            torch.randn(total, heads, head_dim, generator=generator).to(self.device, self.dtype) for _ in range(3)
        )
        try:
            with torch.inference_mode():
                fast = _ATTENTION[path](q, k, v, segments)
                slow = _ATTENTION[SDPA_PACKED](q, k, v, segments)
        except Exception as error:  # a kernel missing for this GPU or build: fall back, and say why
            logger.info("vision attention %s is not usable here: %s: %s", path, type(error).__name__, error)
            return False
        if not torch.allclose(fast.float(), slow.float(), atol=2e-2, rtol=2e-2):
            logger.warning("vision attention %s disagrees with scaled_dot_product_attention; not using it", path)
            return False
        return True

    # -- layouts ---------------------------------------------------------------------------------------

    def _grid_layout(self, grid: Grid) -> _GridLayout:
        key = "x".join(map(str, grid))
        found = self._layouts.get(key)
        if found is not None:
            return found
        positions = _patch_positions(grid, self._merge).to(self.device)
        # The tower's rotary embedding: one angle per (row, column) frequency, [rows | columns] twice.
        angles = positions[..., None].float() * self._inv_freq
        angles = torch.cat([angles[:, 0], angles[:, 1]], dim=-1)
        angles = torch.cat([angles, angles], dim=-1)
        cos, sin = angles.cos() * self._rotary_scale, angles.sin() * self._rotary_scale
        frames, height, width = grid
        window_index = reverse_index = None
        window_lengths: tuple[int, ...] = ()
        if self._window_units is not None:
            order, lengths = _window_order(grid, self._merge, self._window_units)
            window_index = order.to(self.device)
            reverse_index = torch.argsort(window_index)
            window_lengths = tuple(lengths)
            unit = self._merge * self._merge
            by_patch = (window_index[:, None] * unit + torch.arange(unit, device=self.device)).flatten()
            cos, sin = cos[by_patch], sin[by_patch]
        layout = _GridLayout(
            frames * height * width, frames, height * width, window_lengths, window_index, reverse_index, cos, sin
        )
        self._layouts.put(key, layout, layout.nbytes)
        return layout

    def _batch_layout(self, grids: Sequence[Grid]) -> _BatchLayout:
        layouts = [self._grid_layout(grid) for grid in grids]
        frames = plan_segments([layout.frame_length for layout in layouts for _ in range(layout.frames)], self.device)
        if self._window_units is None:
            return _BatchLayout(
                torch.cat([layout.cos for layout in layouts]),
                torch.cat([layout.sin for layout in layouts]),
                None,
                None,
                None,
                frames,
            )
        # Each image's window order moves only its own merged units: offset by the units before it.
        unit = self._merge * self._merge
        forward: list[torch.Tensor] = []
        backward: list[torch.Tensor] = []
        offset = 0
        for layout in layouts:
            if layout.window_index is None or layout.reverse_index is None:
                raise RuntimeError("a windowed tower's grid layout has no window order")
            forward.append(layout.window_index + offset)
            backward.append(layout.reverse_index + offset)
            offset += layout.patches // unit
        window_index, reverse_index = torch.cat(forward), torch.cat(backward)
        windows = plan_segments([length for layout in layouts for length in layout.window_lengths], self.device)
        return _BatchLayout(
            torch.cat([layout.cos for layout in layouts]),
            torch.cat([layout.sin for layout in layouts]),
            window_index,
            reverse_index,
            windows,
            frames,
        )

    # -- the forward -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor, grids: Sequence[Grid]) -> torch.Tensor:
        """The merged features of every image, image after image: (Σ t·h·w / merge², output width)."""
        if not self.supported or self.attention == TRANSFORMERS:
            raise RuntimeError("this tower runs through transformers' forward; call the model's get_image_features")
        visual = self.visual
        layout = self._batch_layout(grids)
        hidden = visual.patch_embed(pixel_values.to(self.device, self.dtype))
        unit = self._merge * self._merge
        if layout.window_index is not None:
            hidden = hidden.view(-1, unit, hidden.shape[-1])[layout.window_index].view(-1, hidden.shape[-1])
        attend = _ATTENTION[self.attention]
        for number, block in enumerate(visual.blocks):
            segments = layout.frames if layout.windows is None or number in self._full_layers else layout.windows
            hidden = hidden + self._attention(block.attn, block.norm1(hidden), layout, segments, attend)
            hidden = hidden + block.mlp(block.norm2(hidden))
        merged = visual.merger(hidden)
        if layout.reverse_index is not None:
            merged = merged[layout.reverse_index]
        return merged  # type: ignore[no-any-return]

    def _attention(
        self,
        module: Any,
        hidden: torch.Tensor,
        layout: _BatchLayout,
        segments: Segments,
        attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Segments], torch.Tensor],
    ) -> torch.Tensor:
        """The block's attention with transformers' arithmetic: rotary in float32, scale 1/√head_dim."""
        length = hidden.shape[0]
        heads = int(module.num_heads)
        query, key, value = module.qkv(hidden).reshape(length, 3, heads, -1).unbind(1)
        query, key = _rotate(query, layout.cos, layout.sin), _rotate(key, layout.cos, layout.sin)
        output = attend(query, key, value, segments)
        self.attention_calls += len(segments.groups) if self.attention == SDPA_PACKED else 1
        return module.proj(output.reshape(length, -1))  # type: ignore[no-any-return]


def _rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on (patches, heads, head_dim) states, computed in float32 as transformers does."""
    original = states.dtype
    states = states.float()
    half = states.shape[-1] // 2
    rotated = torch.cat((-states[..., half:], states[..., :half]), dim=-1)
    return (states * cos.unsqueeze(-2) + rotated * sin.unsqueeze(-2)).to(original)


# -- the attention paths: (patches, heads, head_dim) in and out ----------------------------------------


def _sdpa_packed(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segments: Segments) -> torch.Tensor:
    heads, head_dim = query.shape[1], query.shape[2]
    outputs = []
    for group in segments.groups:

        def stack(states: torch.Tensor, group: _Group = group) -> torch.Tensor:
            if group.gather is not None:
                states = states.index_select(0, group.gather)
            return states.view(group.count, group.width, heads, head_dim).transpose(1, 2)

        attended = F.scaled_dot_product_attention(stack(query), stack(key), stack(value), attn_mask=group.mask)
        outputs.append(attended.transpose(1, 2).reshape(group.count * group.width, heads, head_dim))
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return output if segments.inverse is None else output.index_select(0, segments.inverse)


def _flash_varlen(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segments: Segments) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    cu, longest = segments.cu_seqlens, segments.max_length
    output: torch.Tensor = flash_attn_varlen_func(
        query.contiguous(), key.contiguous(), value.contiguous(), cu, cu, longest, longest
    )
    return output


def _torch_varlen(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segments: Segments) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    cu, longest = segments.cu_seqlens, segments.max_length
    output = varlen_attn(query.contiguous(), key.contiguous(), value.contiguous(), cu, cu, longest, longest)
    return output[0] if isinstance(output, tuple) else output


_ATTENTION: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Segments], torch.Tensor]] = {
    SDPA_PACKED: _sdpa_packed,
    FLASH_VARLEN: _flash_varlen,
    TORCH_VARLEN: _torch_varlen,
}
