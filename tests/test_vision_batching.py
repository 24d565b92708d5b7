"""The vision tower in batches: features equal transformers' own forward, a few attention calls per layer.

Qwen2.5-VL attends within windows of 8x8 patches in most layers; transformers' SDPA path attends each
window of each image alone. The engine's tower (``core/local/vision.py``) stacks them into one call per
layer (a few, when pieces of very different lengths would need too much padding), so the number of
attention calls must not grow with the number of images or windows, and each image's features must be
what the model's own forward gives it, whatever it is batched with.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw
from torch.overrides import TorchFunctionMode

from lychee_rerank.core import Document, LocalReranker, Query
from lychee_rerank.core.local.engine import ScoringEngine, _PreparedImage
from lychee_rerank.core.local.vision import (
    SDPA_PACKED,
    TRANSFORMERS,
    VisionTower,
    group_by_length,
    plan_segments,
)
from lychee_rerank.core.testing.checkpoint import write_tiny_checkpoint
from lychee_rerank.core.testing.reference import ReferenceScorer

# Sizes that give different grids, several attention windows each (a window is 8x8 patches), odd grids
# whose last windows are short, and one image of a single window, so that per-image and per-window
# boundaries inside the concatenated patches matter.
SIZES = [(300, 200), (120, 260), (64, 48), (420, 140), (200, 200), (333, 111)]


def drawing(size: tuple[int, int], seed: int) -> Image.Image:
    """A deterministic picture, different for each seed."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, (rng.randrange(256), 90, rng.randrange(256)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        draw.rectangle([x, y, x + 30, y + 20], fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    return image


@pytest.fixture(scope="module")
def pictures() -> list[Image.Image]:
    return [drawing(size, seed) for seed, size in enumerate(SIZES)]


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two towers the engine runs itself: Qwen2.5-VL's (windows) and Qwen2-VL's (whole images)."""
    if request.param == "qwen2_5_vl":
        return write_tiny_checkpoint(tmp_path_factory.mktemp("tower-qwen2_5_vl"), shape="medium")
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tower-qwen2_vl"), architecture="qwen2_vl")


@pytest.fixture(scope="module")
def reranker(checkpoint: Path) -> LocalReranker:
    return LocalReranker(model=str(checkpoint), device="cpu")


def prepare(reranker: LocalReranker, images: list[Image.Image]) -> list[_PreparedImage]:
    processor = reranker.loaded.processor.image_processor
    prepared = []
    for image in images:
        features = processor(images=[image], return_tensors="pt")
        prepared.append(_PreparedImage(features["pixel_values"], features["image_grid_thw"]))
    return prepared


def model_features(reranker: LocalReranker, prepared: list[_PreparedImage]) -> list[torch.Tensor]:
    """Each image's features from the model's own ``get_image_features``, all images in one call."""
    pixel_values = torch.cat([image.pixel_values for image in prepared])
    grid = torch.cat([image.grid_thw for image in prepared])
    with torch.inference_mode():
        output = reranker.loaded.model.model.get_image_features(pixel_values, grid, return_dict=True)
    return list(output.pooler_output)


class AttentionCalls(TorchFunctionMode):
    """Counts calls to ``scaled_dot_product_attention`` (observes them; changes nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.count += 1
        return func(*args, **(kwargs or {}))


def attention_calls(run: Callable[[], Any]) -> int:
    with torch.inference_mode(), AttentionCalls() as calls:
        run()
    return calls.count


@contextmanager
def patches_per_forward(reranker: LocalReranker) -> Iterator[list[int]]:
    """Patches entering the vision tower per forward, seen by a hook on its patch embedding."""
    calls: list[int] = []

    def record(module: torch.nn.Module, args: Any) -> None:
        calls.append(int(args[0].shape[0]))

    handle = reranker.loaded.model.model.visual.patch_embed.register_forward_pre_hook(record)
    try:
        yield calls
    finally:
        handle.remove()


def test_features_equal_the_models_own_forward(reranker: LocalReranker, pictures: list[Image.Image]) -> None:
    engine = reranker.engine
    assert engine.vision_attention == SDPA_PACKED
    prepared = prepare(reranker, pictures)
    assert len({image.grid for image in prepared}) == len(pictures)
    expected = model_features(reranker, prepared)

    together = engine._encode_images(prepared)
    alone = [engine._encode_images([image])[0] for image in prepared]

    for lone, batched, wanted in zip(alone, together, expected, strict=True):
        assert batched["features"].shape == wanted.shape
        torch.testing.assert_close(batched["features"], wanted, rtol=0, atol=1e-5)
        torch.testing.assert_close(lone["features"], wanted, rtol=0, atol=1e-5)
        # A cached piece owns its memory instead of keeping the whole batch's output alive.
        storage = batched["features"].untyped_storage().nbytes()
        assert storage == batched["features"].numel() * batched["features"].element_size()


def test_attention_calls_do_not_grow_with_images_or_windows(reranker: LocalReranker) -> None:
    tower = VisionTower(reranker.loaded.model.model.visual)
    depth = len(reranker.loaded.model.model.visual.blocks)

    def calls_for(images: list[Image.Image]) -> int:
        prepared = prepare(reranker, images)
        pixel_values = torch.cat([image.pixel_values for image in prepared])
        return attention_calls(lambda: tower(pixel_values, [image.grid for image in prepared]))

    one_window = calls_for([drawing((100, 100), 0)])
    many_windows = calls_for([drawing((448, 336), 1)])
    many_images = calls_for([drawing((448, 336), seed) for seed in range(9)])
    assert one_window == many_windows == many_images == depth
    # Images of different sizes: a few calls per layer (lengths that would pad too much apart), still
    # not one per window or per image as in the model's own forward.
    mixed = [drawing(size, seed) for seed, size in enumerate(SIZES * 3)]
    prepared = prepare(reranker, mixed)
    pixel_values = torch.cat([image.pixel_values for image in prepared])
    grid = torch.cat([image.grid_thw for image in prepared])
    ours = attention_calls(lambda: tower(pixel_values, [image.grid for image in prepared]))
    theirs = attention_calls(lambda: reranker.loaded.model.model.get_image_features(pixel_values, grid))
    assert ours <= 3 * depth
    assert theirs >= len(mixed) * depth


def test_grid_layouts_are_computed_once_per_distinct_grid(reranker: LocalReranker) -> None:
    tower = VisionTower(reranker.loaded.model.model.visual)
    images = [drawing((300, 200), seed) for seed in range(4)] + [drawing((120, 260), 9)]
    prepared = prepare(reranker, images)
    pixel_values = torch.cat([image.pixel_values for image in prepared])
    grids = [image.grid for image in prepared]
    first = tower(pixel_values, grids)
    assert len(tower._layouts) == 2
    layout = tower._layouts.get("x".join(map(str, grids[0])))
    second = tower(pixel_values, grids)
    assert len(tower._layouts) == 2
    assert tower._layouts.get("x".join(map(str, grids[0]))) is layout
    assert torch.equal(first, second)


def test_the_models_own_forward_remains_a_choice(checkpoint: Path, pictures: list[Image.Image]) -> None:
    fast = LocalReranker(model=str(checkpoint), device="cpu")
    slow = LocalReranker(model=str(checkpoint), device="cpu", vision_attention=TRANSFORMERS)
    assert slow.engine.vision_attention == TRANSFORMERS
    documents = [Document(image=picture, text="a product") for picture in pictures]
    query = Query("something like this", image=pictures[0])
    assert fast.score(query, documents) == pytest.approx(slow.score(query, documents), abs=1e-5)


def test_an_unusable_vision_attention_is_refused_with_the_reason(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="needs CUDA, half precision"):
        LocalReranker(model=str(checkpoint), device="cpu", vision_attention="torch-varlen")
    with pytest.raises(ValueError, match="unknown vision attention 'fast'"):
        LocalReranker(model=str(checkpoint), device="cpu", vision_attention="fast")


def test_qwen3_vl_tower_runs_through_transformers(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "qwen3", architecture="qwen3_vl")
    reranker = LocalReranker(model=str(folder), device="cpu", profile="qwen3-vl-reranker")
    assert reranker.engine.vision_attention == TRANSFORMERS
    with pytest.raises(ValueError, match="runs through transformers' own forward only"):
        LocalReranker(model=str(folder), device="cpu", profile="qwen3-vl-reranker", vision_attention=SDPA_PACKED)


def test_new_images_of_a_batch_share_one_vision_forward(tiny_model_dir: Path, pictures: list[Image.Image]) -> None:
    reranker = LocalReranker(model=str(tiny_model_dir), device="cpu", max_batch_tokens=100_000, max_padding=1.0)
    documents = [Document(image=picture) for picture in pictures] + [Document(image=pictures[0])]
    patch_counts = [image.token_count for image in prepare(reranker, pictures)]

    with patches_per_forward(reranker) as calls:
        reranker.score(Query("a product like this one", image=pictures[1]), documents)
        # The query image runs with the shared prefix; the other distinct images in one forward.
        assert calls == [patch_counts[1], sum(patch_counts) - patch_counts[1]]
        assert reranker.engine.stats.vision_encoded == len(pictures)
        assert reranker.engine.stats.vision_forwards == 2
        # A second request finds every image cached.
        reranker.score(Query("a product like this one", image=pictures[1]), documents)
        assert len(calls) == 2


def test_a_memory_budget_splits_the_tower_into_chunks_with_the_same_features(
    tiny_model_dir: Path, pictures: list[Image.Image]
) -> None:
    whole = LocalReranker(model=str(tiny_model_dir), device="cpu")
    budget = 2 * max(image.token_count for image in prepare(whole, pictures)) * whole.engine.memory.patch_bytes
    chunked = LocalReranker(model=str(tiny_model_dir), device="cpu", max_batch_memory=budget)
    prepared = prepare(whole, pictures)

    expected = whole.engine._encode_images(prepared)
    with patches_per_forward(chunked) as calls:
        found = chunked.engine._encode_images(prepared)

    assert len(calls) > 1
    assert max(calls) <= chunked.engine.memory.patch_limit(budget)
    for wanted, got in zip(expected, found, strict=True):
        torch.testing.assert_close(got["features"], wanted["features"], rtol=0, atol=1e-6)


def test_scores_with_batched_images_match_the_reference(tiny_model_dir: Path, pictures: list[Image.Image]) -> None:
    reference = ReferenceScorer.from_pretrained(tiny_model_dir)
    # A vision cache smaller than a batch's images: outputs still reach the batch that needs them.
    reranker = LocalReranker(model=str(tiny_model_dir), device="cpu")
    reranker.engine = ScoringEngine(reranker.loaded, reranker.profile, vision_cache_bytes=1)
    query = Query("white linen shirt")
    documents = [
        Document(image=picture, text=None if index % 2 else f"document {index}")
        for index, picture in enumerate(pictures)
    ]

    scores = reranker.score(query, documents)

    expected = [reference.score({"text": query.text}, {"text": doc.text, "image": doc.image}) for doc in documents]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert reranker.engine.stats.vision_forwards < len(pictures)


def test_pieces_are_grouped_with_bounded_padding() -> None:
    rng = random.Random(5)
    lengths = [rng.choice([64, 64, 64, 48, 32, 16, 1024, 1000, 4]) for _ in range(200)]
    groups = group_by_length(lengths, max_padding=0.25)
    assert sorted(index for group in groups for index in group) == list(range(len(lengths)))
    for group in groups:
        width = max(lengths[index] for index in group)
        real = sum(lengths[index] for index in group)
        assert len(group) == 1 or len(group) * width <= 1.25 * real
    # One call per distinct size class, not per piece.
    assert len(groups) <= 6


def test_planned_pieces_gather_and_return_every_patch_once() -> None:
    lengths = [64, 64, 48, 64, 16, 36, 1024]
    segments = plan_segments(lengths, torch.device("cpu"))
    total = sum(lengths)
    patches = torch.arange(total, dtype=torch.float32).view(total, 1, 1)
    gathered = torch.cat(
        [patches.index_select(0, group.gather) for group in segments.groups if group.gather is not None]
    )
    assert segments.inverse is not None
    assert torch.equal(gathered.index_select(0, segments.inverse), patches)
    assert segments.cu_seqlens.tolist() == [0, 64, 128, 176, 240, 256, 292, 1316]
    for group in segments.groups:
        real = int(group.mask.sum()) if group.mask is not None else group.count * group.width
        assert real <= group.count * group.width
