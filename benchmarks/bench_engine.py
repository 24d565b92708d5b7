"""Engine benchmark: the batching engine against the naive reference scorer, same weights, same run.

Run from the repository root (benchmarks/README.md says what every column means):

    .venv/bin/python benchmarks/bench_engine.py --shape small          # CPU, about 155M parameters
    .venv/bin/python benchmarks/bench_engine.py --shape tiny --modality mixed --docs 4
    .venv/bin/python benchmarks/bench_engine.py --shape 7b             # CUDA only: Qwen2.5-VL-7B shape

``tiny`` and ``small`` are random checkpoints written once to
``tiny_checkpoint_cache().parent / "bench-<shape>"`` (so ``$LYCHEE_CACHE_DIR`` moves them) and loaded
through the ordinary ``from_pretrained`` path, twice: once by :class:`LocalReranker`, once by
:meth:`ReferenceScorer.from_pretrained`. ``7b`` is built with random weights directly in GPU memory
(nothing is written to disk) and one model object is shared by the engine and the reference.

Workloads (``--modality``; ``all`` runs the three in turn, each on its own seeded inputs; the documents
differ from query to query, as candidate lists from a first-stage retriever do):

- ``text``: a text query (5-30 words) against text documents of 5 to 200 words; about one text in
  four is Chinese.
- ``image``: a text query against image-only documents: PIL drawings from 200x150 to 800x600 pixels,
  drawn at half that size on the CPU (``--image-scale``) so that the ``small`` run takes minutes.
- ``mixed``: a text+image query against documents that are, in turn, text, an image, or text and an
  image. The query image is the same for every document of a request.

Every pair the reference scores is also scored by the engine, and ``max |Δ|`` is the largest difference
between the two scores over those pairs. ``--reference-pairs K`` caps the reference at K pairs per
workload, spread evenly over the requests; its pairs/s is measured on those, and the speed-up is
engine pairs/s ÷ reference pairs/s. Each path first scores an untimed warm-up request of the same kind
at the largest sizes, on inputs the timed run never sees, so one-time costs (allocator growth, kernel
selection) are not timed and the engine's caches gain nothing.

Measured per workload and path: wall seconds, pairs/s, tokens/s (the real, unpadded tokens of the
scored pairs' full prompts per second: the engine's ``stats.tokens`` delta, the reference's attention
masks; the same count for the same pairs), peak memory (CUDA: ``torch.cuda.max_memory_allocated``,
reset per path; CPU: the process's peak resident set size so far, ``ru_maxrss``, which never goes down,
so it is a process peak and not the path's own), and the fraction of this machine's matmul throughput
reached.

The matmul peak is measured in the same run: a square matmul in the engine's dtype (2048 on the CPU,
4096 on CUDA), the best of five timed trials after a warm-up. Each path's FLOPs are estimated as

    2 × (text-model parameters, token embedding excluded) × real tokens computed
  + 2 × (vision-tower parameters) × vision patches encoded

counted with forward pre-hooks on the language model and the vision tower: tokens are the real tokens
the language model ran (a shared prefix whose key/value cache the engine reuses counts once; padding
not at all) and patches the t·h·w of every image grid the tower encoded (a vision-cache hit counts
nothing). The estimate leaves out attention's score and value products and the output head (the engine
projects two rows; the reference's full-vocabulary logits are extra work that is not counted), and
charges the vision merger for every patch although it runs on one in four: a rough figure for useful
work, so padding and other waste show as a lower percentage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from lychee_rerank.core.inputs import Document, Query
from lychee_rerank.core.local import LocalReranker
from lychee_rerank.core.local.engine import DEFAULT_MAX_BATCH_TOKENS, ScoringEngine
from lychee_rerank.core.local.loading import LoadedModel, choose_attention, choose_device, choose_dtype
from lychee_rerank.core.local.packing import PackedLinear
from lychee_rerank.core.profiles import DEFAULT_PROFILE, get_profile
from lychee_rerank.core.testing.checkpoint import (
    SHAPES,
    build_config,
    build_processor,
    build_tokenizer,
    tiny_checkpoint_cache,
    write_tiny_checkpoint,
)
from lychee_rerank.core.testing.reference import ReferenceScorer

MODALITIES = ("text", "image", "mixed")
# Per-shape defaults. One query for small keeps its CPU run of all three workloads to a few minutes
# on two cores (about 0.5 s per pair per path); 32 documents keep batches of a realistic depth.
DEFAULT_QUERIES = {"tiny": 4, "small": 1, "7b": 4}
DEFAULT_REFERENCE_PAIRS = {"tiny": None, "small": None, "7b": 64}  # None: every pair

_ENGLISH_TEXT = (
    "white linen shirt red summer dress running shoes leather handbag wireless headphones stainless "
    "steel figure shows accuracy versus training steps three models table reports mean standard "
    "deviation over five seeds revenue grew twelve percent third quarter compared last year photo "
    "scratched metal bearing crack near edge surface defect corrosion dent burr the a of and to in is "
    "that for on with as by this are relevant product image description scientific question result"
)
_ENGLISH = _ENGLISH_TEXT.split()
_CHINESE = (
    "适合", "小个子", "女生", "的", "显高", "西装", "套装", "米白色", "春夏", "穿", "纯棉", "白色",
    "衬衫", "修身", "版型", "图表", "显示", "了", "模型", "在", "测试集", "上", "准确率",
)  # fmt: skip
_IMAGE_SIZES = (
    (200, 150),
    (150, 200),
    (320, 240),
    (400, 300),
    (300, 400),
    (512, 384),
    (640, 480),
    (800, 600),
)


# -- synthetic inputs -------------------------------------------------------------------------------


def synthetic_text(rng: random.Random, low: int, high: int) -> str:
    """Between ``low`` and ``high`` words from a fixed vocabulary; about one text in four is Chinese."""
    count = rng.randint(low, high)
    if rng.random() < 0.25:
        return "".join(rng.choice(_CHINESE) for _ in range(count)) + "。"
    return " ".join(rng.choice(_ENGLISH) for _ in range(count)) + "."


def synthetic_image(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """Rectangles, ellipses and lines in random colours on a plain background."""
    width, height = size

    def colour() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    image = Image.new("RGB", (width, height), colour())
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(10, width // 2), y0 + rng.randrange(10, height // 2)
        shape = rng.choice((draw.rectangle, draw.ellipse))
        shape([x0, y0, x1, y1], fill=colour(), outline=colour())
        draw.line([rng.randrange(width), rng.randrange(height), x1, y1], fill=colour(), width=3)
    return image


def image_sizes(scale: float) -> list[tuple[int, int]]:
    """The drawing sizes, 200x150 to 800x600 times ``scale``."""
    return [(round(width * scale), round(height * scale)) for width, height in _IMAGE_SIZES]


@dataclass
class Workload:
    """Requests of one kind: each is a query and its own candidate documents."""

    name: str
    description: str
    requests: list[tuple[Query, list[Document]]]

    def pairs(self) -> list[tuple[int, int]]:
        """Every (request index, document index), request by request."""
        return [(q, d) for q, (_, docs) in enumerate(self.requests) for d in range(len(docs))]


def _document(kind: str, rng: random.Random, sizes: Sequence[tuple[int, int]]) -> Document:
    if kind == "text":
        return Document(text=synthetic_text(rng, 5, 200))
    if kind == "image":
        return Document(image=synthetic_image(rng, rng.choice(sizes)))
    return Document(text=synthetic_text(rng, 5, 60), image=synthetic_image(rng, rng.choice(sizes)))


def build_workload(modality: str, queries: int, docs: int, seed: int, image_scale: float = 1.0) -> Workload:
    """``queries`` requests of ``docs`` documents each, the same for the same arguments."""
    descriptions = {
        "text": "text query vs text documents (5-200 words)",
        "image": "text query vs image documents",
        "mixed": "text+image query vs text / image / text+image documents",
    }
    rng = random.Random(f"{modality}:{seed}")
    sizes = image_sizes(image_scale)
    requests = []
    for _ in range(queries):
        text = synthetic_text(rng, 5, 30)
        query = Query(text=text, image=synthetic_image(rng, rng.choice(sizes)) if modality == "mixed" else None)
        # mixed: text, image, text+image documents in turn
        kinds = [modality if modality != "mixed" else ("text", "image", "both")[d % 3] for d in range(docs)]
        requests.append((query, [_document(kind, rng, sizes) for kind in kinds]))
    return Workload(modality, descriptions[modality], requests)


def build_warmup(modality: str, docs: int, image_scale: float = 1.0) -> Workload:
    """One request of ``modality`` at the largest sizes, so that memory is grown before any clock starts.

    Its inputs are never in a timed workload, so the engine's caches gain nothing from it.
    """
    rng = random.Random(f"warm-up:{modality}")
    largest = max(image_sizes(image_scale), key=lambda size: size[0] * size[1])
    documents = []
    for index in range(docs):
        kind = modality if modality != "mixed" else ("text", "image", "both")[index % 3]
        text = " ".join(rng.choice(_ENGLISH) for _ in range(200)) if kind != "image" else None
        documents.append(Document(text=text, image=synthetic_image(rng, largest) if kind != "text" else None))
    query_image = synthetic_image(rng, largest) if modality == "mixed" else None
    return Workload(f"warm-up {modality}", "", [(Query(text="warm up", image=query_image), documents)])


def select_pairs(total: int, limit: int | None) -> list[int]:
    """``limit`` indices spread evenly over ``range(total)`` (all of them when ``limit`` is None)."""
    if limit is None or limit >= total:
        return list(range(total))
    return [i * total // limit for i in range(limit)]


# -- models -----------------------------------------------------------------------------------------


@dataclass
class Backends:
    """The engine and the reference, on the same weights (the same object for ``7b``)."""

    engine: ScoringEngine
    reference: ReferenceScorer
    source: str

    @property
    def device(self) -> torch.device:
        """Where the engine runs."""
        return self.engine.loaded.device

    @property
    def dtype(self) -> torch.dtype:
        """The engine's dtype."""
        return self.engine.loaded.dtype


def checkpoint_folder(shape: str) -> Path:
    """Writes the random ``shape`` checkpoint once (beside the tiny one) and returns its folder."""
    folder = tiny_checkpoint_cache().parent / f"bench-{shape}"
    if not (folder / "config.json").exists():
        # Written beside and renamed, so an interrupted run never leaves half a checkpoint behind.
        staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        write_tiny_checkpoint(staging, shape=shape, overwrite=True)
        staging.rename(folder)
    return folder


def load_checkpoint_backends(shape: str, args: argparse.Namespace) -> Backends:
    """``tiny``/``small``: the checkpoint loaded twice through ``from_pretrained``."""
    folder = checkpoint_folder(shape)
    profile = get_profile(DEFAULT_PROFILE)
    reranker = LocalReranker(
        model=str(folder),
        device=args.device,
        dtype=args.dtype,
        max_batch_tokens=args.max_batch_tokens,
        max_pixels=args.max_pixels,
    )
    loaded = reranker.loaded
    reference = ReferenceScorer.from_pretrained(
        folder,
        min_pixels=profile.min_pixels,
        max_pixels=args.max_pixels or profile.max_pixels,
        dtype=loaded.dtype,
        device=str(loaded.device),
    )
    return Backends(reranker.engine, reference, str(folder))


def build_in_memory_backends(shape: str, args: argparse.Namespace) -> Backends:
    """A random model of ``shape`` built on the device itself, shared by the engine and the reference.

    Used for ``7b`` (CUDA only); works for any shape, which is how tests exercise it on the CPU.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    device = choose_device(args.device)
    dtype = choose_dtype(args.dtype, device)
    profile = get_profile(DEFAULT_PROFILE)
    tokenizer = build_tokenizer(SHAPES[shape].vocab_target)
    processor = build_processor(
        tokenizer, min_pixels=profile.min_pixels, max_pixels=args.max_pixels or profile.max_pixels
    )
    config = build_config(SHAPES[shape], tokenizer)
    attention = choose_attention(device, dtype)
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attention)
    model.eval()
    loaded = LoadedModel(
        name=f"random-{shape}",
        path="(in memory)",
        model=model,
        processor=processor,
        device=device,
        dtype=dtype,
        attn_implementation=attention,
        positive_token_id=_single_token(tokenizer, profile.positive_token),
        negative_token_id=_single_token(tokenizer, profile.negative_token),
    )
    engine = ScoringEngine(loaded, profile, max_batch_tokens=args.max_batch_tokens)
    return Backends(engine, ReferenceScorer(model, processor), f"random {shape} weights, built in memory")


def _single_token(tokenizer: Any, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise RuntimeError(f"the generated tokenizer splits {word!r} into {ids}")
    return int(ids[0])


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts that the FLOP estimate uses."""

    total: int
    text_without_embeddings: int
    vision: int


def _weights(module: Any) -> int:
    """Parameters of ``module``, counting linear weights reordered for oneDNN (held outside the parameters)."""
    packed = sum(child.packed_weight.numel() for child in module.modules() if isinstance(child, PackedLinear))
    return sum(p.numel() for p in module.parameters()) + packed


def count_parameters(model: Any) -> ParameterCounts:
    """Total, language model without its token embedding, and vision tower."""
    language = model.model.language_model
    text = _weights(language) - language.embed_tokens.weight.numel()
    return ParameterCounts(_weights(model), text, _weights(model.model.visual))


# -- measuring --------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Waits for queued device work, so that a clock read afterwards includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, trials: int = 5) -> float:
    """This machine's achievable FLOP/s for a square matmul in the engine's ``dtype``.

    In the engine's dtype on the CPU too: bf16 on a CPU with bf16 matrix instructions (AMX, AVX512-BF16)
    runs several times faster than float32, so a float32 peak would put a bf16 run above 100 %.

    The best of several timed trials, each of a few repetitions after a warm-up, so that a moment of
    contention from other processes does not lower the peak.
    """
    size = 4096 if device.type == "cuda" else 2048
    reps = 10 if device.type == "cuda" else 1  # about 0.1 s per 2048² matmul on a 2-core CPU
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    best = math.inf
    with torch.inference_mode():
        torch.matmul(a, b)
        for _ in range(trials):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, b)
            synchronize(device)
            best = min(best, (time.perf_counter() - start) / reps)
    return 2 * size**3 / best


def reset_peak_memory(device: torch.device) -> None:
    """Starts a new CUDA peak; the CPU's resident-set peak cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: peak allocated since the last reset. CPU: the process's peak resident set size so far."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


@dataclass
class WorkCount:
    """What a model's language model and vision tower actually ran on."""

    tokens: int = 0  # real tokens through the language model (a cached prefix is not run again)
    positions: int = 0  # positions through the language model, padding included
    patches: int = 0  # vision patches (t·h·w of each image grid) through the vision tower


@contextmanager
def count_work(model: Any) -> Iterator[WorkCount]:
    """Counts, with forward pre-hooks, what ``model``'s language model and vision tower run on."""
    count = WorkCount()

    def on_language(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        embeds, mask = kwargs.get("inputs_embeds"), kwargs.get("attention_mask")
        if embeds is None:
            return
        rows, new = embeds.shape[0], embeds.shape[1]
        count.positions += rows * new
        # The mask also covers a cached prefix; only its last ``new`` columns are run now.
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            count.tokens += int(mask[:, -new:].sum())
        else:  # no 2-D mask: every position is real
            count.tokens += rows * new

    def on_vision(_module: Any, args: tuple[Any, ...]) -> None:
        count.patches += int(args[0].shape[0])

    # The patch embedding, not the tower's forward: the engine runs the tower's blocks itself.
    handles = [
        model.model.language_model.register_forward_pre_hook(on_language, with_kwargs=True),
        model.model.visual.patch_embed.register_forward_pre_hook(on_vision),
    ]
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class PathResult:
    """One path's measurements on one workload.

    ``prompt_tokens`` are the real tokens of the scored pairs' full prompts (what tokens/s counts, the
    same for both paths on the same pairs); ``computed_tokens`` are those the language model actually
    ran (fewer for the engine when it reuses a shared prefix); the FLOP estimate uses the latter.
    """

    path: str
    pairs: int
    seconds: float
    prompt_tokens: int
    computed_tokens: int
    vision_patches: int
    peak_memory_bytes: int
    estimated_flops: float
    pairs_per_second: float = field(init=False)
    tokens_per_second: float = field(init=False)
    matmul_peak_flops: float = field(init=False, default=math.nan)
    matmul_fraction: float = field(init=False, default=math.nan)

    def __post_init__(self) -> None:
        self.pairs_per_second = self.pairs / self.seconds
        self.tokens_per_second = self.prompt_tokens / self.seconds

    def set_matmul_peak(self, peak_flops: float) -> None:
        """Records the machine's matmul FLOP/s and the fraction of it this path reached."""
        self.matmul_peak_flops = peak_flops
        self.matmul_fraction = self.estimated_flops / self.seconds / peak_flops


@dataclass
class BatchStats:
    """How the engine packed one workload."""

    batches: int
    mean_batch_size: float
    padding_overhead: float  # positions run / real tokens run, over every language-model forward
    prefix_tokens_reused: int
    images_encoded: int
    vision_forwards: int
    vision_cache_hits: int


@dataclass
class WorkloadResult:
    """Both paths on one workload, and how far apart their scores are."""

    workload: str
    description: str
    engine: PathResult
    reference: PathResult | None
    speedup: float | None
    max_abs_difference: float | None
    batch_stats: BatchStats


@dataclass(frozen=True)
class Measuring:
    """What every path's measurement needs: the device and the parameter counts."""

    device: torch.device
    params: ParameterCounts

    def result(self, path: str, pairs: int, seconds: float, prompt_tokens: int, work: WorkCount) -> PathResult:
        """A path's measurements, with the FLOP estimate of the module docstring."""
        flops = 2.0 * self.params.text_without_embeddings * work.tokens + 2.0 * self.params.vision * work.patches
        return PathResult(
            path=path,
            pairs=pairs,
            seconds=seconds,
            prompt_tokens=prompt_tokens,
            computed_tokens=work.tokens,
            vision_patches=work.patches,
            peak_memory_bytes=peak_memory_bytes(self.device),
            estimated_flops=flops,
        )


def _timed(device: torch.device, run: Callable[[], Any]) -> tuple[Any, float]:
    """``run()`` under inference mode, and the wall seconds it took with the device's queue drained."""
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        value = run()
    synchronize(device)
    return value, time.perf_counter() - start


def run_engine(
    engine: ScoringEngine, workload: Workload, measuring: Measuring
) -> tuple[list[list[float]], PathResult, BatchStats]:
    """Scores every request with the engine: scores per request, measurements, and how it batched."""
    before = asdict(engine.stats)
    reset_peak_memory(measuring.device)
    with count_work(engine.loaded.model) as work:
        scores, seconds = _timed(measuring.device, lambda: [engine.score(q, d) for q, d in workload.requests])
    after = asdict(engine.stats)

    def delta(key: str) -> int:
        return int(after.get(key, 0) - before.get(key, 0))

    result = measuring.result("engine", delta("pairs"), seconds, delta("tokens"), work)
    stats = BatchStats(
        batches=delta("batches"),
        mean_batch_size=delta("pairs") / max(delta("batches"), 1),  # every pair is in exactly one batch
        padding_overhead=work.positions / max(work.tokens, 1),
        prefix_tokens_reused=delta("prefix_tokens_reused"),
        images_encoded=delta("vision_encoded"),
        vision_forwards=delta("vision_forwards"),
        vision_cache_hits=delta("vision_cache_hits"),
    )
    return scores, result, stats


def _as_mapping(item: Query | Document) -> dict[str, Any]:
    return {"text": item.text, "image": item.image}


def run_reference(
    reference: ReferenceScorer, workload: Workload, pairs: Sequence[tuple[int, int]], measuring: Measuring
) -> tuple[list[float], PathResult]:
    """Scores ``pairs`` with the naive reference, one full forward each."""

    def score_all() -> list[float]:
        scores = []
        for q, d in pairs:
            query, docs = workload.requests[q]
            scores.append(reference.score(_as_mapping(query), _as_mapping(docs[d])))
        return scores

    reset_peak_memory(measuring.device)
    with count_work(reference.model) as work:
        scores, seconds = _timed(measuring.device, score_all)
    return scores, measuring.result("reference", len(pairs), seconds, work.tokens, work)


def warm_up(backends: Backends, warmup: Workload) -> None:
    """One untimed request through each path, on inputs the timed run never sees."""
    with torch.inference_mode():
        for query, docs in warmup.requests:
            backends.engine.score(query, docs)
            for doc in docs:
                backends.reference.score(_as_mapping(query), _as_mapping(doc))
    synchronize(backends.device)


def run_workload(
    backends: Backends, workload: Workload, warmup: Workload, reference_pairs: int | None, measuring: Measuring
) -> WorkloadResult:
    """Warms both paths up, times the engine on every pair and the reference on its share, compares."""
    warm_up(backends, warmup)
    engine_scores, engine_result, stats = run_engine(backends.engine, workload, measuring)
    all_pairs = workload.pairs()
    chosen = [all_pairs[i] for i in select_pairs(len(all_pairs), reference_pairs)]
    reference_result = speedup = difference = None
    if chosen:
        reference_scores, reference_result = run_reference(backends.reference, workload, chosen, measuring)
        difference = max(
            abs(engine_scores[q][d] - score) for (q, d), score in zip(chosen, reference_scores, strict=True)
        )
        speedup = engine_result.pairs_per_second / reference_result.pairs_per_second
    return WorkloadResult(
        workload.name, workload.description, engine_result, reference_result, speedup, difference, stats
    )


# -- reporting --------------------------------------------------------------------------------------


def _number(value: float) -> str:
    """Three significant figures without scientific notation for the magnitudes a benchmark shows."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def results_table(results: Sequence[WorkloadResult], device: torch.device) -> str:
    """The main Markdown table: one row per workload and path."""
    memory = "peak alloc MiB" if device.type == "cuda" else "process peak RSS MiB"
    header = ["workload", "path", "pairs", "wall s", "pairs/s", "tokens/s", "speed-up", memory]
    lines = [_row([*header, "matmul peak %", "max abs Δ"]), _row(["---"] * (len(header) + 2))]
    for result in results:
        for path in (result.engine, result.reference):
            if path is None:
                continue
            is_engine = path is result.engine
            speedup = f"{result.speedup:.2f}×" if is_engine and result.speedup is not None else "—"
            difference = (
                f"{result.max_abs_difference:.1e}" if is_engine and result.max_abs_difference is not None else "—"
            )
            cells = [
                result.workload,
                path.path,
                str(path.pairs),
                f"{path.seconds:.2f}",
                _number(path.pairs_per_second),
                _number(path.tokens_per_second),
                speedup,
                f"{path.peak_memory_bytes / 2**20:,.0f}",
                f"{100 * path.matmul_fraction:.1f}",
                difference,
            ]
            lines.append(_row(cells))
    return "\n".join(lines)


def batch_table(results: Sequence[WorkloadResult]) -> str:
    """How the engine batched each workload."""
    header = [
        "workload",
        "batches",
        "mean batch size",
        "padded/real tokens",
        "prefix tokens reused",
        "images encoded",
        "vision forwards",
        "vision cache hits",
    ]
    lines = [_row(header), _row(["---"] * len(header))]
    for result in results:
        stats = result.batch_stats
        cells = [
            result.workload,
            str(stats.batches),
            f"{stats.mean_batch_size:.1f}",
            f"{stats.padding_overhead:.2f}",
            f"{stats.prefix_tokens_reused:,}",
            str(stats.images_encoded),
            str(stats.vision_forwards),
            str(stats.vision_cache_hits),
        ]
        lines.append(_row(cells))
    return "\n".join(lines)


def summary_line(results: Sequence[WorkloadResult], environment: dict[str, Any]) -> str:
    """One line: the speed-up per workload and the worst score difference."""
    speedups = ", ".join(
        f"{r.workload} {r.speedup:.2f}×" if r.speedup is not None else f"{r.workload} n/a" for r in results
    )
    differences = [r.max_abs_difference for r in results if r.max_abs_difference is not None]
    worst = f"{max(differences):.1e}" if differences else "n/a"
    return (
        f"Summary: engine vs naive reference, pairs/s speed-up: {speedups}; "
        f"max |engine − reference| = {worst} "
        f"({environment['shape']}, {environment['device']}, {environment['dtype']}; 1-minute load average "
        f"{environment['load_average_at_start']:.2f} at start, {environment['load_average_at_end']:.2f} at end)."
    )


def describe_environment(args: argparse.Namespace, backends: Backends, params: ParameterCounts) -> dict[str, Any]:
    """What the numbers were measured on (the matmul peak and the final load average are added later)."""
    import transformers

    device = backends.device
    loaded = backends.engine.loaded
    image_processor = loaded.processor.image_processor
    sizes = image_sizes(args.image_scale)
    return {
        "shape": args.shape,
        "model": backends.source,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "dtype": str(backends.dtype).removeprefix("torch."),
        "attention": loaded.attn_implementation,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "parameters": asdict(params),
        "max_batch_tokens": backends.engine.max_batch_tokens,
        "min_pixels": image_processor.size["shortest_edge"],
        "max_pixels": image_processor.size["longest_edge"],
        "queries": args.queries,
        "docs": args.docs,
        "seed": args.seed,
        "image_sizes": "{}x{}..{}x{}".format(*sizes[0], *sizes[-1]),
        "load_average_at_start": os.getloadavg()[0],
    }


def cpu_name() -> str:
    """The processor's model name where the system says it, else the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "cpu"


def environment_lines(environment: dict[str, Any]) -> str:
    """The header printed above the tables."""
    env = environment
    params = env["parameters"]
    matmul = f"4096² {env['dtype']}" if env["device"].startswith("cuda") else f"2048² {env['dtype']}"
    return "\n".join(
        [
            f"# Engine benchmark, shape {env['shape']}: {params['total'] / 1e6:,.1f}M parameters "
            f"(text model without embeddings {params['text_without_embeddings'] / 1e6:,.1f}M, "
            f"vision {params['vision'] / 1e6:,.1f}M)",
            "",
            f"- model: {env['model']}",
            f"- device: {env['device']} ({env['device_name']}), {env['cpu_count']} CPUs, "
            f"torch threads {env['torch_threads']}; dtype {env['dtype']}; attention {env['attention']}",
            f"- torch {env['torch']}, transformers {env['transformers']}, python {env['python']}",
            f"- matmul peak measured in this run: {env['matmul_peak_flops'] / 1e9:,.1f} GFLOP/s ({matmul}; "
            f"the better of {env['matmul_peak_flops_at_start'] / 1e9:,.1f} before the workloads and "
            f"{env['matmul_peak_flops_at_end'] / 1e9:,.1f} after)",
            f"- per workload: {env['queries']} {'query' if env['queries'] == 1 else 'queries'} × "
            f"{env['docs']} documents; drawings "
            f"{env['image_sizes']}, resized within {env['min_pixels']:,}..{env['max_pixels']:,} pixels; "
            f"max_batch_tokens {env['max_batch_tokens']}; seed {env['seed']}",
            f"- 1-minute load average at start: {env['load_average_at_start']:.2f} "
            "(other processes on these cores make every timing noisier)",
        ]
    )


# -- command line -----------------------------------------------------------------------------------


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; see the module docstring for what each workload is."""
    parser = argparse.ArgumentParser(
        description="Benchmark the scoring engine against the naive reference scorer on random weights."
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small", help="model shape (default small)")
    parser.add_argument(
        "--queries", type=_at_least(1), default=None, help="queries per workload (default 4; 1 for small)"
    )
    parser.add_argument("--docs", type=_at_least(1), default=32, help="documents per query (default 32)")
    parser.add_argument(
        "--modality", choices=[*MODALITIES, "all"], default="all", help="workload(s) to run (default all)"
    )
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu... (default: cuda if visible)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on cuda)")
    parser.add_argument(
        "--max-batch-tokens", type=_at_least(1), default=DEFAULT_MAX_BATCH_TOKENS, help="engine batch budget"
    )
    parser.add_argument(
        "--max-pixels", type=_at_least(1), default=None, help="image pixel cap (default: the profile's)"
    )
    parser.add_argument(
        "--reference-pairs",
        type=_at_least(0),
        default=None,
        help="pairs the reference scores per workload; 0 skips it (default: all for tiny/small, 64 for 7b)",
    )
    parser.add_argument(
        "--image-scale",
        type=float,
        default=None,
        help="scales the 200x150..800x600 drawings (default: 1 on CUDA, 0.5 on the CPU)",
    )
    parser.add_argument(
        "--threads",
        type=_at_least(1),
        default=None,
        help="CPU threads for torch (default: torch's own choice); 1 is far less hurt by other busy processes",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the synthetic inputs (default 0)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.queries is None:
        args.queries = DEFAULT_QUERIES[args.shape]
    if args.reference_pairs is None:
        args.reference_pairs = DEFAULT_REFERENCE_PAIRS[args.shape]
    return args


def build_backends(args: argparse.Namespace) -> Backends:
    """Loads (tiny, small) or builds (7b) the model for both paths."""
    if args.shape == "7b":
        return build_in_memory_backends("7b", args)
    return load_checkpoint_backends(args.shape, args)


def run_workloads(args: argparse.Namespace, backends: Backends, measuring: Measuring) -> list[WorkloadResult]:
    """Runs the chosen workloads one after another, reporting progress on stderr."""
    results = []
    for modality in MODALITIES if args.modality == "all" else (args.modality,):
        workload = build_workload(modality, args.queries, args.docs, args.seed, args.image_scale)
        warmup = build_warmup(modality, min(args.docs, 3), args.image_scale)
        result = run_workload(backends, workload, warmup, args.reference_pairs, measuring)
        reference_seconds = f"{result.reference.seconds:.1f} s" if result.reference else "skipped"
        print(f"[{modality}] engine {result.engine.seconds:.1f} s, reference {reference_seconds}", file=sys.stderr)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints the header, the tables and the summary; returns the exit status."""
    args = parse_args(argv)
    if args.shape == "7b" and (not torch.cuda.is_available() or (args.device or "cuda").startswith("cpu")):
        print(
            "the 7b shape needs a CUDA GPU (its random weights are built in GPU memory, about 16 GB in "
            "bf16); none is visible or --device cpu was given. Use --shape small on a CPU.",
            file=sys.stderr,
        )
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    backends = build_backends(args)
    if args.image_scale is None:
        # Full-size drawings make the CPU run of the small shape take far longer than a few minutes.
        args.image_scale = 1.0 if backends.device.type == "cuda" else 0.5
    params = count_parameters(backends.engine.loaded.model)
    environment = describe_environment(args, backends, params)
    # Measured before and after the workloads, the better kept: other processes lower it for a while.
    peak_at_start = measure_matmul_flops(backends.device, backends.dtype)
    results = run_workloads(args, backends, Measuring(backends.device, params))
    peak_at_end = measure_matmul_flops(backends.device, backends.dtype)
    environment.update(
        matmul_peak_flops=max(peak_at_start, peak_at_end),
        matmul_peak_flops_at_start=peak_at_start,
        matmul_peak_flops_at_end=peak_at_end,
        load_average_at_end=os.getloadavg()[0],
    )
    for path in (path for result in results for path in (result.engine, result.reference) if path):
        path.set_matmul_peak(environment["matmul_peak_flops"])
    print(environment_lines(environment))
    print(f"\n{results_table(results, backends.device)}\n\nEngine batching:\n\n{batch_table(results)}\n")
    print(summary_line(results, environment))
    if args.json is not None:
        report = {"environment": environment, "workloads": [asdict(result) for result in results]}
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
