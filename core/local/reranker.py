"""``LocalReranker``: Lychee-Rerank-MM (or a peer) in this process, on a GPU or the CPU."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from lychee_rerank.core.inputs import DocumentLike, QueryLike, as_documents, as_query
from lychee_rerank.core.interface import BaseReranker
from lychee_rerank.core.local.budget import DEFAULT_MAX_BATCH_MEMORY
from lychee_rerank.core.local.engine import (
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_PADDING,
    DEFAULT_VISION_CACHE_BYTES,
    ScoringEngine,
)
from lychee_rerank.core.local.loading import LoadedModel, load_model
from lychee_rerank.core.media import DEFAULT_IMAGE_CACHE_BYTES, DEFAULT_POLICY, MediaPolicy
from lychee_rerank.core.profiles import DEFAULT_PROFILE, Profile, get_profile, resolve_instruction


class LocalReranker(BaseReranker):
    """Lychee-Rerank-MM (or a peer) in this process, on a GPU or the CPU.

    Args:
        model: A hub id, a folder holding a Hugging Face checkpoint, or ``"tiny"`` (a random test
            checkpoint: its scores mean nothing). Defaults to the profile's model.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``...; default: CUDA when available, else CPU.
        dtype: ``"bfloat16"``, ``"float16"``, ``"float32"`` or a ``torch.dtype``; default: bf16 on
            CUDA, float32 on CPU.
        profile: A profile name (``"lychee"``, ``"qwen3-vl-reranker"``, ``"monoqwen2-vl"``) or object.
        max_batch_tokens: Padded tokens per forward pass; lower it on small GPUs.
        min_pixels: Lower pixel bound for images after resizing; default: the profile's.
        max_pixels: Upper pixel bound for images after resizing; default: the profile's.
        media_policy: How images may be read (URLs, local paths, size caps).
        attn_implementation: Force an attention kernel (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``).
        reuse_prefix: Run the prompt part shared by all documents of a request (system prompt,
            instruction, query and its image) once and reuse its key/value cache. Scores are the same
            either way; turning it off only costs time.
        max_padding: A pair joins a batch only if it is at most this fraction shorter than the batch's
            longest: padding is wasted work. 1.0 packs by ``max_batch_tokens`` alone.
        image_cache_bytes: Memory for decoded images seen recently, in bytes of pixels (each reduced
            to ``max_pixels`` first, an RGB pixel holding 4 bytes); default 256 MiB; 0 turns it off.
        vision_cache_bytes: Memory for vision-tower outputs of images seen recently, on the model's
            device; default 256 MiB; 0 turns it off.
        max_batch_memory: Bytes of activations one forward may hold, estimated from the model's shape
            (its tokens, the shared prefix each row attends over, the vision tower's patches); default
            1 GiB, which keeps a 7B model's peak above its weights under 2 GB. None: tokens alone.
        vision_attention: How the vision tower attends: ``"flash-attn-varlen"``, ``"torch-varlen"``,
            ``"sdpa-packed"`` or ``"transformers"`` (its own forward, one call per window); default: the
            fastest that works here (``reranker.engine.vision_attention`` says which).

    Example:
        >>> reranker = LocalReranker(model="tiny")  # doctest: +SKIP
        >>> reranker.score("white shirt", ["a white linen shirt", {"image": "shirt.jpg"}])  # doctest: +SKIP
        [0.53, 0.41]
    """

    def __init__(
        self,
        model: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        profile: str | Profile = DEFAULT_PROFILE,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        media_policy: MediaPolicy = DEFAULT_POLICY,
        attn_implementation: str | None = None,
        reuse_prefix: bool = True,
        max_padding: float = DEFAULT_MAX_PADDING,
        image_cache_bytes: int = DEFAULT_IMAGE_CACHE_BYTES,
        vision_cache_bytes: int = DEFAULT_VISION_CACHE_BYTES,
        max_batch_memory: int | None = DEFAULT_MAX_BATCH_MEMORY,
        vision_attention: str | None = None,
    ) -> None:
        self.profile = get_profile(profile)
        name = model or os.environ.get("LYCHEE_MODEL") or self.profile.default_model
        loaded = load_model(
            name,
            self.profile,
            device=device,
            dtype=dtype,
            attn_implementation=attn_implementation,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
        )
        self.engine = ScoringEngine(
            loaded,
            self.profile,
            max_batch_tokens=max_batch_tokens,
            media_policy=media_policy,
            reuse_prefix=reuse_prefix,
            max_padding=max_padding,
            image_cache_bytes=image_cache_bytes,
            vision_cache_bytes=vision_cache_bytes,
            max_batch_memory=max_batch_memory,
            vision_attention=vision_attention,
        )

    @property
    def loaded(self) -> LoadedModel:
        """The model, processor, device and dtype in use."""
        return self.engine.loaded

    @property
    def model_name(self) -> str:
        """The name the model was loaded by (hub id, folder, or ``tiny``)."""
        return self.engine.loaded.name

    def score(
        self, query: QueryLike, documents: Sequence[DocumentLike], *, instruction: str | None = None
    ) -> list[float]:
        """Probabilities in [0, 1] that each document satisfies the query, in input order.

        Args:
            query: Text, a :class:`Query`, a ``{"text", "image"}`` mapping or a PIL image.
            documents: Each text, a :class:`Document`, a mapping or a PIL image.
            instruction: The task instruction, or a preset name (``"ecommerce"``, ``"academic"``...);
                default: the profile's.

        Raises:
            InvalidInputError: A query or document cannot be scored; the message names which.
        """
        parsed_query = as_query(query)
        parsed = as_documents(documents)
        return self.engine.score(parsed_query, parsed, resolve_instruction(instruction))
