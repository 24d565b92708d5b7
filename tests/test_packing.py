"""bf16 linear weights reordered once for oneDNN on the CPU: the same outputs, and only where they pay."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch

from lychee_rerank.core import Document, LocalReranker, Query
from lychee_rerank.core.local.engine import ScoringEngine
from lychee_rerank.core.local.loading import load_model
from lychee_rerank.core.local.packing import PackedLinear, pack_linear_weights, packing_applies
from lychee_rerank.core.profiles import get_profile

CPU = torch.device("cpu")
needs_bf16_kernels = pytest.mark.skipif(
    not packing_applies(CPU, torch.bfloat16),
    reason="this CPU's oneDNN has no bf16 kernels (no AVX512-BF16 or AMX): weights are never packed here",
)


def _modules_of(model: torch.nn.Module, kind: type) -> list[str]:
    return [name for name, module in model.named_modules() if type(module) is kind]


@needs_bf16_kernels
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_gives_bit_identical_outputs(bias: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    linear = torch.nn.Linear(96, 160, bias=bias).to(torch.bfloat16)
    packed = PackedLinear(linear)
    hidden = torch.randn(3, 17, 96, generator=generator).to(torch.bfloat16)
    strided = torch.randn(3, 17, 192, generator=generator).to(torch.bfloat16)[..., ::2]
    with torch.inference_mode():
        assert torch.equal(packed(hidden), linear(hidden))
        assert torch.equal(packed(hidden[0]), linear(hidden[0]))  # 2-D, as the vision tower calls it
        assert torch.equal(packed(strided), linear(strided.contiguous()))
        assert packed(hidden[:, :0]).shape == (3, 0, 160)


@needs_bf16_kernels
def test_packing_replaces_every_bf16_linear_and_releases_the_old_ones() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.SiLU(), torch.nn.Sequential(torch.nn.Linear(64, 16, bias=False))
    ).to(torch.bfloat16)
    model.append(torch.nn.Linear(16, 8))  # a float32 layer is not packed
    old = [weakref.ref(module) for module in model.modules() if type(module) is torch.nn.Linear]
    hidden = torch.randn(4, 32).to(torch.bfloat16)
    with torch.inference_mode():
        before = model[:3](hidden)
        assert pack_linear_weights(model) == 2
        assert torch.equal(model[:3](hidden), before)
    assert [type(model[0]), type(model[2][0]), type(model[3])] == [PackedLinear, PackedLinear, torch.nn.Linear]
    gc.collect()
    assert [ref() is None for ref in old] == [True, True, False]


@needs_bf16_kernels
def test_bf16_model_on_the_cpu_is_packed_and_scores_exactly_as_unpacked(
    tiny_model_dir: Path, image_files: list[Path]
) -> None:
    profile = get_profile("lychee")
    engines = {
        pack: ScoringEngine(
            load_model(str(tiny_model_dir), profile, device="cpu", dtype="bfloat16", pack_weights=pack),
            profile,
            max_batch_tokens=400,  # several batches, padding between the shared prefix and the documents
        )
        for pack in (False, True)
    }
    packed_model = engines[True].loaded.model
    assert _modules_of(packed_model.model, PackedLinear)
    assert not _modules_of(packed_model.model, torch.nn.Linear)  # vision tower and language model alike
    assert type(packed_model.get_output_embeddings()) is torch.nn.Linear  # the head keeps its weight
    assert not _modules_of(engines[False].loaded.model, PackedLinear)

    documents = [
        Document("a white linen shirt, short sleeves, relaxed fit"),
        Document("red car"),
        Document("纯棉白色衬衫，修身版型"),
        Document(image=str(image_files[0])),
        Document("chart of revenue by quarter", image=str(image_files[1])),
        Document("running shoes, size 42, breathable mesh upper and a cushioned sole", image=str(image_files[2])),
    ]
    groups = [
        (Query("white shirt"), documents, None),
        (Query("a product like this one", image=str(image_files[5])), documents[:4], None),
    ]
    unpacked, packed = (engine.score_groups(groups) for engine in (engines[False], engines[True]))
    shared_unpacked, shared_packed = (engine.score(*groups[1][:2]) for engine in (engines[False], engines[True]))
    assert packed == unpacked
    assert shared_packed == shared_unpacked
    assert engines[True].stats.batches > 2
    assert max(packed[0]) - min(packed[0]) > 0.01  # scores that all sat at one value would prove nothing


def test_float32_on_the_cpu_is_left_as_loaded(tiny_reranker: LocalReranker) -> None:
    assert not packing_applies(CPU, torch.float32)
    assert not packing_applies(torch.device("cuda"), torch.bfloat16)
    assert not _modules_of(tiny_reranker.loaded.model, PackedLinear)
    assert _modules_of(tiny_reranker.loaded.model.model, torch.nn.Linear)
