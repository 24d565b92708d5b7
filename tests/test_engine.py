"""The engine against the naive reference, and its invariances: batching, order, padding, OOM."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from lychee_rerank.core import Document, InvalidInputError, LocalReranker, Query
from lychee_rerank.core.local.engine import pack_batches
from lychee_rerank.core.testing.reference import ReferenceScorer

CHINESE_QUERY = "适合小个子女生的显高西装套装，米白色，春夏穿"


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> ReferenceScorer:
    return ReferenceScorer.from_pretrained(tiny_model_dir)


def _as_dict(item: Query | Document) -> dict[str, Any]:
    return {"text": item.text, "image": item.image}


def mixed_documents(image_files: list[Path]) -> list[Document]:
    """Eighteen documents of mixed lengths and modalities, images given in several forms."""
    long_text = " ".join(["The figure reports accuracy versus training steps for three models."] * 12)
    png_bytes = image_files[3].read_bytes()
    return [
        Document("a white linen shirt"),
        Document(image=str(image_files[0])),
        Document("chart of revenue by quarter", image=image_files[1]),
        Document(CHINESE_QUERY),
        Document(long_text),
        Document("yes"),
        Document(image=png_bytes),
        Document("running shoes, size 42", image=str(image_files[2])),
        Document("no"),
        Document(image=Image.open(image_files[4])),
        Document("Table 2: mean and standard deviation over five seeds. " * 5),
        Document("纯棉白色衬衫，修身版型", image=str(image_files[5])),
        Document("x"),
        Document(image=str(image_files[0])),  # the same image again: decoded and encoded once
        Document("a photo of a scratched bearing", image=str(image_files[3])),
        Document(long_text[:300]),
        Document("leather handbag"),
        Document("wireless headphones", image=str(image_files[1])),
    ]


@pytest.fixture(scope="module")
def queries(image_files: list[Path]) -> dict[str, Query]:
    return {
        "text": Query("white linen shirt"),
        "image": Query(image=str(image_files[2])),
        "text+image": Query("a product like this one, in blue", image=str(image_files[5])),
        "chinese": Query(CHINESE_QUERY),
    }


@pytest.mark.parametrize("query_kind", ["text", "image", "text+image", "chinese"])
def test_engine_matches_naive_reference(
    tiny_reranker: LocalReranker,
    reference: ReferenceScorer,
    queries: dict[str, Query],
    image_files: list[Path],
    query_kind: str,
) -> None:
    query = queries[query_kind]
    documents = mixed_documents(image_files)
    scores = tiny_reranker.score(query, documents)
    expected = [reference.score(_as_dict(query), _as_dict(document)) for document in documents]
    assert len(scores) == len(documents) >= 17
    for index, (got, want) in enumerate(zip(scores, expected, strict=True)):
        assert got == pytest.approx(want, abs=1e-4), f"document {index}"
    # Scores that all sat at one value would make this comparison meaningless.
    assert max(scores) - min(scores) > 0.02
    assert all(0.0 <= score <= 1.0 for score in scores)


def test_engine_uses_the_given_instruction(
    tiny_reranker: LocalReranker, reference: ReferenceScorer, queries: dict[str, Query]
) -> None:
    instruction = "Given a product image and description, retrieve similar products"
    documents = [Document("a white linen shirt"), Document("a car")]
    by_preset = tiny_reranker.score(queries["text"], documents, instruction="ecommerce")
    by_text = tiny_reranker.score(queries["text"], documents, instruction=instruction)
    default = tiny_reranker.score(queries["text"], documents)
    expected = [reference.score(_as_dict(queries["text"]), _as_dict(d), instruction) for d in documents]
    assert by_preset == by_text
    assert by_text == pytest.approx(expected, abs=1e-4)
    assert by_text != pytest.approx(default, abs=1e-6)


def test_pair_scores_the_same_alone_in_any_batch_and_any_order(
    tiny_model_dir: Path, queries: dict[str, Query], image_files: list[Path]
) -> None:
    documents = mixed_documents(image_files)
    query = queries["text+image"]
    # A small token budget forces many batches of different compositions and padding widths.
    small_batches = LocalReranker(model=str(tiny_model_dir), device="cpu", max_batch_tokens=300)
    large_batches = LocalReranker(model=str(tiny_model_dir), device="cpu", max_batch_tokens=100_000, max_padding=1.0)
    together = large_batches.score(query, documents)
    assert large_batches.engine.stats.batches == 1
    assert small_batches.score(query, documents) == pytest.approx(together, abs=1e-5)
    assert small_batches.engine.stats.batches > 3
    alone = [large_batches.score(query, [document])[0] for document in documents]
    assert alone == pytest.approx(together, abs=1e-5)
    order = list(range(len(documents)))
    random.Random(7).shuffle(order)
    shuffled = large_batches.score(query, [documents[i] for i in order])
    assert [shuffled[order.index(i)] for i in range(len(documents))] == pytest.approx(together, abs=1e-5)


def test_vision_tower_runs_once_per_distinct_image(
    tiny_model_dir: Path, queries: dict[str, Query], image_files: list[Path]
) -> None:
    reranker = LocalReranker(model=str(tiny_model_dir), device="cpu")
    documents = [Document(image=str(image_files[0])), Document(image=image_files[0].read_bytes())] * 3
    reranker.score(queries["image"], documents)
    # One query image and one document image (six slots): two encodings.
    assert reranker.engine.stats.vision_encoded == 2
    reranker.score(queries["image"], documents)
    assert reranker.engine.stats.vision_encoded == 2


def test_out_of_memory_splits_the_batch_and_loses_nothing(
    tiny_model_dir: Path, queries: dict[str, Query], image_files: list[Path]
) -> None:
    documents = mixed_documents(image_files)
    healthy = LocalReranker(model=str(tiny_model_dir), device="cpu", max_batch_tokens=100_000, max_padding=1.0)
    expected = healthy.score(queries["text+image"], documents)

    flaky = LocalReranker(model=str(tiny_model_dir), device="cpu", max_batch_tokens=100_000, max_padding=1.0)
    batch_sizes_tried: list[int] = []

    def fail_above_three_rows(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        rows = kwargs["inputs_embeds"].shape[0]
        batch_sizes_tried.append(rows)
        if rows > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    # The fault is injected into the model (the engine's dependency), not into the engine.
    flaky.loaded.model.model.language_model.register_forward_pre_hook(fail_above_three_rows, with_kwargs=True)
    assert flaky.score(queries["text+image"], documents) == pytest.approx(expected, abs=1e-5)
    assert len(documents) in batch_sizes_tried
    assert flaky.engine.stats.oom_splits > 0
    assert max(flaky.engine.stats.batch_sizes) <= 3


class FakeAccelerator:
    """Memory that an attempt holds for as long as anything refers to what it allocated, as CUDA's does.

    A hook on the model's first decoder layer allocates each forward's activations (``unit`` numbers a
    row) and raises the accelerator's out-of-memory error when what is alive exceeds ``capacity``. What
    a failed forward allocated stays alive while its frames are: for as long as its exception's traceback
    is referred to, e.g. by an ``except`` block that is still running.
    """

    def __init__(self, capacity_rows: int, unit: int = 1024) -> None:
        self.capacity = capacity_rows * unit
        self.unit = unit
        self.allocations: list[weakref.ref[torch.Tensor]] = []
        self.attempts: list[tuple[int, int]] = []  # (rows, units alive before this attempt)

    def in_use(self) -> int:
        self.allocations = [ref for ref in self.allocations if ref() is not None]
        return sum(tensor.numel() for ref in self.allocations if (tensor := ref()) is not None)

    def hook(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        rows = hidden.shape[0]
        self.attempts.append((rows, self.in_use() // self.unit))
        activations = torch.empty(rows * self.unit)
        self.allocations.append(weakref.ref(activations))
        if self.in_use() > self.capacity:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {rows} rows of activations")


def test_out_of_memory_retries_only_after_the_failed_attempt_is_released(
    tiny_model_dir: Path, queries: dict[str, Query], image_files: list[Path]
) -> None:
    documents = mixed_documents(image_files)
    healthy = LocalReranker(model=str(tiny_model_dir), device="cpu", max_batch_tokens=100_000, max_padding=1.0)
    expected = healthy.score(queries["text+image"], documents)
    flaky = LocalReranker(model=str(tiny_model_dir), device="cpu", max_batch_tokens=100_000, max_padding=1.0)
    # Two rows fit; all eighteen do not. Each retry must find the memory of the attempts before it free:
    # a retry made while the failed attempt's traceback is alive would find 18 + 9 + 4 + ... rows taken.
    accelerator = FakeAccelerator(capacity_rows=2)
    flaky.loaded.model.model.language_model.layers[0].register_forward_pre_hook(accelerator.hook, with_kwargs=True)

    assert flaky.score(queries["text+image"], documents) == pytest.approx(expected, abs=1e-5)
    assert flaky.engine.stats.oom_splits > 0
    assert max(flaky.engine.stats.batch_sizes) <= 2
    assert all(alive == 0 for _, alive in accelerator.attempts), accelerator.attempts


def test_out_of_memory_on_a_single_pair_is_a_clear_error(tiny_model_dir: Path) -> None:
    reranker = LocalReranker(model=str(tiny_model_dir), device="cpu")

    def always_fail(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory.")

    reranker.loaded.model.model.language_model.register_forward_pre_hook(always_fail, with_kwargs=True)
    with pytest.raises(InvalidInputError, match=r"document 1 alone .* does not fit .* lower max_pixels"):
        reranker.score("q", ["a", "b" * 50])


def test_other_errors_are_not_retried(tiny_model_dir: Path) -> None:
    reranker = LocalReranker(model=str(tiny_model_dir), device="cpu")
    calls: list[int] = []

    def broken(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        calls.append(1)
        raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")

    reranker.loaded.model.model.language_model.register_forward_pre_hook(broken, with_kwargs=True)
    with pytest.raises(RuntimeError, match="CUBLAS"):
        reranker.score("q", ["a", "b", "c"])
    assert len(calls) == 1


def test_empty_document_list_returns_empty(tiny_reranker: LocalReranker) -> None:
    assert tiny_reranker.score("anything", []) == []
    assert tiny_reranker.rerank("anything", []) == []


def test_rerank_sorts_cuts_and_keeps_indices(tiny_reranker: LocalReranker, image_files: list[Path]) -> None:
    documents = mixed_documents(image_files)
    scores = tiny_reranker.score("white linen shirt", documents)
    results = tiny_reranker.rerank("white linen shirt", documents)
    assert [r.score for r in results] == sorted(scores, reverse=True)
    assert [scores[r.index] for r in results] == [r.score for r in results]
    assert results[0].document == documents[results[0].index]
    assert len(tiny_reranker.rerank("white linen shirt", documents, top_n=3)) == 3
    threshold = statistics.median(scores)
    kept = tiny_reranker.rerank("white linen shirt", documents, min_score=threshold)
    assert kept
    assert all(r.score >= threshold for r in kept)
    assert len(kept) == sum(score >= threshold for score in scores)
    assert tiny_reranker.rerank("white linen shirt", documents, top_n=0) == []


@pytest.mark.parametrize(("top_n", "min_score"), [(-1, None), (True, None), (1.5, None), (None, float("nan"))])
def test_rerank_refuses_bad_options(tiny_reranker: LocalReranker, top_n: Any, min_score: Any) -> None:
    with pytest.raises(InvalidInputError):
        tiny_reranker.rerank("q", ["a"], top_n=top_n, min_score=min_score)


async def test_async_scoring_does_not_block_the_event_loop(
    tiny_reranker: LocalReranker, image_files: list[Path]
) -> None:
    documents = mixed_documents(image_files) * 3
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    scores = await tiny_reranker.ascore("white linen shirt", documents)
    elapsed = time.perf_counter() - started
    done.set()
    await task
    assert scores == pytest.approx(tiny_reranker.score("white linen shirt", documents), abs=1e-6)
    # A blocked loop would tick once; a free one ticks for most of the scoring time.
    assert ticks >= max(3, int(elapsed / 0.001 / 20))
    results = await tiny_reranker.arerank("white linen shirt", documents, top_n=2)
    assert [r.score for r in results] == sorted(scores, reverse=True)[:2]


def test_engine_batching_packs_by_token_budget() -> None:
    lengths = [30, 10, 50, 20, 20, 5]
    batches = pack_batches(lengths, max_batch_tokens=60)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * width <= 60
    # Longest first, and a pair longer than the budget still gets scored, alone.
    assert batches[0] == [2]
    assert pack_batches([500], max_batch_tokens=60) == [[0]]


def test_batches_never_pad_a_pair_by_more_than_max_padding() -> None:
    lengths = [100, 95, 81, 79, 40, 33, 32, 10]
    batches = pack_batches(lengths, max_batch_tokens=10_000, max_padding=0.2)
    assert batches == [[0, 1, 2], [3], [4, 5, 6], [7]]
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert all(lengths[i] >= 0.8 * width for i in batch)
    assert pack_batches(lengths, max_batch_tokens=10_000, max_padding=1.0) == [[0, 1, 2, 3, 4, 5, 6, 7]]


@pytest.mark.parametrize("query_kind", ["text", "image", "text+image"])
def test_shared_prefix_is_reused_and_changes_no_score(
    tiny_model_dir: Path, queries: dict[str, Query], image_files: list[Path], query_kind: str
) -> None:
    documents = mixed_documents(image_files)
    with_prefix = LocalReranker(model=str(tiny_model_dir), device="cpu", max_batch_tokens=400)
    without_prefix = LocalReranker(model=str(tiny_model_dir), device="cpu", max_batch_tokens=400, reuse_prefix=False)
    reused = with_prefix.score(queries[query_kind], documents)
    assert reused == pytest.approx(without_prefix.score(queries[query_kind], documents), abs=1e-5)
    assert with_prefix.engine.stats.prefix_tokens_reused > 0
    assert without_prefix.engine.stats.prefix_tokens_reused == 0
    assert with_prefix.engine.stats.computed_tokens < without_prefix.engine.stats.computed_tokens
    assert with_prefix.engine.stats.tokens == without_prefix.engine.stats.tokens


def test_shared_prefix_holds_the_query_image_but_never_a_document_image(
    tiny_reranker: LocalReranker, reference: ReferenceScorer, queries: dict[str, Query]
) -> None:
    engine = tiny_reranker.engine
    # Two different images of the same size have identical placeholder tokens; they must not be shared.
    same_size = [Image.new("RGB", (64, 48), colour) for colour in ("red", "navy", "red")]
    documents = [Document(image=image) for image in same_size]
    query = queries["text+image"]
    images, query_key, document_keys = engine._prepare_images(query, documents)
    pairs = engine._encode_pairs(query, documents, None, images, query_key, document_keys)
    assert pairs[0].input_ids == pairs[1].input_ids  # same tokens, different pictures
    length, image_count = engine.shared_prefix(pairs)
    assert image_count == 1  # the query image
    first_document_image = engine._image_runs(pairs[0].input_ids)[1][0]
    assert length <= first_document_image
    scores = tiny_reranker.score(query, documents)
    expected = [reference.score(_as_dict(query), _as_dict(document)) for document in documents]
    assert scores == pytest.approx(expected, abs=1e-4)
    assert scores[0] == pytest.approx(scores[2], abs=1e-6)
    assert scores[0] != pytest.approx(scores[1], abs=1e-4)


def test_score_groups_equals_scoring_each_request_alone(
    tiny_model_dir: Path, queries: dict[str, Query], image_files: list[Path]
) -> None:
    reranker = LocalReranker(model=str(tiny_model_dir), device="cpu")
    documents = mixed_documents(image_files)
    groups = [
        (queries["text"], documents[:5], None),
        (queries["image"], documents[5:9], "ecommerce"),
        (queries["text+image"], [], None),
        (queries["chinese"], documents[9:], "Find the matching product"),
    ]
    together = reranker.engine.score_groups(groups)
    alone = [reranker.engine.score(query, docs, instruction) for query, docs, instruction in groups]
    assert [len(scores) for scores in together] == [5, 4, 0, 9]
    for merged, single in zip(together, alone, strict=True):
        assert merged == pytest.approx(single, abs=1e-5)


def test_score_groups_names_the_request_with_bad_input(tiny_reranker: LocalReranker) -> None:
    groups = [(Query("q"), [Document("a")], None), (Query("q"), [Document("b"), Document(image=b"junk")], None)]
    with pytest.raises(InvalidInputError, match=r"^request 1: document 1: "):
        tiny_reranker.engine.score_groups(groups)
