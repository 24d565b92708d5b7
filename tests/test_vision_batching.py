"""The vision tower in batches: one forward for a batch's new images, features equal to lone encoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw

from lychee_rerank.core import Document, LocalReranker, Query
from lychee_rerank.core.local.engine import ScoringEngine, _PreparedImage
from lychee_rerank.core.testing.reference import ReferenceScorer

# Sizes that give different grids, several attention windows each (a window is 8x8 patches) and one
# image of a single window, so that per-image boundaries inside the concatenated patches matter.
SIZES = [(300, 200), (120, 260), (64, 48), (420, 140), (200, 200)]


@pytest.fixture(scope="module")
def pictures() -> list[Image.Image]:
    images = []
    for seed, size in enumerate(SIZES):
        image = Image.new("RGB", size, (seed * 50 % 256, 90, 200 - seed * 30))
        draw = ImageDraw.Draw(image)
        for step in range(6):
            x, y = (seed * 37 + step * 41) % size[0], (seed * 23 + step * 29) % size[1]
            draw.rectangle([x, y, x + 30, y + 20], fill=(step * 40, seed * 60 % 256, 255 - step * 30))
        images.append(image)
    return images


def count_vision_forwards(reranker: LocalReranker) -> list[int]:
    """Images per forward of the model's vision tower, recorded by a hook on the tower itself."""
    calls: list[int] = []

    def record(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        calls.append(len(grid))

    reranker.loaded.model.model.visual.register_forward_pre_hook(record, with_kwargs=True)
    return calls


def test_batched_features_equal_each_image_encoded_alone(tiny_model_dir: Path, pictures: list[Image.Image]) -> None:
    reranker = LocalReranker(model=str(tiny_model_dir), device="cpu")
    engine = reranker.engine
    processor = reranker.loaded.processor.image_processor
    prepared = []
    alone = []
    for picture in pictures:
        features = processor(images=[picture], return_tensors="pt")
        grid = features["image_grid_thw"]
        prepared.append(_PreparedImage(features["pixel_values"], grid))
        # Encoded alone by the model itself, outside the engine.
        with torch.inference_mode():
            output = reranker.loaded.model.model.get_image_features(features["pixel_values"], grid, return_dict=True)
        alone.append(output.pooler_output[0])
    assert len({tuple(image.grid_thw[0].tolist()) for image in prepared}) == len(pictures)

    with torch.inference_mode():
        batched = engine._encode_images(prepared)

    assert len(batched) == len(pictures)
    for lone, together in zip(alone, batched, strict=True):
        assert together["pooler_output"].shape == lone.shape
        torch.testing.assert_close(together["pooler_output"], lone, rtol=0, atol=1e-5)
        # A cached piece owns its memory instead of keeping the whole batch's output alive.
        storage = together["pooler_output"].untyped_storage().nbytes()
        assert storage == together["pooler_output"].numel() * together["pooler_output"].element_size()


def test_new_images_of_a_batch_share_one_vision_forward(tiny_model_dir: Path, pictures: list[Image.Image]) -> None:
    reranker = LocalReranker(model=str(tiny_model_dir), device="cpu", max_batch_tokens=100_000, max_padding=1.0)
    calls = count_vision_forwards(reranker)
    documents = [Document(image=picture) for picture in pictures] + [Document(image=pictures[0])]

    reranker.score(Query("a product like this one", image=pictures[1]), documents)

    # The query image runs with the shared prefix; the other four distinct images in one forward.
    assert calls == [1, len(pictures) - 1]
    assert reranker.engine.stats.vision_encoded == len(pictures)
    assert reranker.engine.stats.vision_forwards == 2
    # A second request finds every image cached.
    reranker.score(Query("a product like this one", image=pictures[1]), documents)
    assert len(calls) == 2


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
