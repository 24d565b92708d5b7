"""Finding, loading and placing a reranking checkpoint.

``model`` is a hub id (``vec-ai/lychee-rerank-mm``), a local folder holding a Hugging Face checkpoint,
or the reserved name ``tiny`` (a random test checkpoint written on first use). Nothing ever falls back
to ``tiny`` silently: a model that cannot be loaded is an error that says what to do.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lychee_rerank.core.errors import ModelLoadError
from lychee_rerank.core.local.packing import pack_linear_weights, packing_applies
from lychee_rerank.core.profiles import ARCHITECTURES, TINY_MODEL_NAME, Profile

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class LoadedModel:
    """A model, its processor, and the facts the engine needs about them."""

    name: str
    path: str
    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype
    attn_implementation: str
    positive_token_id: int
    negative_token_id: int

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer."""
        return self.processor.tokenizer


def choose_device(device: str | torch.device | None) -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``; an explicit choice is checked and kept."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {str(device)!r} was requested but no CUDA GPU is visible; pass device='cpu' or omit it"
        )
    return chosen


def choose_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on CUDA (fp16 where bf16 is unsupported), float32 on CPU; an explicit choice is kept."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        try:
            return _DTYPES[dtype.lower()]
        except KeyError:
            raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def choose_attention(device: torch.device, dtype: torch.dtype, requested: str | None = None) -> str:
    """flash_attention_2 on CUDA in half precision when flash-attn is installed, else sdpa."""
    if requested is not None:
        return requested
    if (
        device.type == "cuda"
        and dtype in (torch.bfloat16, torch.float16)
        and importlib.util.find_spec("flash_attn") is not None
    ):
        return "flash_attention_2"
    return "sdpa"


def resolve_model_path(model: str) -> str:
    """Turns ``tiny`` into its cache folder; checks that a folder looks like a checkpoint.

    A string that is not an existing folder is returned unchanged and treated as a hub id.
    """
    if model == TINY_MODEL_NAME:
        from lychee_rerank.core.testing.checkpoint import ensure_tiny_checkpoint  # only for the test model

        return str(ensure_tiny_checkpoint())
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"the folder {str(path)!r} holds no config.json, so it is not a Hugging Face checkpoint; "
                "point --model at the folder that holds config.json, the *.safetensors weights, the "
                "tokenizer and the processor files"
            )
        return str(path)
    if model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1):
        raise ModelLoadError(
            f"no folder {model!r} exists, and it is not a hub id of the form 'owner/name'; "
            "check the path, or pass a hub id such as 'vec-ai/lychee-rerank-mm'"
        )
    return model


def _hub_hint(model: str) -> str:
    return (
        f"If this machine cannot reach the model hub, download the model where it can "
        f"(`hf download {model} --local-dir ./lychee-rerank-mm`), copy the folder here and pass "
        f"--model ./lychee-rerank-mm. For an untrained model that only exercises the code, pass --model tiny."
    )


_CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py"]


def fetch_from_hub(repo_id: str) -> str:
    """The local folder of hub model ``repo_id``: from the cache, else downloaded.

    The hub is asked once, with a short timeout, before a download starts: on a machine that cannot
    reach it, this fails in seconds with a message that says what to do, instead of minutes of retries.
    """
    from huggingface_hub import model_info, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return str(snapshot_download(repo_id, local_files_only=True, allow_patterns=_CHECKPOINT_FILES))
    except Exception:  # not cached (or the cache is incomplete): ask the hub
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(
            f"could not load {repo_id!r} from the model hub: it is not in the local cache and HF_HUB_OFFLINE "
            f"is set. {_hub_hint(repo_id)}"
        )
    try:
        model_info(repo_id, timeout=10)
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"could not load {repo_id!r} from the model hub: there is no such model (or it is private: "
            "log in with `hf auth login`). Check the id, e.g. 'vec-ai/lychee-rerank-mm'."
        ) from None
    except Exception as error:
        raise ModelLoadError(f"could not load {repo_id!r} from the model hub: {error}. {_hub_hint(repo_id)}") from error
    logger.warning("downloading %s from the model hub (about 17 GB for Lychee-Rerank-MM)", repo_id)
    try:
        return str(snapshot_download(repo_id, allow_patterns=_CHECKPOINT_FILES))
    except Exception as error:
        raise ModelLoadError(f"could not download {repo_id!r}: {error}. {_hub_hint(repo_id)}") from error


def _token_id(tokenizer: Any, token: str, path: str) -> int:
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ModelLoadError(
            f"the tokenizer in {path!r} splits the answer token {token!r} into {len(ids)} tokens {ids}; "
            "this checkpoint does not fit the chosen profile (pass the profile made for this model)"
        )
    return int(ids[0])


def load_model(
    model: str,
    profile: Profile,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    pack_weights: bool = True,
) -> LoadedModel:
    """Loads ``model`` with ``from_pretrained`` and places it on the chosen device and dtype.

    In bf16 on a CPU with bf16 kernels, the linear layers' weights are reordered once for oneDNN
    (:mod:`~lychee_rerank.core.local.packing`: same outputs, no reorder on every call);
    ``pack_weights=False`` keeps them as loaded (benchmarks compare the two).

    Raises:
        ModelLoadError: The folder is not a checkpoint, the hub id cannot be downloaded, or the
            checkpoint does not fit the profile. The message says what to do.
    """
    import transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor

    missing = [ARCHITECTURES[kind] for kind in profile.model_types if not hasattr(transformers, ARCHITECTURES[kind])]
    if missing:
        raise ModelLoadError(
            f"the {profile.name!r} profile needs transformers' {', '.join(missing)}, which transformers "
            f"{transformers.__version__} lacks; upgrade it: pip install -U transformers"
        )
    chosen_device = choose_device(device)
    chosen_dtype = choose_dtype(dtype, chosen_device)
    attention = choose_attention(chosen_device, chosen_dtype, attn_implementation)
    path = resolve_model_path(model)
    if not Path(path).is_dir():
        path = fetch_from_hub(path)
    try:
        processor = AutoProcessor.from_pretrained(
            path,
            size={
                "shortest_edge": min_pixels or profile.min_pixels,
                "longest_edge": max_pixels or profile.max_pixels,
            },
            padding_side="left",
        )
        network = AutoModelForImageTextToText.from_pretrained(path, dtype=chosen_dtype, attn_implementation=attention)
    except ModelLoadError:
        raise
    except Exception as error:  # any failure here (safetensors, tokenizers, config) means "cannot load"
        raise ModelLoadError(
            f"could not load the checkpoint in {path!r}: {error}. The folder needs config.json, "
            "*.safetensors weights, the tokenizer files and the processor files of a transformers "
            "vision-language model."
        ) from error

    model_type = getattr(network.config, "model_type", "?")
    if model_type not in profile.model_types:
        logger.warning(
            "the %r profile is meant for %s models, but %s is a %r model; scores may be meaningless",
            profile.name,
            "/".join(profile.model_types),
            path,
            model_type,
        )
    network.to(chosen_device)
    network.eval()
    if pack_weights and packing_applies(chosen_device, chosen_dtype):
        # The output head stays as loaded: the engine reads two of its rows, and never runs it whole.
        packed = pack_linear_weights(network.model)
        logger.debug("reordered %d linear layers' bf16 weights for oneDNN", packed)
    return LoadedModel(
        name=model,
        path=path,
        model=network,
        processor=processor,
        device=chosen_device,
        dtype=chosen_dtype,
        attn_implementation=attention,
        positive_token_id=_token_id(processor.tokenizer, profile.positive_token, path),
        negative_token_id=_token_id(processor.tokenizer, profile.negative_token, path),
    )
