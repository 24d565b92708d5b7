"""Reducing a decoded image to what the model will see, right after decoding.

A Qwen-VL image processor resizes every image into its pixel bounds (``min_pixels`` to ``max_pixels``,
sides multiples of patch size times merge size, aspect ratio kept). An image larger than the bounds is
only ever seen at that reduced size, so keeping its full resolution in a cache is pure waste: a
6000x6000 photo holds 144 MB of pixels, its reduced copy about 4 MB.

:class:`ProcessorFit` does the processor's own reduction early: the same target size (the processor's
``smart_resize``) and the same resampling (the processor's backend: torchvision's antialiased bicubic on
the uint8 pixels, or Pillow's). The processor then finds the image already at its target size and leaves
it as it is, so a reduced image is scored exactly as the full-resolution one would be. Images within
the bounds are never touched (the processor still rounds them to whole patches itself), and nothing is
ever enlarged here.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from PIL import Image

logger = logging.getLogger(__name__)


def _bound(image_processor: Any, size_key: str, attribute: str) -> int | None:
    size = getattr(image_processor, "size", None)
    value = getattr(size, size_key, None)
    if value is None and isinstance(size, dict):
        value = size.get(size_key)
    if value is None:
        value = getattr(image_processor, attribute, None)
    return None if value is None else int(value)


class ProcessorFit:
    """Reduces images over an image processor's ``max_pixels`` to exactly the size it would resize them to.

    Args:
        image_processor: A Qwen-VL image processor (``Qwen2VLImageProcessor`` and its peers).

    Raises:
        ValueError: The processor does not say its pixel bounds, patch size and merge size.
    """

    def __init__(self, image_processor: Any) -> None:
        min_pixels = _bound(image_processor, "shortest_edge", "min_pixels")
        max_pixels = _bound(image_processor, "longest_edge", "max_pixels")
        patch_size = getattr(image_processor, "patch_size", None)
        merge_size = getattr(image_processor, "merge_size", None)
        if min_pixels is None or max_pixels is None or patch_size is None or merge_size is None:
            raise ValueError(
                f"{type(image_processor).__name__} does not say its pixel bounds, patch size and merge size"
            )
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.factor = int(patch_size) * int(merge_size)
        self.resample = int(getattr(image_processor, "resample", Image.Resampling.BICUBIC))
        module = sys.modules.get(type(image_processor).__module__)
        self._smart_resize: Callable[..., tuple[int, int]] = getattr(module, "smart_resize", None) or _qwen2_vl_rule()
        self._torchvision = _is_torchvision_backend(image_processor)

    def target_size(self, width: int, height: int) -> tuple[int, int] | None:
        """(width, height) the processor would reduce this image to, or ``None`` when it would not reduce it."""
        if width * height <= self.max_pixels:
            return None
        try:
            target_height, target_width = self._smart_resize(
                height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
            )
        except ValueError:  # an aspect ratio the processor refuses: it says so when the image is prepared
            return None
        if target_width >= width and target_height >= height:
            return None
        return target_width, target_height

    def __call__(self, image: Image.Image) -> Image.Image:
        """The image at the processor's target size, or the image itself when it is within the bounds."""
        target = self.target_size(*image.size)
        if target is None:
            return image
        if self._torchvision:
            return _torchvision_resize(image, target, self.resample)
        return image.resize(target, resample=Image.Resampling(self.resample))


def fit_for(image_processor: Any) -> ProcessorFit | None:
    """A :class:`ProcessorFit` for ``image_processor``, or ``None`` (with a warning) when it cannot be built."""
    try:
        return ProcessorFit(image_processor)
    except ValueError as error:
        logger.warning("decoded images are cached at full resolution: %s", error)
        return None


def _qwen2_vl_rule() -> Callable[..., tuple[int, int]]:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    rule: Callable[..., tuple[int, int]] = smart_resize
    return rule


def _is_torchvision_backend(image_processor: Any) -> bool:
    try:
        from transformers.image_processing_backends import TorchvisionBackend
    except ImportError:  # an older transformers: the fast processors are named ...Fast
        return type(image_processor).__name__.endswith("Fast")
    return isinstance(image_processor, TorchvisionBackend)


def _torchvision_resize(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    """Resizes as the torchvision backend does: uint8 channels-first pixels, antialiased."""
    import numpy as np
    import torch
    from torchvision.transforms.v2 import functional as tvf
    from transformers.image_utils import pil_torch_interpolation_mapping

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    pixels = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()
    width, height = size
    resized = tvf.resize(
        pixels.unsqueeze(0), [height, width], interpolation=pil_torch_interpolation_mapping[resample], antialias=True
    )[0]
    return Image.fromarray(resized.permute(1, 2, 0).contiguous().numpy())
