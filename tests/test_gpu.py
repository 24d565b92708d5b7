"""The engine on CUDA kernels: against the naive reference, the shared prefix, the out-of-memory split, memory.

Every test here is marked ``gpu`` and skipped, with the reason, where no CUDA GPU is visible, so the
suite stays green on CPU machines. Run them on a GPU machine with ``python -m pytest -m gpu -rA``
(``benchmarks/gpu_check.py`` does, and collects the figures each test records with ``record_property``).

The model is the ``medium`` random Qwen2.5-VL (about 39M parameters: head_dim 64, grouped-query
attention, several vision windows per image), written to a temporary folder once per session.

Tolerances. float32: 1e-4, as on the CPU; this is the check of the engine's logic on CUDA kernels.
bf16: the engine and the reference run the same bf16 weights through differently shaped kernels
(batched rows, padding between prefix and documents, a cached prefix, FlashAttention's varlen path), and
every op rounds its output to 8 bits of mantissa, so their scores differ by rounding. Measured on the
CPU in bf16 (this model, these inputs): engine against reference 1.6e-3 on 2026-12-01 and 1.9e-3 on
2026-12-02 (after the CPU's bf16 weights were reordered for oneDNN: the same rounding, other kernels),
prefix cache against whole rows 1.1e-3 (float32: 1.8e-7). BF16_TOLERANCE is about 5× that, for GPU kernels that
accumulate in another order, and a quarter of the spread of this model's scores across documents
(standard deviation 0.04): a half-precision bug that lets padding or the wrong image into attention
moves scores by that spread. Each test records the deviation it measured (``record_property``), so the
first GPU run tells the real figure.
"""

from __future__ import annotations

import importlib.util
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw

from lychee_rerank.core import Document, LocalReranker, Query
from lychee_rerank.core.testing.checkpoint import write_tiny_checkpoint
from lychee_rerank.core.testing.reference import ReferenceScorer

# LYCHEE_TEST_DEVICE=cpu runs the tests that need no CUDA memory API on the CPU: a dry run of this file.
DEVICE = os.environ.get("LYCHEE_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE.startswith("cuda") and not torch.cuda.is_available(),
        reason="needs a CUDA GPU; none is visible to torch",
    ),
]
needs_cuda_memory = pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="measures CUDA memory")

FLOAT32_TOLERANCE = 1e-4
BF16_MEASURED_ON_CPU = 1.9e-3  # max |engine − reference| over the four query kinds below, bf16 on the CPU
BF16_TOLERANCE = 1e-2
CHINESE = "适合小个子女生的显高西装套装，米白色，春夏穿"
HAS_FLASH_ATTENTION = importlib.util.find_spec("flash_attn") is not None

ATTENTION = [
    pytest.param("sdpa", id="sdpa"),
    pytest.param(
        "flash_attention_2",
        id="flash_attention_2",
        marks=pytest.mark.skipif(not HAS_FLASH_ATTENTION, reason="flash_attn is not installed"),
    ),
]


def picture(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic drawing, different for each seed."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = rng.randrange(width), rng.randrange(height)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.rectangle([x, y, x + rng.randrange(10, 80), y + rng.randrange(10, 60)], fill=colour)
    return image


def queries() -> dict[str, Query]:
    """One query of each kind: text, image, text+image, Chinese."""
    return {
        "text": Query("white linen shirt"),
        "image": Query(image=picture(200, 150, 1)),
        "text+image": Query("a product like this one, in blue", image=picture(180, 240, 2)),
        "chinese": Query(CHINESE),
    }


def documents() -> list[Document]:
    """Sixteen documents: text of very different lengths, images of several grids, both, Chinese."""
    long_text = " ".join(["The figure reports accuracy versus training steps for three models."] * 14)
    return [
        Document("a white linen shirt"),
        Document(image=picture(320, 240, 3)),
        Document("chart of revenue by quarter", image=picture(240, 320, 4)),
        Document(CHINESE),
        Document(long_text),
        Document("yes"),
        Document(image=picture(120, 90, 5)),
        Document("running shoes, size 42", image=picture(400, 200, 6)),
        Document("Table 2: mean and standard deviation over five seeds. " * 6),
        Document("纯棉白色衬衫，修身版型", image=picture(150, 150, 7)),
        Document("x"),
        Document(image=picture(320, 240, 3)),  # the same image again
        Document("a photo of a scratched bearing", image=picture(280, 210, 8)),
        Document(long_text[:400]),
        Document("leather handbag"),
        Document("wireless headphones", image=picture(240, 320, 4)),
    ]


def candidates(count: int) -> list[Document]:
    """``count`` image+text candidates of about 300 tokens each (a 224x224 image is 64 tokens)."""
    words = ("white", "linen", "shirt", "red", "summer", "dress", "running", "shoes", "leather", "handbag")
    rng = random.Random(count)
    return [
        Document(" ".join(rng.choice(words) for _ in range(180)), image=picture(224, 224, 100 + index))
        for index in range(count)
    ]


def as_mapping(item: Query | Document) -> dict[str, Any]:
    """What the reference scorer takes."""
    return {"text": item.text, "image": item.image}


def reference_scores(reference: ReferenceScorer, query: Query, docs: list[Document]) -> list[float]:
    """The naive reference, one pair per forward."""
    return [reference.score(as_mapping(query), as_mapping(doc)) for doc in docs]


@pytest.fixture(scope="session")
def medium_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``medium`` random checkpoint, written once per session."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("medium-checkpoint"), shape="medium")


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def reference(request: pytest.FixtureRequest, medium_model_dir: Path) -> Iterator[ReferenceScorer]:
    """The naive reference on CUDA in each dtype (loaded with the engine's default attention, sdpa)."""
    scorer = ReferenceScorer.from_pretrained(medium_model_dir, dtype=getattr(torch, request.param), device=DEVICE)
    yield scorer
    del scorer
    if DEVICE.startswith("cuda"):
        torch.cuda.empty_cache()


def tolerance(dtype: torch.dtype) -> float:
    """The agreement asked of the engine in ``dtype`` (see the module docstring)."""
    return FLOAT32_TOLERANCE if dtype == torch.float32 else BF16_TOLERANCE


def worst_deviation(reranker: LocalReranker, reference: ReferenceScorer) -> float:
    """Max |engine − reference| over every query kind, in input order and shuffled."""
    docs = documents()
    worst = 0.0
    for kind, query in queries().items():
        expected = reference_scores(reference, query, docs)
        scores = reranker.score(query, docs)
        worst = max(worst, max(abs(a - b) for a, b in zip(scores, expected, strict=True)))
        # Shuffled: other batch compositions and paddings, the same score for each document.
        order = list(range(len(docs)))
        random.Random(kind).shuffle(order)
        shuffled = reranker.score(query, [docs[i] for i in order])
        worst = max(worst, max(abs(shuffled[position] - expected[i]) for position, i in enumerate(order)))
    return worst


@pytest.mark.parametrize("attention", ATTENTION)
def test_engine_matches_the_reference_on_cuda(
    medium_model_dir: Path, reference: ReferenceScorer, attention: str, record_property: Any
) -> None:
    dtype = reference.model.dtype
    if attention == "flash_attention_2" and dtype == torch.float32:
        pytest.skip("FlashAttention 2 runs in half precision only")
    reranker = LocalReranker(model=str(medium_model_dir), device=DEVICE, dtype=dtype, attn_implementation=attention)
    worst = worst_deviation(reranker, reference)
    record_property("dtype", str(dtype).removeprefix("torch."))
    record_property("attention", attention)
    record_property("max_abs_deviation", worst)
    record_property("tolerance", tolerance(dtype))
    if dtype != torch.float32:
        record_property("measured_on_cpu", BF16_MEASURED_ON_CPU)
    print(f"engine vs reference, {dtype}, {attention}: max |Δ| = {worst:.2e}")
    assert worst <= tolerance(dtype)
    assert reranker.engine.stats.prefix_tokens_reused > 0


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shared_prefix_with_padding_changes_no_score_on_cuda(
    medium_model_dir: Path, dtype: str, attention: str, record_property: Any
) -> None:
    if attention == "flash_attention_2" and dtype == "float32":
        pytest.skip("FlashAttention 2 runs in half precision only")
    options: dict[str, Any] = {"device": DEVICE, "dtype": dtype, "attn_implementation": attention}
    # One batch for every document, so that short documents sit behind padding after the prefix.
    with_prefix = LocalReranker(model=str(medium_model_dir), max_batch_tokens=100_000, max_padding=1.0, **options)
    without = LocalReranker(
        model=str(medium_model_dir), max_batch_tokens=100_000, max_padding=1.0, reuse_prefix=False, **options
    )
    query = queries()["text+image"]
    docs = documents()

    cached = with_prefix.score(query, docs)
    whole = without.score(query, docs)

    stats = with_prefix.engine.stats
    assert stats.prefix_tokens_reused > 0
    assert stats.batches == 1
    prefix_length = stats.prefix_tokens_reused // (len(docs) - 1)
    documents_own_tokens = stats.computed_tokens - prefix_length
    assert stats.padded_tokens > documents_own_tokens  # padding lies between the prefix and documents
    worst = max(abs(a - b) for a, b in zip(cached, whole, strict=True))
    record_property("max_abs_deviation", worst)
    print(f"prefix cache vs whole rows, {dtype}, {attention}: max |Δ| = {worst:.2e}")
    assert worst <= tolerance(getattr(torch, dtype))


@needs_cuda_memory
def test_out_of_memory_split_on_cuda_loses_nothing(medium_model_dir: Path, record_property: Any) -> None:
    # No token or memory budget: the 48 pairs go in one batch, and only the memory cap below splits them.
    reranker = LocalReranker(
        model=str(medium_model_dir),
        device="cuda",
        dtype="float32",
        max_batch_tokens=1_000_000,
        max_padding=1.0,
        max_batch_memory=None,
    )
    query = Query("white linen shirt")
    docs = candidates(48)
    expected = reranker.score(query, docs)  # one batch of 48, no cap
    assert list(reranker.engine.stats.batch_sizes) == [48]
    reranker.engine.clear_caches()

    # set_per_process_memory_fraction needs the device's index, which torch.device("cuda") leaves unset.
    device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    reranker.score(query, docs[:2])
    two_pairs = torch.cuda.max_memory_allocated(device) - torch.cuda.memory_allocated(device)
    reranker.engine.clear_caches()
    torch.cuda.empty_cache()
    # The cap counts what the allocator holds (reserved), which block rounding makes more than allocated.
    held = torch.cuda.memory_reserved(device)
    cap = held + max(4 * two_pairs, 32 * 2**20)  # a 48-pair batch needs about 24 times two pairs
    total = torch.cuda.get_device_properties(device).total_memory
    stats = reranker.engine.stats
    splits_before, batches_before = stats.oom_splits, len(stats.batch_sizes)
    torch.cuda.set_per_process_memory_fraction(cap / total, device)
    try:
        capped = reranker.score(query, docs)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()

    under_cap = list(stats.batch_sizes)[batches_before:]
    record_property("memory_cap_mib", cap / 2**20)
    record_property("oom_splits", stats.oom_splits - splits_before)
    record_property("batch_sizes_under_cap", under_cap)
    assert stats.oom_splits > splits_before
    assert len(capped) == len(docs)
    assert max(under_cap) < len(docs)
    assert capped == pytest.approx(expected, abs=1e-5)


@needs_cuda_memory
def test_peak_memory_above_the_weights_at_100_candidates(medium_model_dir: Path, record_property: Any) -> None:
    device = torch.device("cuda")
    query = Query("a product like this one", image=picture(224, 224, 1))
    docs = candidates(100)
    peaks = {}
    for label, budget in (("default budget", None), ("one batch", 1_000_000)):
        options: dict[str, Any] = (
            {} if budget is None else {"max_batch_tokens": budget, "max_padding": 1.0, "max_batch_memory": None}
        )
        reranker = LocalReranker(model=str(medium_model_dir), device="cuda", dtype="bfloat16", **options)
        torch.cuda.empty_cache()
        weights = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        scores = reranker.score(query, docs)
        peaks[label] = torch.cuda.max_memory_allocated(device) - weights
        assert len(scores) == len(docs)
        record_property(f"peak_above_weights_mib[{label}]", peaks[label] / 2**20)
        record_property(f"batches[{label}]", reranker.engine.stats.batches)
        del reranker
    print(f"peak memory above the weights at 100 candidates: {peaks}")
    assert peaks["default budget"] > 0
    # The token budget is what bounds memory: one unbounded batch of 100 needs more.
    assert peaks["default budget"] < peaks["one batch"]


@needs_cuda_memory
def test_peak_memory_stays_within_the_batch_memory_budget(medium_model_dir: Path, record_property: Any) -> None:
    # A budget small enough to split 100 image+text candidates into many batches and tower chunks; no
    # vision cache, so that what is measured is one forward's activations (and the prefix's cache).
    budget = 32 * 2**20
    device = torch.device("cuda", torch.cuda.current_device())
    reranker = LocalReranker(
        model=str(medium_model_dir), device="cuda", dtype="bfloat16", max_batch_memory=budget, vision_cache_bytes=0
    )
    query = Query("a product like this one", image=picture(224, 224, 1))
    docs = candidates(100)
    reranker.score(query, docs[:4])  # kernels chosen, allocator grown
    torch.cuda.empty_cache()
    weights = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    scores = reranker.score(query, docs)
    peak = torch.cuda.max_memory_allocated(device) - weights
    record_property("budget_mib", budget / 2**20)
    record_property("peak_above_weights_mib", peak / 2**20)
    record_property("batches", reranker.engine.stats.batches)
    print(f"peak above the weights {peak / 2**20:.1f} MiB under a {budget / 2**20:.0f} MiB budget")
    assert len(scores) == len(docs)
    assert reranker.engine.stats.batches > 4
    # Measured on the CPU: 1.02x the budget. CUDA's kernels differ (attention with a mask, cuBLAS
    # workspaces), hence the margin; a budget that is not honoured at all peaks several times over.
    assert peak <= 1.5 * budget
