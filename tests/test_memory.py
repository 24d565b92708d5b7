"""Memory is bounded in bytes: images are reduced before caching, caches keep to their budgets, stats stay small.

A decoded image is cut to the processor's pixel bounds as soon as it is decoded (never cached at full
resolution), and in a way that leaves the score unchanged; the decoded-image and vision-output caches
never hold more bytes than their budgets; the engine's and the scheduler's stats do not grow per batch.
The service's resident-memory figure (50 distinct 6000x6000 images) is measured by
``benchmarks/memory_images.py``.
"""

from __future__ import annotations

import base64
import io
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from lychee_rerank.core import Document, LocalReranker, Query
from lychee_rerank.core.caches import ByteBudgetLRU
from lychee_rerank.core.local.budget import DEFAULT_MAX_BATCH_MEMORY
from lychee_rerank.core.local.engine import STATS_WINDOW
from lychee_rerank.core.local.imagefit import ProcessorFit
from lychee_rerank.core.media import ImageCache
from lychee_rerank.core.server.background import running_service
from lychee_rerank.core.server.scheduler import SchedulerStats
from lychee_rerank.core.server.settings import ServerSettings
from lychee_rerank.core.testing.reference import ReferenceScorer

SMALL_MAX_PIXELS = 64 * 28 * 28  # a low bound, so "large" images stay cheap to score in tests


def png(width: int, height: int, seed: int) -> bytes:
    """A compressible picture: a gradient and a block, distinct for each seed."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image.paste(((seed * 37) % 256, (seed * 91) % 256, 128), (seed % width, 0, seed % width + width // 5, height // 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def small_bounds(tiny_model_dir: Path) -> LocalReranker:
    return LocalReranker(
        model=str(tiny_model_dir),
        device="cpu",
        max_pixels=SMALL_MAX_PIXELS,
        image_cache_bytes=3 * SMALL_MAX_PIXELS * 4,  # three images at the bound
        vision_cache_bytes=40_000,  # about two images' outputs on the tiny model
    )


def test_byte_budget_lru_never_holds_more_than_its_budget() -> None:
    cache: ByteBudgetLRU[int] = ByteBudgetLRU(max_bytes=1000)
    rng = random.Random(3)
    for step in range(500):
        key = str(rng.randrange(40))
        if rng.random() < 0.3:
            cache.get(key)
        else:
            cache.put(key, step, rng.randrange(0, 400))
        assert cache.nbytes <= 1000
    cache.put("huge", -1, 1001)
    assert "huge" not in cache
    assert cache.nbytes <= 1000


def test_byte_budget_lru_drops_the_least_recently_used() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(max_bytes=30)
    cache.put("a", "A", 10)
    cache.put("b", "B", 10)
    cache.put("c", "C", 10)
    assert cache.get("a") == "A"  # now b is the oldest
    cache.put("d", "D", 10)
    assert ("a" in cache, "b" in cache, "c" in cache, "d" in cache) == (True, False, True, True)
    cache.put("a", "A2", 25)  # replacing a value frees its old bytes first
    assert cache.get("a") == "A2"
    assert cache.nbytes == 25
    with pytest.raises(ValueError, match="0 bytes or more"):
        ByteBudgetLRU(-1)


def test_a_budget_of_zero_keeps_nothing() -> None:
    cache = ImageCache(max_bytes=0)
    first = cache.get_or_load(png(40, 30, 1))
    assert len(cache) == 0
    assert cache.get_or_load(png(40, 30, 1)) is not first
    assert cache.misses == 2


def test_decoded_images_are_cached_at_the_processor_bound(small_bounds: LocalReranker) -> None:
    fit = ProcessorFit(small_bounds.loaded.processor.image_processor)
    assert fit.max_pixels == SMALL_MAX_PIXELS
    cache = ImageCache(max_bytes=10 * 1024 * 1024, fit=fit)
    loaded = cache.get_or_load(png(3000, 2000, 1))
    width, height = loaded.image.size
    assert width * height <= SMALL_MAX_PIXELS
    assert loaded.decoded_size == (3000, 2000)
    assert abs(width / height - 1.5) < 0.1  # the aspect ratio is kept
    assert cache.get_or_load(png(3000, 2000, 1)) is loaded  # the reduced copy is what is cached
    assert cache.nbytes == width * height * 4
    in_bounds = Image.new("RGB", (100, 80), (10, 20, 30))
    assert fit(in_bounds) is in_bounds  # images within the bounds are never touched


@pytest.mark.parametrize("patch_size", [14, 16])  # Qwen2/2.5-VL's patches, and Qwen3-VL's
def test_a_reduced_image_is_what_the_processor_would_make_of_the_original(patch_size: int) -> None:
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor(min_pixels=4 * 28 * 28, max_pixels=SMALL_MAX_PIXELS, patch_size=patch_size)
    fit = ProcessorFit(processor)
    assert (fit.factor, fit.max_pixels) == (2 * patch_size, SMALL_MAX_PIXELS)
    for size in [(3000, 2000), (700, 900), (1501, 77), (230, 229)]:
        original = Image.open(io.BytesIO(png(*size, seed=sum(size)))).convert("RGB")
        full = processor(images=[original], return_tensors="pt")
        reduced = processor(images=[fit(original)], return_tensors="pt")
        assert full["image_grid_thw"].tolist() == reduced["image_grid_thw"].tolist(), size
        assert (full["pixel_values"] == reduced["pixel_values"]).all(), size


def test_a_large_image_scores_as_the_reference_scores_the_full_resolution(
    tiny_reranker: LocalReranker, tiny_model_dir: Path
) -> None:
    # Over the Lychee bound of 1280*28*28 pixels, so the engine reduces it on decoding; the reference
    # hands the full resolution to the processor.
    large = png(1400, 1000, 5)
    reference = ReferenceScorer.from_pretrained(tiny_model_dir)
    for query, document in [
        (Query("a chart"), Document("figure 3", image=large)),
        (Query("like this", image=large), Document("a red summer dress")),
    ]:
        got = tiny_reranker.score(query, [document])[0]
        expected = reference.score(
            {"text": query.text, "image": query.image}, {"text": document.text, "image": document.image}
        )
        assert got == pytest.approx(expected, abs=1e-4)


def test_caches_keep_to_their_byte_budgets_while_images_stream_through(small_bounds: LocalReranker) -> None:
    engine = small_bounds.engine
    for seed in range(8):
        image = png(1200, 900, seed)
        small_bounds.score("a chart", [Document("figure", image=image), Document(image=png(300, 200, seed))])
        assert engine.image_cache.nbytes <= engine.image_cache.max_bytes
        assert engine.vision_cache.nbytes <= engine.vision_cache.max_bytes
        assert len(engine.image_cache) >= 1
        width, height = engine.image_cache.get_or_load(image).image.size
        assert width * height <= SMALL_MAX_PIXELS
    assert engine.stats.vision_encoded == 16  # everything distinct: each image encoded once


def test_engine_and_scheduler_stats_do_not_grow_per_batch(tiny_model_dir: Path) -> None:
    reranker = LocalReranker(model=str(tiny_model_dir), device="cpu", max_batch_tokens=1, reuse_prefix=False)
    stats = reranker.engine.stats
    stats.batch_sizes.extend([1] * (STATS_WINDOW + 10))  # as if the engine had run that many batches
    reranker.score("q", ["a", "b", "c"])
    assert stats.batches == 3
    assert len(stats.batch_sizes) == STATS_WINDOW
    assert list(stats.batch_sizes)[-3:] == [1, 1, 1]
    rounds = SchedulerStats().round_sizes
    rounds.extend(range(5000))
    assert len(rounds) < 5000


def test_cache_budgets_are_settings_flags_and_variables(tiny_model_dir: Path) -> None:
    settings = ServerSettings.from_env({"LYCHEE_IMAGE_CACHE_BYTES": "1000000", "LYCHEE_VISION_CACHE_BYTES": "0"})
    assert (settings.image_cache_bytes, settings.vision_cache_bytes) == (1_000_000, 0)
    assert ServerSettings().image_cache_bytes == ServerSettings().vision_cache_bytes == 256 * 1024 * 1024
    assert ServerSettings().max_batch_memory == DEFAULT_MAX_BATCH_MEMORY
    reranker = LocalReranker(model=str(tiny_model_dir), device="cpu", image_cache_bytes=1000, vision_cache_bytes=0)
    assert (reranker.engine.image_cache.max_bytes, reranker.engine.vision_cache.max_bytes) == (1000, 0)
    with pytest.raises(ValueError, match="vision_cache_bytes must be 0 or more"):
        LocalReranker(model=str(tiny_model_dir), device="cpu", vision_cache_bytes=-1)
    help_text = subprocess.run(
        [sys.executable, "-m", "lychee_rerank.core.cli", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--image-cache-bytes" in help_text
    assert "LYCHEE_VISION_CACHE_BYTES" in help_text


def test_the_service_keeps_to_the_cache_budgets_it_is_given(tiny_model_dir: Path) -> None:
    image = "data:image/png;base64," + base64.b64encode(png(1500, 1000, 7)).decode()
    with running_service(tiny_model_dir, image_cache_bytes=0, vision_cache_bytes=50_000) as service:
        body = {"query": "a chart", "documents": [{"text": "figure", "image": image}]}
        answer = httpx.post(f"{service.url}/v1/rerank", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        # The engine the service scores with (its own today; the reranker's once they are one).
        engine = getattr(service.app.state, "engine", service.reranker.engine)
    assert (engine.image_cache.max_bytes, engine.vision_cache.max_bytes) == (0, 50_000)
    assert len(engine.image_cache) == 0
    assert engine.vision_cache.nbytes <= 50_000
