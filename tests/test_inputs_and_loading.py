"""Inputs, bad images inside a request, and model loading errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from lychee_rerank.core import (
    Document,
    ImageError,
    InvalidInputError,
    LocalReranker,
    MediaPolicy,
    ModelLoadError,
    Query,
)
from lychee_rerank.core.inputs import as_documents, as_query
from lychee_rerank.core.local.loading import choose_attention, choose_device, choose_dtype
from lychee_rerank.core.profiles import TINY_MODEL_NAME


def test_plain_strings_are_text_never_paths(image_files: list[Path]) -> None:
    assert as_query(str(image_files[0])) == Query(text=str(image_files[0]))
    assert as_documents(["a", {"image": "x.png"}, Image.new("RGB", (4, 4))])[1] == Document(image="x.png")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"txt": "a"}, r"document 0: unknown key\(s\) \['txt'\]"),
        ({}, "document 0: a Document needs text, an image, or both"),
        (42, "document 0: expected a Document, a string or"),
        ({"text": 3}, "document 0: Document.text must be a string"),
        ({"image": ""}, "document 0: Document.image is empty"),
    ],
)
def test_bad_documents_are_named_by_index(value: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        as_documents([value])  # type: ignore[list-item]


def test_a_single_string_is_not_a_document_list() -> None:
    with pytest.raises(InvalidInputError, match="must be a list"):
        as_documents("just one")


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("bad_image", "reason"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "undecodable"),
        (_png(64, 64)[:60], "undecodable"),
        (b"%PDF-1.4 not an image", "undecodable"),
        (_png(4000, 4000), "too_many_pixels"),
        ("data:text/plain;base64,aGVsbG8=", "invalid_source"),
        (_png(1, 400), "undecodable"),  # aspect ratio over 200:1, refused by the image processor
    ],
    ids=["corrupt", "truncated", "not-an-image", "bomb", "wrong-mime", "aspect-ratio"],
)
def test_bad_image_is_refused_with_the_document_index(
    tiny_model_dir: Path, bad_image: bytes | str, reason: str
) -> None:
    policy = MediaPolicy(max_image_pixels=4_000_000)
    reranker = LocalReranker(model=str(tiny_model_dir), device="cpu", media_policy=policy)
    documents = [Document("fine"), Document("fine too"), Document("also fine"), Document(image=bad_image)]
    with pytest.raises(ImageError) as caught:
        reranker.score("q", documents)
    assert str(caught.value).startswith("document 3: ")
    assert caught.value.reason == reason


def test_bad_query_image_is_named_as_the_query(tiny_reranker: LocalReranker) -> None:
    with pytest.raises(ImageError, match=r"^query: "):
        tiny_reranker.score(Query(image=b"garbage bytes"), ["a"])


def test_tiny_one_pixel_image_scores(tiny_reranker: LocalReranker) -> None:
    (score,) = tiny_reranker.score("q", [Document(image=_png(1, 1))])
    assert 0.0 <= score <= 1.0


def test_folder_without_config_says_what_a_checkpoint_needs(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"holds no config\.json"):
        LocalReranker(model=str(tmp_path), device="cpu")


def test_corrupt_weights_are_a_load_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_model_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(ModelLoadError, match=r"could not load the checkpoint in .*broken"):
        LocalReranker(model=str(broken), device="cpu")


def test_bad_config_is_a_load_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "badconfig"
    broken.mkdir()
    for item in tiny_model_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "config.json").write_text(json.dumps({"model_type": "no_such_architecture"}))
    with pytest.raises(ModelLoadError, match="could not load the checkpoint"):
        LocalReranker(model=str(broken), device="cpu")


def test_missing_path_is_not_mistaken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no folder .* exists"):
        LocalReranker(model=str(tmp_path / "nowhere"), device="cpu")


def test_hub_id_that_cannot_be_downloaded_says_how_to_get_the_model() -> None:
    # conftest sets HF_HUB_OFFLINE=1, as on a machine without the hub.
    with pytest.raises(ModelLoadError) as caught:
        LocalReranker(model="vec-ai/lychee-rerank-mm", device="cpu")
    message = str(caught.value)
    assert "could not load 'vec-ai/lychee-rerank-mm' from the model hub" in message
    assert "--model tiny" in message
    assert "--local-dir" in message


def test_tiny_is_a_reserved_name_written_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LYCHEE_CACHE_DIR", str(tmp_path))
    reranker = LocalReranker(model=TINY_MODEL_NAME, device="cpu")
    assert (tmp_path / "tiny" / "config.json").is_file()
    assert (tmp_path / "tiny" / "model.safetensors").is_file()
    assert reranker.model_name == "tiny"
    assert 0.0 <= reranker.score("q", ["d"])[0] <= 1.0


def test_device_and_dtype_are_chosen_for_the_user() -> None:
    assert choose_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert choose_dtype(None, torch.device("cpu")) is torch.float32
    assert choose_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert choose_attention(torch.device("cpu"), torch.float32) == "sdpa"
    assert choose_attention(torch.device("cpu"), torch.float32, "eager") == "eager"
    with pytest.raises(ModelLoadError, match="unknown dtype 'float8'"):
        choose_dtype("float8", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
def test_forcing_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(ModelLoadError, match="no CUDA GPU is visible"):
        choose_device("cuda")


def test_forced_dtype_and_attention_are_used(tiny_model_dir: Path, tiny_reranker: LocalReranker) -> None:
    reranker = LocalReranker(model=str(tiny_model_dir), device="cpu", dtype="bfloat16", attn_implementation="eager")
    assert reranker.loaded.dtype is torch.bfloat16
    assert reranker.loaded.model.dtype is torch.bfloat16
    assert reranker.loaded.attn_implementation == "eager"
    documents = ["a white linen shirt", "a red car", "适合小个子女生的显高西装套装"]
    assert reranker.score("white shirt", documents) == pytest.approx(
        tiny_reranker.score("white shirt", documents), abs=0.05
    )
