"""Tiny, random, seeded Qwen-VL checkpoints for tests, demos and benchmarks.

Real weights cannot be downloaded everywhere (CI has no model hub). This module writes a complete
Hugging Face checkpoint folder (config, safetensors weights, a byte-level BPE tokenizer with the Qwen
special tokens and single-token answer words, an image processor and a Qwen-style chat template) that
:class:`~lychee_rerank.core.LocalReranker` loads through the ordinary ``from_pretrained`` path. Scores
from it are deterministic but meaningless: it is never used unless asked for by name.

Three architectures, one per profile: ``qwen2_5_vl`` (Lychee-Rerank-MM, the default), ``qwen3_vl``
(Qwen3-VL-Reranker: 16-pixel patches, interleaved multimodal rope, deepstack visual features fed into
the first decoder layers) and ``qwen2_vl`` (MonoQwen2-VL, whose answers are ``True``/``False``). Their
configs follow the published 2B/7B configs in what matters to the engine, at a tiny size.

Example:
    >>> from lychee_rerank.core.testing import write_tiny_checkpoint
    >>> folder = write_tiny_checkpoint("/tmp/lychee-tiny")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lychee_rerank.core.profiles import TINY_MODEL_NAME

RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS.md"
"""A file every checkpoint written here holds, so a service can say its scores mean nothing."""

# Qwen2.5-VL's special tokens. The names matter (the processor and the chat template look them up); the
# ids are whatever the tokenizer gives them and are written into the model config. All of Qwen's are
# here, so that tests can check that no user text ever becomes any of them.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_pad|>",
)
# Qwen's added tokens that are not "special" (tool calls, fill-in-the-middle): added tokens all the same,
# which plain tokenisation would turn into single tokens.
ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)

# The Qwen2-VL chat-template behaviour: a default system turn when none is given, content parts
# concatenated with no separator, one <|image_pad|> inside vision markers per image.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the tokenizer is trained on: the prompt's fixed words, yes/no, English and Chinese product and
# science vocabulary, so that token counts are of a realistic order for benchmarks.
_CORPUS_SEED = """
Judge whether the Document meets the requirements based on the Query and the Instruct provided.
Note that the answer can only be "yes" or "no". yes no yes no yes no
<Instruct>: <Query>: <Document>: Given a web search query, retrieve relevant passages that answer the query
Given a product image and description, retrieve similar products
Given a scientific question, retrieve the figure or table that contains the exact quantitative result
white linen shirt red summer dress running shoes leather handbag wireless headphones stainless steel
The figure shows accuracy versus training steps for three models. Table 2 reports the mean and standard
deviation over five seeds. Revenue grew by twelve percent in the third quarter compared with last year.
A photo of a scratched metal bearing with a crack near the edge. Surface defect, corrosion, dent, burr.
适合小个子女生的显高西装套装，米白色，春夏穿。 纯棉白色衬衫，修身版型。 图表显示了模型在测试集上的准确率。
True False true false relevant irrelevant the a of and to in is that for on with as by this are
"""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a random Qwen2.5-VL model.

    Attributes:
        name: ``tiny``, ``medium``, ``small`` or ``7b``.
        vocab_target: How many BPE tokens the generated tokenizer learns (before special tokens).
    """

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    mrope_section: tuple[int, int, int]
    vision_depth: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_num_heads: int
    fullatt_block_indexes: tuple[int, ...]
    vocab_target: int
    vocab_size: int | None = None  # None: exactly the tokenizer's size


SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape(
        name="tiny",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        mrope_section=(2, 3, 3),
        vision_depth=2,
        vision_hidden_size=32,
        vision_intermediate_size=64,
        vision_num_heads=2,
        fullatt_block_indexes=(1,),
        vocab_target=600,
    ),
    # About 35M parameters: the GPU tests' model, big enough for real kernels (head_dim 64, several
    # attention windows per image, GQA), small enough to write to a temporary folder in seconds.
    "medium": ModelShape(
        name="medium",
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        mrope_section=(8, 12, 12),
        vision_depth=6,
        vision_hidden_size=384,
        vision_intermediate_size=1024,
        vision_num_heads=6,
        fullatt_block_indexes=(2, 5),
        vocab_target=4000,
    ),
    # About 160M parameters: big enough that matmuls dominate on a CPU, small enough for CI machines.
    "small": ModelShape(
        name="small",
        hidden_size=768,
        intermediate_size=2816,
        num_hidden_layers=16,
        num_attention_heads=12,
        num_key_value_heads=2,
        mrope_section=(8, 12, 12),
        vision_depth=8,
        vision_hidden_size=512,
        vision_intermediate_size=1024,
        vision_num_heads=8,
        fullatt_block_indexes=(3, 7),
        vocab_target=4000,
    ),
    # Qwen2.5-VL-7B's published config. Random weights; meant to be built in GPU memory, not written to disk.
    "7b": ModelShape(
        name="7b",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        mrope_section=(16, 24, 24),
        vision_depth=32,
        vision_hidden_size=1280,
        vision_intermediate_size=3420,
        vision_num_heads=16,
        fullatt_block_indexes=(7, 15, 23, 31),
        vocab_target=4000,
        vocab_size=152064,
    ),
}


ARCHITECTURE_NAMES = ("qwen2_5_vl", "qwen3_vl", "qwen2_vl")
"""The ``model_type`` values the tiny writer knows; ``qwen2_5_vl`` is the default."""

ANSWER_WORDS = {"qwen2_5_vl": ("yes", "no"), "qwen3_vl": ("yes", "no"), "qwen2_vl": ("True", "False")}
"""The answer tokens of each architecture's profile, kept single tokens by the generated tokenizer."""


def _corpus(answer_words: tuple[str, ...] = ("yes", "no")) -> list[str]:
    # Repeating the seed text with word-order variations gives BPE enough pair counts to learn merges.
    lines = [line for line in _CORPUS_SEED.strip().splitlines() if line]
    # Words other than yes/no need lines of their own to become single tokens at a line start as well.
    lines += [word for word in answer_words if word not in ("yes", "no")] * 2
    corpus = []
    for repeat in range(20):
        for line in lines:
            words = line.split(" ")
            corpus.append(" ".join(words[repeat % len(words) :] + words[: repeat % len(words)]))
    return corpus


def build_tokenizer(vocab_target: int = 600, *, answer_words: tuple[str, ...] = ("yes", "no")) -> Any:
    """Trains a byte-level BPE tokenizer with Qwen's pre-tokenizer and special tokens.

    Returns:
        A ``transformers`` ``Qwen2Tokenizer`` in which ``yes``, ``no`` and ``answer_words`` are single tokens.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    trainer_tokenizer = Tokenizer(models.BPE())
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trainer_tokenizer.train_from_iterator(_corpus(answer_words), trainer=trainer)
    model_state = json.loads(trainer_tokenizer.to_str())["model"]
    merges = [tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ")) for pair in model_state["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model_state["vocab"], merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.add_tokens(list(ADDED_TOKENS))
    for word in dict.fromkeys(("yes", "no", *answer_words)):
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"the generated tokenizer splits {word!r} into {ids}; adjust the corpus")
    return tokenizer


def _text_config(shape: ModelShape, tokenizer: Any, initializer_range: float, rope: dict[str, Any]) -> dict[str, Any]:
    head_dim = shape.hidden_size // shape.num_attention_heads
    if sum(shape.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {shape.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    token_id = tokenizer.convert_tokens_to_ids
    return {
        "vocab_size": shape.vocab_size or len(tokenizer),
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "mrope_section": list(shape.mrope_section), **rope},
        "initializer_range": initializer_range,
        "bos_token_id": token_id("<|endoftext|>"),
        "eos_token_id": token_id("<|im_end|>"),
        "pad_token_id": token_id("<|endoftext|>"),
    }


def _vision_token_ids(tokenizer: Any) -> dict[str, int]:
    token_id = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": token_id("<|image_pad|>"),
        "video_token_id": token_id("<|video_pad|>"),
        "vision_start_token_id": token_id("<|vision_start|>"),
        "vision_end_token_id": token_id("<|vision_end|>"),
    }


def build_config(
    shape: ModelShape, tokenizer: Any, *, initializer_range: float = 0.02, architecture: str = "qwen2_5_vl"
) -> Any:
    """The config of ``architecture`` (a :data:`ARCHITECTURE_NAMES` entry) for ``shape``, token ids from ``tokenizer``.

    ``qwen3_vl`` follows Qwen3-VL-2B's config where it matters to the engine: head_dim separate from the
    width, ``mrope_interleaved``, 16-pixel patches, learned position embeddings and deepstack indexes;
    ``qwen2_vl`` follows Qwen2-VL-2B's (``embed_dim`` and ``mlp_ratio`` in the vision tower).
    """
    if architecture == "qwen3_vl":
        return _qwen3_vl_config(shape, tokenizer, initializer_range)
    if architecture == "qwen2_vl":
        return _qwen2_vl_config(shape, tokenizer, initializer_range)
    if architecture != "qwen2_5_vl":
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURE_NAMES}")
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=_text_config(shape, tokenizer, initializer_range, {"rope_theta": 1000000.0}),
        vision_config={
            "depth": shape.vision_depth,
            "hidden_size": shape.vision_hidden_size,
            "intermediate_size": shape.vision_intermediate_size,
            "num_heads": shape.vision_num_heads,
            "out_hidden_size": shape.hidden_size,
            "fullatt_block_indexes": list(shape.fullatt_block_indexes),
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "initializer_range": initializer_range,
        },
        **_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )


def _qwen3_vl_config(shape: ModelShape, tokenizer: Any, initializer_range: float) -> Any:
    from transformers import Qwen3VLConfig

    head_dim = shape.hidden_size // shape.num_attention_heads
    text = _text_config(shape, tokenizer, initializer_range, {"rope_theta": 5000000.0, "mrope_interleaved": True})
    depth = shape.vision_depth
    return Qwen3VLConfig(
        text_config={**text, "head_dim": head_dim},
        vision_config={
            "depth": depth,
            "hidden_size": shape.vision_hidden_size,
            "intermediate_size": shape.vision_intermediate_size,
            "num_heads": shape.vision_num_heads,
            "out_hidden_size": shape.hidden_size,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64 if shape.name == "tiny" else 2304,
            # Qwen3-VL-2B taps layers 5, 11, 17 of 24; a few evenly spaced ones here, fed to as many decoder layers.
            "deepstack_visual_indexes": list(range(0, depth, max(1, depth // 3)))[: min(3, shape.num_hidden_layers)],
            "initializer_range": initializer_range,
        },
        **_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )


def _qwen2_vl_config(shape: ModelShape, tokenizer: Any, initializer_range: float) -> Any:
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=_text_config(shape, tokenizer, initializer_range, {"rope_theta": 1000000.0}),
        vision_config={
            "depth": shape.vision_depth,
            "embed_dim": shape.vision_hidden_size,
            "hidden_size": shape.hidden_size,
            "mlp_ratio": max(1, shape.vision_intermediate_size // shape.vision_hidden_size),
            "num_heads": shape.vision_num_heads,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "initializer_range": initializer_range,
        },
        **_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )


def build_processor(
    tokenizer: Any,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    architecture: str = "qwen2_5_vl",
) -> Any:
    """The processor of ``architecture`` around ``tokenizer`` with the Qwen chat template.

    Pixel bounds default to 4 and 64 patches of 2x2 merged patches (28 pixels a side, 32 for Qwen3-VL).
    """
    from transformers import Qwen2VLImageProcessor

    # The processor classes insist on a video processor, though rerank inputs never hold video.
    if architecture == "qwen3_vl":
        from transformers import Qwen3VLProcessor
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        side = 32
        image_processor = Qwen2VLImageProcessor(
            patch_size=16, min_pixels=min_pixels or 4 * side * side, max_pixels=max_pixels or 64 * side * side
        )
        return Qwen3VLProcessor(
            image_processor=image_processor,
            video_processor=Qwen3VLVideoProcessor(),
            tokenizer=tokenizer,
            chat_template=CHAT_TEMPLATE,
        )
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels or 4 * 28 * 28, max_pixels=max_pixels or 64 * 28 * 28)
    if architecture == "qwen2_vl":
        processor_class: Any = Qwen2VLProcessor
    elif architecture == "qwen2_5_vl":
        processor_class = Qwen2_5_VLProcessor
    else:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURE_NAMES}")
    return processor_class(
        image_processor=image_processor,
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(
    shape: ModelShape,
    tokenizer: Any,
    *,
    seed: int = 0,
    initializer_range: float = 0.02,
    architecture: str = "qwen2_5_vl",
) -> Any:
    """A randomly initialised ``...ForConditionalGeneration`` of ``architecture`` and ``shape`` (float32, CPU)."""
    import torch
    import transformers

    config = build_config(shape, tokenizer, initializer_range=initializer_range, architecture=architecture)
    model_class = {
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": transformers.Qwen3VLForConditionalGeneration,
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
    }[architecture]
    torch.manual_seed(seed)
    model = model_class(config)
    _calibrate_answer_rows(model, tokenizer, seed, ANSWER_WORDS[architecture])
    return model.eval()


def _calibrate_answer_rows(
    model: Any, tokenizer: Any, seed: int, answer_words: tuple[str, ...] = ("yes", "no")
) -> None:
    """Sets the answer rows ("yes"/"no") of the output head so that random-model scores spread over (0, 1).

    With random rows, yes-minus-no is dominated by what every prompt shares (the same closing tokens),
    so every score would sit at one value and a test comparing scores would pass whatever the engine
    did. The difference of the two rows is instead drawn from how the last hidden state varies across
    a few calibration prompts, with the shared part projected out, and scaled to a spread of ~2 logits.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    lines = [line for line in _CORPUS_SEED.strip().splitlines() if line]
    suffix = "<|im_end|>\n<|im_start|>assistant\n"
    with torch.no_grad():
        states = []
        for line in lines:
            ids = tokenizer(f"<|im_start|>user\n{line}{suffix}", return_tensors="pt")["input_ids"]
            states.append(model.model(input_ids=ids, use_cache=False).last_hidden_state[0, -1])
        hidden = torch.stack(states).float()
        mean = hidden.mean(0)
        direction = (hidden - mean).T @ torch.randn(len(states), generator=generator)
        direction -= (direction @ mean) / (mean @ mean) * mean
        direction *= 2.0 / (hidden @ direction).std()
        head = model.get_output_embeddings().weight
        positive, negative = answer_words
        head[tokenizer.convert_tokens_to_ids(positive)] = (direction / 2).to(head.dtype)
        head[tokenizer.convert_tokens_to_ids(negative)] = (-direction / 2).to(head.dtype)


def write_tiny_checkpoint(
    folder: str | os.PathLike[str],
    *,
    shape: str = "tiny",
    seed: int = 0,
    overwrite: bool = False,
    architecture: str = "qwen2_5_vl",
) -> Path:
    """Writes a complete random checkpoint of ``architecture`` and ``shape`` (``tiny`` or ``small``) into ``folder``.

    Args:
        folder: Where to write; created if missing.
        shape: A key of :data:`SHAPES` other than ``7b`` (which is too large to write for nothing):
            ``tiny``, ``medium`` or ``small``.
        seed: Seeds the weights; the same seed writes the same weights.
        overwrite: Rewrite a folder that already holds a checkpoint.
        architecture: ``qwen2_5_vl`` (Lychee, the default), ``qwen3_vl`` or ``qwen2_vl``.

    Returns:
        The folder, ready for ``LocalReranker(model=str(folder))``.
    """
    if shape not in SHAPES or shape == "7b":
        raise ValueError(f"unknown or unwritable shape {shape!r}; choose 'tiny', 'medium' or 'small'")
    if architecture not in ARCHITECTURE_NAMES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURE_NAMES}")
    path = Path(folder)
    if (path / "config.json").exists() and not overwrite:
        return path
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(SHAPES[shape].vocab_target, answer_words=ANSWER_WORDS[architecture])
    processor = build_processor(tokenizer, architecture=architecture)
    model = build_model(SHAPES[shape], tokenizer, seed=seed, architecture=architecture)
    processor.save_pretrained(path)
    model.save_pretrained(path, safe_serialization=True)
    (path / RANDOM_WEIGHTS_MARKER).write_text(
        f"# Random weights\n\nA {shape!r} test checkpoint with seeded random weights (lychee-rerank's "
        "write_tiny_checkpoint): it exercises the code, and its scores mean nothing.\n"
    )
    return path


def has_random_weights(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is a checkpoint written by :func:`write_tiny_checkpoint` (untrained)."""
    return (Path(folder) / RANDOM_WEIGHTS_MARKER).is_file()


def tiny_checkpoint_cache() -> Path:
    """Where ``--model tiny`` lives: ``$LYCHEE_CACHE_DIR/tiny`` or ``~/.cache/lychee-rerank/tiny``."""
    root = os.environ.get("LYCHEE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lychee-rerank"
    )
    return Path(root) / TINY_MODEL_NAME


def ensure_tiny_checkpoint() -> Path:
    """Writes the ``tiny`` checkpoint to its cache folder on first use and returns the folder."""
    folder = tiny_checkpoint_cache()
    if not (folder / "config.json").exists():
        # Write beside and rename, so a crash or a concurrent writer never leaves half a checkpoint.
        staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        write_tiny_checkpoint(staging, overwrite=True)
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "config.json").exists():
                raise
    return folder
