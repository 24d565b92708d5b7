"""The demo's corpus: product photos and paper figures with captions, drawn once into a cache folder.

The corpus is generated rather than downloaded, so the demo runs on a machine with no network and
gives the same first-stage results everywhere. Captions are written the way shop listings and figure
captions are (some in Chinese), and several share words with items they do not describe ("white
linen dress" beside "white linen shirt", "training loss" beside "training accuracy"): exactly where
a word-matching first stage goes wrong and a multimodal reranker, looking at the picture, should not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from lychee_rerank.adapters.demo.drawing import draw_chart, draw_product

CORPUS_VERSION = 1
"""Bumped whenever the items or their drawings change, so cached corpora are regenerated."""

ItemKind = Literal["product", "figure"]


@dataclass(frozen=True)
class CorpusItem:
    """One searchable item: a caption and the file name of its picture.

    Attributes:
        id: A stable integer id, also the Qdrant point id.
        kind: ``"product"`` or ``"figure"``.
        text: The caption or product description.
        image: The picture's file name inside the corpus folder's ``images/``.
    """

    id: int
    kind: ItemKind
    text: str
    image: str


@dataclass(frozen=True)
class DemoQuery:
    """A query the demo runs: text, optionally a reference photo, and an instruction preset."""

    text: str
    image: str | None = None
    instruction: str | None = None


# (kind, colour, caption). The drawing shows exactly the kind and colour named.
_PRODUCTS: list[tuple[str, str, str]] = [
    ("shirt", "white", "White linen shirt, relaxed fit, breathable for summer"),
    ("shirt", "navy", "Navy linen shirt, relaxed fit"),
    ("shirt", "blue", "Blue oxford cotton shirt, button-down collar"),
    ("shirt", "black", "Black silk shirt for evening wear"),
    ("shirt", "pink", "Pink cotton shirt, slim fit, summer collection"),
    ("shirt", "white", "Classic white cotton shirt, slim fit, office wear"),
    ("shirt", "green", "Olive green linen overshirt with chest pocket"),
    ("shirt", "white", "白色亚麻衬衫，宽松版型，夏季透气"),
    ("dress", "white", "White linen summer dress, midi length"),
    ("dress", "red", "Red summer dress with thin straps"),
    ("dress", "black", "Black evening dress, floor length"),
    ("dress", "green", "Green wrap dress in soft jersey"),
    ("dress", "yellow", "Yellow sundress for the beach"),
    ("dress", "red", "红色连衣裙，夏季长款，雪纺面料"),
    ("dress", "pink", "粉色连衣裙，夏季短款"),
    ("dress", "blue", "蓝色牛仔连衣裙，春秋款"),
    ("shoes", "red", "Red running shoes, lightweight mesh"),
    ("shoes", "white", "White canvas sneakers for summer"),
    ("shoes", "black", "Black leather derby shoes"),
    ("shoes", "brown", "Brown suede desert boots"),
    ("shoes", "red", "红色跑步鞋，轻便透气"),
    ("bag", "brown", "Brown leather handbag with top handle"),
    ("bag", "black", "Black tote bag, water-resistant nylon"),
    ("bag", "beige", "Beige linen beach bag for summer"),
    ("bag", "red", "Small red crossbody bag"),
    ("bag", "black", "黑色真皮手提包"),
    ("mug", "white", "White ceramic mug, 350 ml, for summer iced coffee"),
    ("mug", "blue", "Blue enamel camping mug"),
    ("mug", "yellow", "Yellow breakfast mug with a linen-texture glaze"),
    ("mug", "white", "白色陶瓷马克杯"),
]

# (chart kind, title, x label, y label, rising, series, caption).
_FIGURES: list[tuple[str, str, str, str, bool, int, str]] = [
    (
        "line",
        "Accuracy vs. training steps",
        "training steps",
        "accuracy",
        True,
        3,
        "Figure 1: accuracy vs. training steps for three model sizes",
    ),
    (
        "line",
        "Training loss",
        "training steps",
        "loss",
        False,
        2,
        "Figure 2: training loss vs. steps, with and without warm-up",
    ),
    (
        "line",
        "Validation accuracy",
        "epochs",
        "accuracy (%)",
        True,
        2,
        "Figure 3: validation accuracy per epoch on ImageNet",
    ),
    (
        "scatter",
        "Accuracy vs. parameters",
        "parameters (B)",
        "accuracy",
        True,
        1,
        "Figure 4: test accuracy vs. number of parameters",
    ),
    ("line", "Latency", "batch size", "latency (ms)", True, 2, "Figure 5: latency vs. batch size on one GPU"),
    ("line", "Throughput", "sequence length", "tokens/s", False, 2, "Figure 6: throughput vs. sequence length"),
    ("bar", "Revenue by quarter", "quarter", "revenue (M$)", True, 2, "Figure 7: revenue by quarter, 2023 vs. 2024"),
    (
        "bar",
        "Accuracy per dataset",
        "dataset",
        "accuracy",
        True,
        3,
        "Table 2 as a chart: accuracy per dataset for three rerankers",
    ),
    (
        "bar",
        "Ablation",
        "variant",
        "nDCG@10",
        True,
        2,
        "Figure 8: ablation of the reranking stage, nDCG@10 with and without it",
    ),
    (
        "scatter",
        "Recall vs. index size",
        "index size (M docs)",
        "recall@10",
        False,
        2,
        "Figure 9: recall@10 vs. index size",
    ),
    (
        "line",
        "Learning rate schedule",
        "training steps",
        "learning rate",
        False,
        1,
        "Figure 10: learning rate schedule over training steps",
    ),
    ("line", "Accuracy vs. steps", "steps", "accuracy", True, 2, "图 11：模型在测试集上的准确率随训练步数的变化"),
    ("bar", "Memory", "image resolution", "GPU memory (GB)", True, 1, "Figure 12: peak memory vs. image resolution"),
    (
        "scatter",
        "Score calibration",
        "predicted score",
        "observed accuracy",
        True,
        1,
        "Figure 13: calibration of reranker scores against observed accuracy",
    ),
]

DEMO_QUERIES: list[DemoQuery] = [
    DemoQuery("white linen shirt for summer", image="query_white_shirt.png", instruction="ecommerce"),
    DemoQuery("figure showing accuracy versus training steps", instruction="academic"),
    DemoQuery("夏季红色连衣裙", instruction="ecommerce"),
]
"""The demo's default queries: a product search with a reference photo, a figure search, a Chinese query."""

_QUERY_IMAGES: dict[str, Callable[[], Image.Image]] = {
    # A second photo of a white shirt, shifted, so it matches the listing without being the same file.
    "query_white_shirt.png": lambda: draw_product("shirt", "white", variant=7),
}


def corpus_items() -> list[CorpusItem]:
    """The corpus, in id order; the same list on every machine."""
    items: list[CorpusItem] = []
    for kind, colour, caption in _PRODUCTS:
        items.append(CorpusItem(len(items), "product", caption, f"{len(items):02d}_{colour}_{kind}.png"))
    for chart, _title, _x, _y, _rising, _series, caption in _FIGURES:
        items.append(CorpusItem(len(items), "figure", caption, f"{len(items):02d}_{chart}_chart.png"))
    return items


def _draw(item: CorpusItem) -> Image.Image:
    if item.kind == "product":
        kind, colour, _ = _PRODUCTS[item.id]
        return draw_product(kind, colour, variant=item.id)
    chart, title, x_label, y_label, rising, series, _ = _FIGURES[item.id - len(_PRODUCTS)]
    return draw_chart(chart, title, x_label, y_label, seed=item.id, series=series, rising=rising)


def _manifest_matches(folder: Path, items: list[CorpusItem]) -> bool:
    manifest = folder / "corpus.json"
    if not manifest.is_file():
        return False
    try:
        stored = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if stored.get("version") != CORPUS_VERSION or len(stored.get("items", [])) != len(items):
        return False
    names = [item.image for item in items] + list(_QUERY_IMAGES)
    return all((folder / "images" / name).is_file() for name in names)


def ensure_corpus(
    folder: str | os.PathLike[str],
    *,
    rebuild: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[CorpusItem]:
    """Draws the corpus into ``folder/images`` and writes ``folder/corpus.json``, unless already there.

    Args:
        folder: The corpus folder; created if missing.
        rebuild: Redraw even when a matching corpus is present.
        progress: Called with 1 after each picture is written (e.g. a progress bar's ``update``).

    Returns:
        The items; their pictures are ``folder/images/<item.image>``.
    """
    root = Path(folder)
    items = corpus_items()
    if not rebuild and _manifest_matches(root, items):
        return items
    (root / "images").mkdir(parents=True, exist_ok=True)
    for item in items:
        _draw(item).save(root / "images" / item.image)
        if progress is not None:
            progress(1)
    for name, draw in _QUERY_IMAGES.items():
        draw().save(root / "images" / name)
    # The manifest is written last: a run cut short leaves no manifest, so the next run redraws.
    manifest = {"version": CORPUS_VERSION, "items": [asdict(item) for item in items]}
    (root / "corpus.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    return items
