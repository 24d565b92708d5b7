"""Shared fixtures: the tiny checkpoint, test images, and the naive reference scorer."""

from __future__ import annotations

import os

# Tests never touch the network beyond loopback: a hub id must fail at once instead of downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from lychee_rerank.core import LocalReranker
from lychee_rerank.core.testing.checkpoint import write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint, written once per test session."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"))


@pytest.fixture(scope="session")
def tiny_reranker(tiny_model_dir: Path) -> LocalReranker:
    """A LocalReranker on the tiny checkpoint (CPU, float32), shared by read-only tests."""
    return LocalReranker(model=str(tiny_model_dir), device="cpu")


def make_image(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic picture with shapes and a gradient, different for each seed."""
    image = Image.new("RGB", (width, height), ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    draw = ImageDraw.Draw(image)
    for step in range(4):
        x0 = (seed * 7 + step * 13) % max(width - 8, 1)
        y0 = (seed * 11 + step * 17) % max(height - 8, 1)
        colour = ((seed + step) * 71 % 256, (seed * step + 40) % 256, (step * 90 + seed) % 256)
        draw.rectangle([x0, y0, x0 + width // 3, y0 + height // 4], fill=colour)
        draw.ellipse([width - x0 - 10, y0, width - x0 + 6, y0 + 14], outline=(255, 255, 255))
    return image


@pytest.fixture(scope="session")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six PNG files of different sizes and content."""
    folder = tmp_path_factory.mktemp("images")
    sizes = [(64, 48), (100, 100), (56, 120), (90, 60), (140, 70), (60, 60)]
    paths = []
    for seed, (width, height) in enumerate(sizes):
        path = folder / f"image{seed}.png"
        make_image(width, height, seed + 1).save(path)
        paths.append(path)
    return paths
