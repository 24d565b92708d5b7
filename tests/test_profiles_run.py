"""Every advertised profile runs: its engine scores equal the naive reference built from its model card.

For each profile a tiny random checkpoint of its architecture is written (``qwen2_5_vl`` for Lychee,
``qwen3_vl`` for Qwen3-VL-Reranker, ``qwen2_vl`` for MonoQwen2-VL) and loaded through ``from_pretrained``;
the engine (shared prefix, batching, vision cache, two-row head) must give the scores of
:class:`~lychee_rerank.core.testing.reference.ReferenceScorer`, which lays the prompt out the way each
model card's usage code does, with the card's answer tokens, one pair at a time on the full output head.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lychee_rerank.core import Document, InvalidInputError, LocalReranker, Query
from lychee_rerank.core.profiles import PROFILES
from lychee_rerank.core.testing.checkpoint import write_tiny_checkpoint
from lychee_rerank.core.testing.reference import ReferenceScorer

ARCHITECTURE = {"lychee": "qwen2_5_vl", "qwen3-vl-reranker": "qwen3_vl", "monoqwen2-vl": "qwen2_vl"}
ANSWERS = {"lychee": ("yes", "no"), "qwen3-vl-reranker": ("yes", "no"), "monoqwen2-vl": ("True", "False")}


def test_every_registered_profile_is_covered_here() -> None:
    assert set(PROFILES) == set(ARCHITECTURE)


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``engines(profile)``: the reference and two rerankers (one batch, small batches) on that profile's checkpoint."""
    built: dict[str, dict[str, Any]] = {}

    def get(name: str) -> dict[str, Any]:
        if name not in built:
            folder = (
                tiny_model_dir  # the session's Qwen2.5-VL checkpoint
                if name == "lychee"
                else write_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{name}"), architecture=ARCHITECTURE[name])
            )
            built[name] = {
                "name": name,
                "reference": ReferenceScorer.from_pretrained(folder, layout=name),
                "one_batch": LocalReranker(
                    model=str(folder), device="cpu", profile=name, max_batch_tokens=100_000, max_padding=1.0
                ),
                "small_batches": LocalReranker(model=str(folder), device="cpu", profile=name, max_batch_tokens=200),
            }
        return built[name]

    return get


def _documents(image_files: list[Path]) -> list[Document]:
    return [
        Document("a white linen shirt"),
        Document(image=str(image_files[0])),
        Document("chart of revenue by quarter", image=image_files[1]),
        Document("The figure reports accuracy versus training steps for three models. " * 6),
        Document(image=Image.open(image_files[4])),
        Document("running shoes, size 42", image=str(image_files[2])),
        Document("no"),
        Document(image=str(image_files[0])),  # the same image twice
        Document("纯棉白色衬衫，修身版型", image=str(image_files[5])),
    ]


def _queries(name: str, image_files: list[Path]) -> dict[str, Query]:
    queries = {"text": Query("white linen shirt")}
    if name != "monoqwen2-vl":  # the MonoQwen2-VL card has text queries only
        queries["image"] = Query(image=str(image_files[2]))
        queries["both"] = Query("a product like this one, in blue", image=str(image_files[5]))
    return queries


def _as_dict(item: Query | Document) -> dict[str, Any]:
    return {"text": item.text, "image": item.image}


@pytest.mark.parametrize("name", sorted(ARCHITECTURE))
def test_the_checkpoint_has_the_profile_architecture_and_answer_tokens(engines: Any, name: str) -> None:
    engines = engines(name)
    reranker: LocalReranker = engines["one_batch"]
    loaded = reranker.engine.loaded
    assert loaded.model.config.model_type in PROFILES[engines["name"]].model_types
    positive, negative = ANSWERS[engines["name"]]
    tokenizer = loaded.processor.tokenizer
    assert (loaded.positive_token_id, loaded.negative_token_id) == (
        tokenizer.convert_tokens_to_ids(positive),
        tokenizer.convert_tokens_to_ids(negative),
    )


CASES = [
    (name, kind)
    for name in sorted(ARCHITECTURE)
    # The MonoQwen2-VL card has text queries only (a query image is refused: tested below).
    for kind in (("text",) if name == "monoqwen2-vl" else ("text", "image", "both"))
]


@pytest.mark.parametrize(("name", "query_kind"), CASES)
def test_engine_equals_the_model_card_reference_in_shuffled_batches(
    engines: Any, image_files: list[Path], name: str, query_kind: str
) -> None:
    engines = engines(name)
    query = _queries(name, image_files)[query_kind]
    documents = _documents(image_files)
    reference: ReferenceScorer = engines["reference"]
    expected = [reference.score(_as_dict(query), _as_dict(document)) for document in documents]
    together = engines["one_batch"].score(query, documents)
    assert together == pytest.approx(expected, abs=1e-4)
    order = list(range(len(documents)))
    random.Random(len(query_kind)).shuffle(order)
    small: LocalReranker = engines["small_batches"]
    before = small.engine.stats.batches
    shuffled = small.score(query, [documents[i] for i in order])
    assert small.engine.stats.batches - before > 2  # several batches of other compositions
    assert [shuffled[order.index(i)] for i in range(len(documents))] == pytest.approx(expected, abs=1e-4)
    # Scores that all sat at one value would make the comparison meaningless.
    assert max(together) - min(together) > 0.02


@pytest.mark.parametrize("name", ["lychee", "qwen3-vl-reranker"])  # the MonoQwen2-VL prompt has no instruction
def test_engine_equals_the_reference_with_an_instruction(engines: Any, name: str) -> None:
    engines = engines(name)
    documents = [Document("a white linen shirt"), Document("a car")]
    instruction = "Given a product image and description, retrieve similar products"
    expected = [engines["reference"].score({"text": "shirt"}, _as_dict(d), instruction) for d in documents]
    assert engines["one_batch"].score("shirt", documents, instruction=instruction) == pytest.approx(expected, abs=1e-4)


def test_monoqwen_refuses_a_query_image_instead_of_dropping_it(engines: Any, image_files: list[Path]) -> None:
    with pytest.raises(InvalidInputError, match="no place for a query image"):
        engines("monoqwen2-vl")["one_batch"].score(Query("shirt", image=str(image_files[0])), ["a shirt"])
