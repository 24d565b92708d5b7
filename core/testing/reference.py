"""The naive reference scorer: one pair per forward pass, full logits, softmax over yes/no.

Tests check the engine against it and benchmarks measure the engine's speed-up over it. It is written
from the Lychee prompt and score rule alone, independently of the engine: it builds the
messages by hand and uses the processor's own text+image pipeline, so agreeing with it checks the
engine's prompt, image handling, batching and two-row head. Never use it to serve: it is slow on purpose.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image

SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


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

    Example:
        >>> scorer = ReferenceScorer.from_pretrained("/tmp/tiny")  # doctest: +SKIP
        >>> scorer.score({"text": "red dress"}, {"text": "a red dress"})  # doctest: +SKIP
        0.61
    """

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor
        tokenizer = processor.tokenizer
        self.yes = tokenizer.convert_tokens_to_ids("yes")
        self.no = tokenizer.convert_tokens_to_ids("no")

    @classmethod
    def from_pretrained(
        cls,
        model_dir: Path | str,
        *,
        min_pixels: int = 4 * 28 * 28,
        max_pixels: int = 1280 * 28 * 28,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ) -> ReferenceScorer:
        """Loads the checkpoint in ``model_dir`` the way the model card does."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(
            str(model_dir),
            size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
            padding_side="left",
        )
        model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
        return cls(model, processor)

    def messages(
        self, query: dict[str, Any], document: dict[str, Any], instruction: str | None
    ) -> tuple[list[dict[str, Any]], list[Image.Image]]:
        content: list[dict[str, Any]] = [
            {"type": "text", "text": "<Instruct>: " + (instruction or DEFAULT_INSTRUCTION)},
            {"type": "text", "text": "<Query>:"},
        ]
        images = []
        for side, marker in ((query, None), (document, "\n<Document>:")):
            if marker is not None:
                content.append({"type": "text", "text": marker})
            if side.get("image") is not None:
                content.append({"type": "image"})
                images.append(_open(side["image"]))
            if side.get("text") is not None:
                content.append({"type": "text", "text": side["text"]})
        system = {"role": "system", "content": [{"type": "text", "text": SYSTEM}]}
        return [system, {"role": "user", "content": content}], images

    @torch.inference_mode()
    def score(self, query: dict[str, Any], document: dict[str, Any], instruction: str | None = None) -> float:
        messages, images = self.messages(query, document, instruction)
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt").to(self.model.device)
        logits = self.model(**inputs).logits[0, -1]
        pair = torch.stack([logits[self.yes], logits[self.no]]).float()
        return float(torch.softmax(pair, dim=0)[0])
