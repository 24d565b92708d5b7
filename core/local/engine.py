"""The batching engine: turns (query, documents) into yes/no probabilities with as little work as possible.

What it does, and why:

- Each pair is rendered with the profile's layout and the checkpoint's own chat template, then tokenised
  once, user text always as literal text: the only control tokens in a prompt are the template's and
  the image slots' (a document cannot write the assistant's answer; see ``prompting``).
- Images are decoded once per distinct content, reduced to the processor's pixel bounds right after
  decoding (never cached at full resolution), and preprocessed once per request.
- Pairs are sorted by length and packed into batches of at most ``max_batch_tokens`` padded tokens, so
  short documents are not padded to the longest one; scores come back in input order.
- The vision tower runs once per distinct image, and the new images of a batch go through it together
  (:mod:`~lychee_rerank.core.local.vision`: one attention call per layer for all their windows, not one
  per window); each image's output is kept in an LRU bounded in bytes, so a query image shared by every
  document (and by the next request) is encoded once. Decoded images are cached under a byte budget
  too; the shared prefix's key/value cache lives only for its request.
- Batches fit a memory budget as well as a token budget (:mod:`~lychee_rerank.core.local.budget`): what a
  forward holds grows with its tokens, with the prefix every row attends over, and with the vision
  tower's patches, so the tower runs in chunks of images and the language model in batches that fit.
- System prompt, instruction and query (with its image) are the same for every document of a request:
  that shared token prefix is run once and its key/value cache reused by every batch, so each document
  costs only its own tokens.
- Only the last position's hidden state is projected, and only on the two rows of the output head that
  matter ("yes" and "no"): never the 152k-wide vocabulary.
- On CUDA out-of-memory a batch is split in two and retried, once the failed attempt's memory is
  released (outside the ``except`` block, whose traceback would hold the failed forward's tensors) and
  the vision cache emptied; a single pair that still does not fit is an error that says what to lower.

A pair's score does not depend on what it is batched with: padding sits between the shared prefix and
each document (or on the left) and is masked, positions are computed per row over real tokens only, and
the vision tower attends within each image, so an image's features do not depend on the images
encoded beside it (beyond float rounding: 1e-5 in float32, checked by a test).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lychee_rerank.core.caches import ByteBudgetLRU
from lychee_rerank.core.errors import ImageError, InvalidInputError, ModelLoadError
from lychee_rerank.core.inputs import Document, Query
from lychee_rerank.core.local.budget import DEFAULT_MAX_BATCH_MEMORY, MemoryModel
from lychee_rerank.core.local.imagefit import fit_for
from lychee_rerank.core.local.language import ImageSlot, KeyValues, TextModel, multimodal_positions, next_position
from lychee_rerank.core.local.loading import LoadedModel
from lychee_rerank.core.local.prompting import LiteralPromptEncoder
from lychee_rerank.core.local.vision import TRANSFORMERS, VisionTower
from lychee_rerank.core.media import DEFAULT_IMAGE_CACHE_BYTES, DEFAULT_POLICY, ImageCache, LoadedImage, MediaPolicy
from lychee_rerank.core.profiles import Profile

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_TOKENS = 16384
MIN_SHARED_PREFIX = 8  # below this, reusing a prefix saves less than it costs
# Padding is wasted compute: on a CPU it is pure loss, and on a GPU a batch of similar lengths is as fast
# as a ragged one of the same real size. A member may be at most this much shorter than its batch's longest.
DEFAULT_MAX_PADDING = 0.2
# Vision-tower outputs of recent images. Lychee's largest image is 1280 tokens: about 9 MB of bf16
# features on a 7B model, so this keeps a few dozen of the largest (on the model's device).
DEFAULT_VISION_CACHE_BYTES = 256 * 1024 * 1024
STATS_WINDOW = 1024  # recent batch sizes kept for inspection; the counters cover everything


@dataclass
class _Pair:
    index: int
    input_ids: list[int]
    image_keys: list[str]  # one per image slot, in prompt order

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class _PreparedImage:
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor  # (1, 3)

    @property
    def token_count(self) -> int:
        """Patches: the vision tower's tokens (the language model sees a quarter of them, merged)."""
        return int(self.grid_thw.prod())

    @property
    def grid(self) -> tuple[int, int, int]:
        frames, height, width = (int(value) for value in self.grid_thw[0])
        return frames, height, width


@dataclass
class _Prefix:
    """The tokens every pair of a request starts with, run once; its key/value cache per layer."""

    input_ids: list[int]
    image_keys: list[str]
    key_values: KeyValues
    next_position: int  # where the rows' positions continue from

    @property
    def length(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodedRequest:
    """A request ready for the model (:meth:`ScoringEngine.encode`): its pairs tokenised, its images prepared.

    Attributes:
        pairs: One per document, in order.
        images: The preprocessed images the pairs refer to, by content digest.
    """

    pairs: list[_Pair]
    images: dict[str, _PreparedImage]

    @property
    def tokens(self) -> int:
        """The exact prompt tokens of every pair, image placeholders included."""
        return sum(len(pair) for pair in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)


@dataclass
class EngineStats:
    """Counters for benchmarks and metrics.

    ``tokens`` counts every pair's full prompt; ``computed_tokens`` what actually ran through the
    language model (a shared prefix once per request); ``padded_tokens`` includes padding.
    ``batch_sizes`` holds only the most recent :data:`STATS_WINDOW` batches (a service runs for months);
    ``pairs / batches`` is the mean over all of them.
    ``vision_encoded`` counts images through the vision tower, ``vision_forwards`` the tower's forward
    passes (several images share one), ``vision_patches`` the patches they encoded and
    ``vision_attention_calls`` the attention kernels they called (the engine's own tower only).
    """

    pairs: int = 0
    batches: int = 0
    tokens: int = 0
    computed_tokens: int = 0
    prefix_tokens_reused: int = 0
    padded_tokens: int = 0
    vision_encoded: int = 0
    vision_forwards: int = 0
    vision_patches: int = 0
    vision_attention_calls: int = 0
    vision_cache_hits: int = 0
    oom_splits: int = 0
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an accelerator out-of-memory error (the typed one or an older message)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def pack_batches(
    lengths: Sequence[int], max_batch_tokens: int, *, max_padding: float = DEFAULT_MAX_PADDING, row_overhead: int = 0
) -> list[list[int]]:
    """Groups indices, longest first, into batches that bound both memory and wasted work.

    A batch holds at most ``max_batch_tokens`` padded tokens (``size * (longest + row_overhead)``: the
    overhead is what each row costs beyond its own tokens, such as a shared prefix it attends over), and
    no member is shorter than ``(1 - max_padding)`` of the batch's longest, so padding never costs more
    than that fraction of a member's work. A pair longer than the budget gets a batch of its own.

    Example:
        >>> pack_batches([50, 48, 90, 30], max_batch_tokens=100)
        [[2], [0, 1], [3]]
        >>> pack_batches([100, 95, 40, 38], max_batch_tokens=1000)
        [[0, 1], [2, 3]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted longest first, so the batch's padded width is its first member's length.
        width = lengths[current[0]] if current else lengths[index]
        too_big = (len(current) + 1) * (width + row_overhead) > max_batch_tokens
        too_short = lengths[index] < (1 - max_padding) * width
        if current and (too_big or too_short):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class ScoringEngine:
    """Scores (query, document) pairs with a loaded yes/no reranker.

    Not for concurrent use from several threads: :class:`~lychee_rerank.core.LocalReranker` serialises
    calls.

    Args:
        loaded: The model and processor.
        profile: The prompt layout and answer tokens.
        max_batch_tokens: Padded tokens per forward pass.
        media_policy: Where images may come from and how large they may be.
        vision_cache_bytes: Bytes of vision-tower outputs kept for images seen recently (on the model's
            device); 0 turns the cache off.
        image_cache_bytes: Bytes of decoded pixels kept for images seen recently (reduced to the
            processor's pixel bounds; an RGB pixel holds 4 bytes); 0 turns the cache off.
        reuse_prefix: Run the prompt part shared by all documents of a request once.
        max_padding: How much shorter than its batch's longest a pair may be.
        max_batch_memory: Bytes of activations one forward may hold (estimated from the model's shape:
            tokens, the prefix each row attends over, vision patches); None: ``max_batch_tokens`` alone.
        vision_attention: How the vision tower attends (:data:`~lychee_rerank.core.local.vision.
            VISION_ATTENTION_PATHS`); None picks the fastest that works here (:attr:`vision_attention`).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        profile: Profile,
        *,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        media_policy: MediaPolicy = DEFAULT_POLICY,
        vision_cache_bytes: int = DEFAULT_VISION_CACHE_BYTES,
        image_cache_bytes: int = DEFAULT_IMAGE_CACHE_BYTES,
        reuse_prefix: bool = True,
        max_padding: float = DEFAULT_MAX_PADDING,
        max_batch_memory: int | None = DEFAULT_MAX_BATCH_MEMORY,
        vision_attention: str | None = None,
    ) -> None:
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
        if max_batch_memory is not None and max_batch_memory < 1:
            raise ValueError(f"max_batch_memory must be positive bytes or None, got {max_batch_memory}")
        if not 0.0 <= max_padding <= 1.0:
            raise ValueError(f"max_padding must be between 0 and 1, got {max_padding}")
        for name, budget in (("vision_cache_bytes", vision_cache_bytes), ("image_cache_bytes", image_cache_bytes)):
            if budget < 0:
                raise ValueError(f"{name} must be 0 or more, got {budget}")
        self.max_padding = max_padding
        self.loaded = loaded
        self.profile = profile
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_memory = max_batch_memory
        self.memory = MemoryModel.of(loaded.model.config, loaded.dtype)
        self.media_policy = media_policy
        self.reuse_prefix = reuse_prefix
        # Positions are computed here (per full row, for the shared-prefix path) with the model's own
        # Qwen-VL multimodal rope index, so only that family is supported.
        if not hasattr(loaded.model.model, "get_rope_index"):
            raise ModelLoadError(
                f"{loaded.path!r} is a {type(loaded.model).__name__}; the engine scores Qwen-VL family models "
                "(Qwen2-VL, Qwen2.5-VL, Qwen3-VL)"
            )
        self.stats = EngineStats()
        processor = loaded.processor
        self._images = ImageCache(image_cache_bytes, fit=fit_for(processor.image_processor))
        self._vision_cache: ByteBudgetLRU[dict[str, Any]] = ByteBudgetLRU(vision_cache_bytes)
        self._prompts = LiteralPromptEncoder(processor, profile)
        self._lock = threading.Lock()
        # Held around every use of the tokenizer: a fast tokenizer raises "Already borrowed" when one
        # thread changes its settings while another encodes. Whoever else tokenises with it takes it too.
        self.tokenizer_lock = threading.Lock()
        model = loaded.model
        self._base = model.model
        head = model.get_output_embeddings()
        rows = torch.tensor([loaded.positive_token_id, loaded.negative_token_id], device=head.weight.device)
        # The only two rows of the output head a yes/no score needs, kept in float32 for the final dot.
        self._answer_rows = head.weight.detach().index_select(0, rows).float()
        bias = getattr(head, "bias", None)
        self._answer_bias = None if bias is None else bias.detach().index_select(0, rows).float()
        self._image_token_id = int(processor.image_token_id)
        self._merge_size = int(processor.image_processor.merge_size)
        self._merge_length = self._merge_size**2
        self._pad_id = self._pad_token_id()
        self._text = TextModel(self._base, self._image_token_id)
        self._tower = VisionTower(self._base.visual, attention=vision_attention)

    @property
    def vision_attention(self) -> str:
        """How the vision tower attends here: ``flash-attn-varlen``, ``torch-varlen``, ``sdpa-packed``
        (one call per layer for every window of every image) or ``transformers`` (its own forward)."""
        return self._tower.attention

    @property
    def batch_token_limit(self) -> int:
        """Padded tokens per forward: ``max_batch_tokens``, or fewer where ``max_batch_memory`` binds."""
        if self.max_batch_memory is None:
            return self.max_batch_tokens
        return min(self.max_batch_tokens, self.memory.token_limit(self.max_batch_memory))

    # -- public -----------------------------------------------------------------------------------

    def score(
        self,
        query: Query,
        documents: Sequence[Document],
        instruction: str | None = None,
        *,
        media_policy: MediaPolicy | None = None,
    ) -> list[float]:
        """Probabilities that each document satisfies the query, in input order.

        ``media_policy`` replaces the engine's own for this call (a service reads images under its
        settings, whatever the reranker it was given allows).
        """
        if not documents:
            return []
        return self.score_encoded([self.encode(query, documents, instruction, media_policy=media_policy)])[0]

    def score_groups(
        self,
        groups: Sequence[tuple[Query, Sequence[Document], str | None]],
        *,
        media_policy: MediaPolicy | None = None,
    ) -> list[list[float]]:
        """Scores several (query, documents, instruction) requests in shared batches.

        This is how a server merges small concurrent requests with *different* queries into the same
        forward passes. Each pair is run whole (a shared prefix exists only within one query), so for one
        large request :meth:`score` is the better call. Scores equal :meth:`score`'s for each group.

        Raises:
            InvalidInputError: Some group cannot be scored; the message names ``request k: document i``.
        """
        if len(groups) == 1:
            return [self.score(*groups[0], media_policy=media_policy)]
        encoded = []
        for number, (query, documents, instruction) in enumerate(groups):
            try:
                encoded.append(self.encode(query, documents, instruction, media_policy=media_policy))
            except ImageError as error:
                raise error.located(f"request {number}") from error
            except InvalidInputError as error:
                raise InvalidInputError(f"request {number}: {error}") from error
        return self.score_encoded(encoded, share_prefix=False)

    def encode(
        self,
        query: Query,
        documents: Sequence[Document],
        instruction: str | None = None,
        *,
        media_policy: MediaPolicy | None = None,
    ) -> EncodedRequest:
        """Everything about a request that needs no model: images read, decoded and preprocessed, each
        pair rendered and tokenised. ``media_policy`` replaces the engine's own for this call.

        A server calls this before it queues the request (as text-embeddings-inference tokenises before
        its queue), so the scheduler budgets exact token counts and its one model thread never decodes an
        image. Safe to call from several threads at once, and while another thread scores.

        Raises:
            InvalidInputError: A query or document cannot be scored; the message names which.
        """
        if not documents:
            return EncodedRequest([], {})
        images, query_key, document_keys = self._prepare_images(query, documents, media_policy)
        with self.tokenizer_lock:
            pairs = self._encode_pairs(query, documents, instruction, images, query_key, document_keys)
        return EncodedRequest(pairs, images)

    def score_encoded(self, requests: Sequence[EncodedRequest], *, share_prefix: bool = True) -> list[list[float]]:
        """Scores encoded requests in shared batches; each request's scores in its documents' order.

        Args:
            requests: From :meth:`encode`.
            share_prefix: Run the prompt part all pairs share once and reuse its key/value cache (for
                requests with the same query and instruction; harmless otherwise, only less useful).
        """
        pairs: list[_Pair] = []
        images: dict[str, _PreparedImage] = {}
        bounds = [0]
        for request in requests:
            images.update(request.images)
            pairs.extend(replace(pair, index=pair.index + bounds[-1]) for pair in request.pairs)
            bounds.append(len(pairs))
        if not pairs:
            return [[] for _ in requests]
        with self._lock:
            prefix = self._run_prefix(pairs, images) if share_prefix and self.reuse_prefix and len(pairs) > 1 else None
            if prefix:
                self.stats.prefix_tokens_reused += prefix.length * (len(pairs) - 1)
            scores = self._score_pairs(pairs, images, prefix)
        return [scores[start:end] for start, end in itertools.pairwise(bounds)]

    def _score_pairs(
        self, pairs: list[_Pair], images: dict[str, _PreparedImage], prefix: _Prefix | None
    ) -> list[float]:
        """Packs ``pairs`` into batches and scores them; results by ``pair.index``.

        The scores stay on the device until every batch is queued: reading each batch's scores back
        would make the CPU wait for it before it could prepare and queue the next one.
        """
        skip = prefix.length if prefix else 0
        order: list[int] = []
        pending: list[torch.Tensor] = []
        overhead = self.memory.row_overhead(skip) if self.max_batch_memory is not None else 0
        for batch in pack_batches(
            [len(pair) - skip for pair in pairs],
            self.batch_token_limit,
            max_padding=self.max_padding,
            row_overhead=overhead,
        ):
            members = [pairs[i] for i in batch]
            pending.append(self._score_with_retry(members, images, prefix))
            order.extend(pair.index for pair in members)
        scores = [0.0] * len(pairs)
        for index, value in zip(order, torch.cat(pending).cpu().tolist(), strict=True):
            scores[index] = float(value)
        self.stats.pairs += len(pairs)
        self.stats.tokens += sum(len(pair) for pair in pairs)
        return scores

    @property
    def image_cache(self) -> ImageCache:
        """Decoded images by content (``nbytes``, ``max_bytes``, hits and misses)."""
        return self._images

    @property
    def vision_cache(self) -> ByteBudgetLRU[dict[str, Any]]:
        """Vision-tower outputs by image content (``nbytes``, ``max_bytes``)."""
        return self._vision_cache

    @property
    def text_tokenizer(self) -> Any:
        """A ``tokenizers.Tokenizer`` that reads text as prompts read user text: no added tokens at all.

        Count or truncate query and document text with it, so limits agree with what is scored: the
        checkpoint's own tokenizer would count ``<|im_end|>`` as one token where the prompt holds several.
        """
        return self._prompts.plain_tokenizer

    def clear_caches(self) -> None:
        """Forgets decoded images and cached vision-tower outputs."""
        with self._lock:
            self._images.clear()
            self._vision_cache.clear()

    # -- preparing inputs -------------------------------------------------------------------------

    def _load(self, source: Any, where: str, policy: MediaPolicy | None) -> LoadedImage:
        try:
            return self._images.get_or_load(source, policy or self.media_policy)
        except ImageError as error:
            raise error.located(where) from error.__cause__

    def _prepare_images(
        self, query: Query, documents: Sequence[Document], policy: MediaPolicy | None = None
    ) -> tuple[dict[str, _PreparedImage], str | None, list[str | None]]:
        """Decodes and preprocesses every distinct image of the request once.

        Returns:
            The prepared images by content digest, the query image's digest, and each document's.
        """
        prepared: dict[str, _PreparedImage] = {}

        def prepare(source: Any, where: str) -> str:
            loaded = self._load(source, where, policy)
            if loaded.digest not in prepared:
                try:
                    features = self.loaded.processor.image_processor(images=[loaded.image], return_tensors="pt")
                except ValueError as error:  # e.g. an aspect ratio over 200:1
                    raise ImageError(
                        f"{where}: the image cannot be prepared for the model: {error}", reason="undecodable"
                    ) from error
                prepared[loaded.digest] = _PreparedImage(features["pixel_values"], features["image_grid_thw"])
            return loaded.digest

        query_key = None if query.image is None else prepare(query.image, "query")
        document_keys = [
            None if document.image is None else prepare(document.image, f"document {index}")
            for index, document in enumerate(documents)
        ]
        return prepared, query_key, document_keys

    def render(self, query: Query, document: Document, instruction: str | None = None) -> str:
        """The exact prompt text for one pair, with one ``<|image_pad|>`` per image (golden tests pin it).

        User text appears here as it was given; :meth:`encode_pair` tokenises it as literal characters, so a
        control-token string in it is not a control token in the prompt.
        """
        return self._prompts.text(self._prompts.render(query, document, instruction))

    def encode_pair(self, query: Query, document: Document, instruction: str | None = None) -> list[int]:
        """The token ids of one text pair's prompt (image pairs need their images: see :meth:`encode`)."""
        if query.has_image or document.has_image:
            raise InvalidInputError("encode_pair() takes text pairs only; images are expanded when scoring")
        return self._prompts.encode([(self._prompts.render(query, document, instruction), [])])[0]

    def _encode_pairs(
        self,
        query: Query,
        documents: Sequence[Document],
        instruction: str | None,
        images: dict[str, _PreparedImage],
        query_key: str | None,
        document_keys: list[str | None],
    ) -> list[_Pair]:
        prompts = []
        pair_keys: list[list[str]] = []
        for index, document in enumerate(documents):
            try:
                prompt = self._prompts.render(query, document, instruction)
            except InvalidInputError as error:
                raise InvalidInputError(f"document {index}: {error}") from None
            keys = [
                key
                for slot in self.profile.image_order(query, document)
                if (key := query_key if slot == "query" else document_keys[index]) is not None
            ]
            # Each image slot becomes as many placeholder tokens as the image yields, as the processor does.
            prompts.append((prompt, [images[key].token_count // self._merge_length for key in keys]))
            pair_keys.append(keys)
        encoded = self._prompts.encode(prompts)
        return [_Pair(i, ids, keys) for i, (ids, keys) in enumerate(zip(encoded, pair_keys, strict=True))]

    def _image_runs(self, input_ids: list[int]) -> list[tuple[int, int]]:
        """(start, end) of each run of image placeholder tokens, in order: one run per image."""
        runs: list[tuple[int, int]] = []
        start = None
        for position, token in enumerate([*input_ids, -1]):
            if token == self._image_token_id and start is None:
                start = position
            elif token != self._image_token_id and start is not None:
                runs.append((start, position))
                start = None
        return runs

    def shared_prefix(self, pairs: Sequence[_Pair]) -> tuple[int, int]:
        """How many leading tokens every pair shares, and how many images lie within them.

        Token ids are compared, not text, so the prefix is exactly what a full forward would see. The
        prefix never cuts an image in two and holds only images that are the same in every pair (two
        different images of one size have identical placeholder tokens), and it leaves every pair at least
        one token of its own.
        """
        first = pairs[0].input_ids
        length = min(len(pair) for pair in pairs)
        for pair in pairs[1:]:
            length = next((i for i in range(length) if pair.input_ids[i] != first[i]), length)
        length = min(length, min(len(pair) for pair in pairs) - 1)
        runs = self._image_runs(pairs[0].input_ids[: length + 1])
        images = 0
        for image, (start, end) in enumerate(runs):
            same_image = all(pair.image_keys[image] == pairs[0].image_keys[image] for pair in pairs)
            if end > length or not same_image:
                length = start
                break
            images += 1
        return length, images

    @torch.inference_mode()
    def _run_prefix(self, pairs: Sequence[_Pair], images: dict[str, _PreparedImage]) -> _Prefix | None:
        length, image_count = self.shared_prefix(pairs)
        if length < MIN_SHARED_PREFIX:
            return None
        ids = pairs[0].input_ids[:length]
        keys = pairs[0].image_keys[:image_count]
        try:
            _, key_values = self._forward([ids], [keys], images, prefix=None, record=True)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            out_of_memory = True
        else:
            out_of_memory = False
        if out_of_memory:
            # Scoring without the shared prefix needs no more memory per pair than scoring with it.
            logger.warning("out of memory on the shared prefix (%d tokens); scoring without it", length)
            self._release_memory()
            return None
        self.stats.computed_tokens += length
        return _Prefix(ids, keys, key_values, next_position(length, self._slots(ids, keys, images)))

    def _pad_token_id(self) -> int:
        tokenizer = self.loaded.tokenizer
        if tokenizer.pad_token_id is not None:
            return int(tokenizer.pad_token_id)
        if tokenizer.eos_token_id is not None:
            return int(tokenizer.eos_token_id)
        return 0

    # -- running the model ------------------------------------------------------------------------

    def _score_with_retry(
        self, pairs: list[_Pair], images: dict[str, _PreparedImage], prefix: _Prefix | None
    ) -> torch.Tensor:
        """Scores one batch; on out-of-memory, halves it until every part fits (a lone pair that does not
        fit is an error that says what to lower)."""
        try:
            return self._score_batch(pairs, images, prefix)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        # Retried only here, outside the except block: inside it, the exception's traceback would keep
        # every frame of the failed forward alive, with the activations it had allocated, through every
        # retry below (and their own failures would stack on top).
        self._release_memory()
        if len(pairs) == 1:
            raise InvalidInputError(
                f"document {pairs[0].index} alone ({len(pairs[0])} tokens) does not fit in accelerator "
                f"memory ({reason}); lower max_pixels or shorten the document"
            )
        self.stats.oom_splits += 1
        half = len(pairs) // 2
        logger.warning("out of memory on a batch of %d pairs; retrying as %d + %d", len(pairs), half, len(pairs) - half)
        first = self._score_with_retry(pairs[:half], images, prefix)
        return torch.cat([first, self._score_with_retry(pairs[half:], images, prefix)])

    def _release_memory(self) -> None:
        """What an out-of-memory retry can do without: cached vision outputs (on the device; recomputed
        when needed) and the allocator's free blocks (returned, so the retry is not refused by
        fragmentation)."""
        self._vision_cache.clear()
        if self.loaded.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def _score_batch(
        self, pairs: list[_Pair], images: dict[str, _PreparedImage], prefix: _Prefix | None
    ) -> torch.Tensor:
        """The scores of one batch, on the device, in ``pairs``' order."""
        skip = prefix.length if prefix else 0
        skip_images = len(prefix.image_keys) if prefix else 0
        last, _ = self._forward(
            [pair.input_ids[skip:] for pair in pairs],
            [pair.image_keys[skip_images:] for pair in pairs],
            images,
            prefix=prefix,
        )
        logits = last.float() @ self._answer_rows.T
        if self._answer_bias is not None:
            logits = logits + self._answer_bias
        # softmax over (yes, no) is the logistic of the difference.
        scores = torch.sigmoid(logits[:, 0] - logits[:, 1])
        width = max(len(pair) - skip for pair in pairs)
        self.stats.batches += 1
        self.stats.computed_tokens += sum(len(pair) - skip for pair in pairs)
        self.stats.padded_tokens += len(pairs) * width
        self.stats.batch_sizes.append(len(pairs))
        return scores

    def _forward(
        self,
        rows: list[list[int]],
        row_image_keys: list[list[str]],
        images: dict[str, _PreparedImage],
        *,
        prefix: _Prefix | None,
        record: bool = False,
    ) -> tuple[torch.Tensor, KeyValues]:
        """Runs the language model on ``rows`` (each continuing ``prefix``, if any): the last position's
        hidden state per row, and (with ``record``) each layer's keys and values.

        Rows are padded on the left of their own tokens, i.e. between the shared prefix and the row, and
        the padding is masked. Positions (Qwen-VL's 3-D multimodal positions when images are present) are
        computed over each row's real tokens, continuing from the prefix.
        """
        device = self.loaded.device
        prefix_length = prefix.length if prefix else 0
        width = max(len(row) for row in rows)
        input_ids = torch.tensor([[self._pad_id] * (width - len(row)) + row for row in rows], dtype=torch.long)
        attention_mask = torch.ones((len(rows), prefix_length + width), dtype=torch.long)
        for index, row in enumerate(rows):
            attention_mask[index, prefix_length : prefix_length + width - len(row)] = 0
        slots = [self._slots(row, keys, images) for row, keys in zip(rows, row_image_keys, strict=True)]
        positions = multimodal_positions(
            [len(row) for row in rows],
            slots,
            width,
            starts=None if prefix is None else [prefix.next_position] * len(rows),
        )
        features, deepstack = self._vision_features([key for keys in row_image_keys for key in keys], images)
        return self._text(
            input_ids.to(device),
            attention_mask.to(device),
            positions.to(device),
            prefix=None if prefix is None else prefix.key_values,
            image_features=features,
            deepstack=deepstack,
            record=record,
        )

    def _slots(self, row: list[int], keys: list[str], images: dict[str, _PreparedImage]) -> list[ImageSlot]:
        """Each image of ``row``: its placeholder run and its merged grid."""
        merge = self._merge_size
        slots = []
        for (start, end), key in zip(self._image_runs(row), keys, strict=True):
            frames, height, width = images[key].grid
            slots.append(ImageSlot(start, end, (frames, height // merge, width // merge)))
        return slots

    def _vision_features(
        self, image_keys: list[str], images: dict[str, _PreparedImage]
    ) -> tuple[torch.Tensor | None, list[torch.Tensor] | None]:
        """The features of each image slot, joined in slot order (and Qwen3-VL's deepstack layers),
        encoding only images not seen recently."""
        if not image_keys:
            return None, None
        wanted = list(dict.fromkeys(image_keys))
        found = {key: value for key in wanted if (value := self._vision_cache.get(key)) is not None}
        self.stats.vision_cache_hits += len(found)
        missing = [key for key in wanted if key not in found]
        for key, value in zip(missing, self._encode_images([images[key] for key in missing]), strict=True):
            found[key] = value
            self._vision_cache.put(key, value, _vision_nbytes(value))
        self.stats.vision_encoded += len(missing)
        # Joined from this call's own dict: a cache smaller than the batch's images may already have
        # evicted some of them.
        parts = [found[key] for key in image_keys]
        features = torch.cat([part["features"] for part in parts])
        if "deepstack" not in parts[0]:
            return features, None
        layers = len(parts[0]["deepstack"])
        return features, [torch.cat([part["deepstack"][layer] for part in parts]) for layer in range(layers)]

    def _encode_images(self, prepared: list[_PreparedImage]) -> list[dict[str, Any]]:
        """Vision outputs of ``prepared``, one per image: the images go through the tower together, in as
        few forwards as ``max_batch_memory`` allows (on a GPU, ~30 layers of small kernels per image
        would otherwise cost more in launches than in arithmetic)."""
        limit = None if self.max_batch_memory is None else self.memory.patch_limit(self.max_batch_memory)
        outputs: list[dict[str, Any]] = []
        chunk: list[_PreparedImage] = []
        patches = 0
        for image in prepared:
            if chunk and limit is not None and patches + image.token_count > limit:
                outputs += self._encode_chunk(chunk)
                chunk, patches = [], 0
            chunk.append(image)
            patches += image.token_count
        if chunk:
            outputs += self._encode_chunk(chunk)
        return outputs

    @torch.inference_mode()
    def _encode_chunk(self, prepared: list[_PreparedImage]) -> list[dict[str, Any]]:
        """One vision forward over the concatenated patches of ``prepared``; one output per image."""
        device = self.loaded.device
        pixel_values = torch.cat([image.pixel_values for image in prepared]).to(device)
        grids = [image.grid for image in prepared]
        deepstack: list[torch.Tensor] | None = None
        if self._tower.attention == TRANSFORMERS:
            visual = self._base.visual
            grid_thw = torch.tensor(grids, dtype=torch.long, device=device)
            features, deepstack = _tower_output(visual(pixel_values.to(visual.dtype), grid_thw=grid_thw))
        else:
            calls = self._tower.attention_calls
            features = self._tower(pixel_values, grids)
            self.stats.vision_attention_calls += self._tower.attention_calls - calls
        self.stats.vision_forwards += 1
        self.stats.vision_patches += sum(image.token_count for image in prepared)
        sizes = [image.token_count // self._merge_length for image in prepared]
        return _split_vision_output(features, deepstack, sizes)


def _tower_output(output: Any) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """A vision tower's merged features and deepstack layers, whichever form this transformers returns
    them in (a tensor, a tuple, or an output object with ``pooler_output``)."""
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, tuple):
        return output[0], list(output[1]) if len(output) > 1 else None
    deepstack = getattr(output, "deepstack_features", None)
    return output.pooler_output, None if deepstack is None else list(deepstack)


def _vision_nbytes(output: dict[str, Any]) -> int:
    """The bytes the tensors of one image's vision output hold."""
    tensors = [output["features"], *output.get("deepstack", [])]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def _split_vision_output(
    features: torch.Tensor, deepstack: list[torch.Tensor] | None, sizes: list[int]
) -> list[dict[str, Any]]:
    """Per-image pieces of a vision forward's output (features, and deepstack layers where present).

    A piece of a several-image output is copied, so that a cached image holds its own memory and not
    the whole batch's.
    """

    def pieces(tensor: torch.Tensor) -> list[torch.Tensor]:
        if len(sizes) == 1:
            return [tensor]
        return [piece.clone() for piece in torch.split(tensor, sizes)]

    parts: list[dict[str, Any]] = [{"features": piece} for piece in pieces(features)]
    if deepstack is not None:
        layers = [pieces(layer) for layer in deepstack]
        for index, part in enumerate(parts):
            part["deepstack"] = [layer[index] for layer in layers]
    return parts
