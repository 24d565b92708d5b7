"""The naive reference scorer: one pair per forward pass, full logits, softmax over the two answer tokens.

Tests check the engine against it and benchmarks measure the engine's speed-up over it. It is written
from each model card's usage code alone, independently of the engine and of ``core/profiles.py``: each
layout below builds the chat messages by hand the way the card does, and scoring uses the processor's own
text+image pipeline and the full output head, so agreeing with it checks the engine's prompt, image
handling, batching and two-row head. Never use it to serve: it is slow on purpose.

- ``lychee``: Lychee-Rerank-MM (system prompt and score from the model card and paper; the part order
  from the public script that uses the model): ``<Instruct>: ...``, ``<Query>:``, query image, query
  text, ``\\n<Document>:``, document image, document text; P("yes") over yes/no.
- ``qwen3-vl-reranker``: Qwen3-VL-Reranker's ``format_mm_instruction``/``format_mm_content`` (the same
  system prompt; each side's prefix, then its image, then its text; the default instruction "Given a
  search query, retrieve relevant candidates that answer the query."); the score is
  sigmoid((w_yes - w_no) . h), which is P("yes") over yes/no.
- ``monoqwen2-vl``: the MonoQwen2-VL-v0.1 card: no system turn, the document image, then "Assert the
  relevance of the previous image document to the following query, answer True or False. The query is:
  {query}"; P("True") over True/False. (A text document stands where the image would be: the card shows
  image documents only.)
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_VL_DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
MONOQWEN_PROMPT = (
    "Assert the relevance of the previous image document to the following query, answer True or False. "
    "The query is: {query}"
)

Side = dict[str, Any]
Parts = list[tuple[str, Any]]  # ("text", str) or ("image", image source), in prompt order


def _instruct_query_document(query: Side, document: Side, instruction: str) -> Parts:
    parts: Parts = [("text", "<Instruct>: " + instruction)]
    for side, prefix in ((query, "<Query>:"), (document, "\n<Document>:")):
        parts.append(("text", prefix))
        if side.get("image") is not None:
            parts.append(("image", side["image"]))
        if side.get("text") is not None:
            parts.append(("text", side["text"]))
    return parts


def _monoqwen(query: Side, document: Side, instruction: str) -> Parts:
    parts: Parts = []
    if document.get("image") is not None:
        parts.append(("image", document["image"]))
    if document.get("text") is not None:
        parts.append(("text", document["text"]))
    parts.append(("text", MONOQWEN_PROMPT.format(query=query["text"])))
    return parts


@dataclass(frozen=True)
class Layout:
    """A model card's prompt and answer, as the card's usage code writes them."""

    system: str | None
    parts: Callable[[Side, Side, str], Parts]
    positive: str
    negative: str
    default_instruction: str
    min_pixels: int
    max_pixels: int


LAYOUTS: dict[str, Layout] = {
    "lychee": Layout(SYSTEM, _instruct_query_document, "yes", "no", DEFAULT_INSTRUCTION, 4 * 28 * 28, 1280 * 28 * 28),
    "qwen3-vl-reranker": Layout(
        SYSTEM, _instruct_query_document, "yes", "no", QWEN3_VL_DEFAULT_INSTRUCTION, 4 * 32 * 32, 1800 * 32 * 32
    ),
    "monoqwen2-vl": Layout(None, _monoqwen, "True", "False", "", 4 * 28 * 28, 1280 * 28 * 28),
}
"""The reference layouts, by profile name."""


def _open(image: Image.Image | bytes | str | Path) -> Image.Image:
    """Opens a PIL image, bytes or a path; the engine's media layer does much more, on purpose."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, bytes):
        return Image.open(io.BytesIO(image)).convert("RGB")
    return Image.open(image).convert("RGB")


class ReferenceScorer:
    """Scores one (query, document) pair at a time with a full forward pass.

    Args:
        model: A loaded ``...ForConditionalGeneration`` model.
        processor: Its processor.
        layout: A :data:`LAYOUTS` name (the profile's) or a :class:`Layout`.

    Example:
        >>> scorer = ReferenceScorer.from_pretrained("/tmp/tiny")  # doctest: +SKIP
        >>> scorer.score({"text": "red dress"}, {"text": "a red dress"})  # doctest: +SKIP
        0.61
    """

    def __init__(self, model: Any, processor: Any, layout: str | Layout = "lychee") -> None:
        self.model = model
        self.processor = processor
        self.layout = LAYOUTS[layout] if isinstance(layout, str) else layout
        tokenizer = processor.tokenizer
        self.positive = tokenizer.convert_tokens_to_ids(self.layout.positive)
        self.negative = tokenizer.convert_tokens_to_ids(self.layout.negative)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: Path | str,
        *,
        layout: str | Layout = "lychee",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ) -> ReferenceScorer:
        """Loads the checkpoint in ``model_dir`` the way the model card does (pixel bounds: the layout's)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        chosen = LAYOUTS[layout] if isinstance(layout, str) else layout
        processor = AutoProcessor.from_pretrained(
            str(model_dir),
            size={"shortest_edge": min_pixels or chosen.min_pixels, "longest_edge": max_pixels or chosen.max_pixels},
            padding_side="left",
        )
        model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
        return cls(model, processor, chosen)

    def messages(
        self, query: dict[str, Any], document: dict[str, Any], instruction: str | None
    ) -> tuple[list[dict[str, Any]], list[Image.Image]]:
        """The chat messages for one pair (images as ``{"type": "image"}`` slots) and the images, in order."""
        content: list[dict[str, Any]] = []
        images = []
        for kind, value in self.layout.parts(query, document, instruction or self.layout.default_instruction):
            if kind == "image":
                content.append({"type": "image"})
                images.append(_open(value))
            else:
                content.append({"type": "text", "text": value})
        messages = [{"role": "user", "content": content}]
        if self.layout.system is not None:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.layout.system}]})
        return messages, images

    @torch.inference_mode()
    def score(self, query: dict[str, Any], document: dict[str, Any], instruction: str | None = None) -> float:
        """P(positive answer) for one pair, from the full output head at the last position."""
        messages, images = self.messages(query, document, instruction)
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt").to(self.model.device)
        logits = self.model(**inputs).logits[0, -1]
        pair = torch.stack([logits[self.positive], logits[self.negative]]).float()
        return float(torch.softmax(pair, dim=0)[0])
