"""The naive reference scorer: one pair per forward pass, full logits, softmax over yes/no.

Tests check the engine against it and benchmarks measure the engine's speed-up over it. It is written
from the Lychee prompt and score rule alone, independently of the engine: it builds the
messages by hand and uses the processor's own image pipeline, so agreeing with it checks the
engine's prompt, image handling, batching and two-row head. Never use it to serve: it is slow on purpose.

User text is literal here too, by the plainest rule: the rendered template is read character by
character; a control token (any added token of the tokenizer) counts only where the template wrote it,
and every other character, the user's included, goes through the tokenizer's normaliser,
pre-tokeniser and BPE, in runs between two of the template's control tokens.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import torch
from PIL import Image

SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
_USER_TEXT = re.compile("\ue000(\\d+)\ue001")  # where the template put user text number N


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
        self.control_tokens = {token.content: index for index, token in tokenizer.added_tokens_decoder.items()}

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
    ) -> tuple[list[dict[str, Any]], list[Image.Image], list[str]]:
        """The chat messages with a marker for each user text, the images, and the user texts."""
        user_texts: list[str] = []

        def user(text: str) -> str:
            user_texts.append(text)
            return f"\ue000{len(user_texts) - 1}\ue001"

        content: list[dict[str, Any]] = [
            {"type": "text", "text": "<Instruct>: " + user(instruction or DEFAULT_INSTRUCTION)},
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
                content.append({"type": "text", "text": user(side["text"])})
        system = {"role": "system", "content": [{"type": "text", "text": SYSTEM}]}
        return [system, {"role": "user", "content": content}], images, user_texts

    def _plain_ids(self, text: str) -> list[int]:
        """BPE of ``text`` with no added token recognised: the tokenizer's own pipeline, step by step."""
        backend = self.processor.tokenizer.backend_tokenizer
        normalized = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
        words = [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]
        return [token.id for word in words for token in backend.model.tokenize(word)]

    def input_ids(self, template: str, user_texts: list[str], image_tokens: list[int]) -> list[int]:
        """The ids of a rendered template, user texts literal, image slots expanded to ``image_tokens``."""
        image_token = self.processor.image_token
        longest_first = sorted(self.control_tokens, key=len, reverse=True)
        counts = iter(image_tokens)
        ids: list[int] = []
        run: list[str] = []
        position = 0
        while position < len(template):
            marker = _USER_TEXT.match(template, position)
            if marker is not None:
                run.append(user_texts[int(marker.group(1))])
                position = marker.end()
                continue
            token = next((token for token in longest_first if template.startswith(token, position)), None)
            if token is None:
                run.append(template[position])
                position += 1
                continue
            ids += self._plain_ids("".join(run))
            run = []
            ids += [self.control_tokens[token]] * (next(counts) if token == image_token else 1)
            position += len(token)
        return ids + self._plain_ids("".join(run))

    @torch.inference_mode()
    def score(self, query: dict[str, Any], document: dict[str, Any], instruction: str | None = None) -> float:
        messages, images, user_texts = self.messages(query, document, instruction)
        template = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs: dict[str, Any] = {}
        image_tokens: list[int] = []
        if images:
            features = self.processor.image_processor(images=images, return_tensors="pt")
            merge = int(self.processor.image_processor.merge_size) ** 2
            image_tokens = [int(grid.prod()) // merge for grid in features["image_grid_thw"]]
            inputs = {"pixel_values": features["pixel_values"], "image_grid_thw": features["image_grid_thw"]}
        input_ids = torch.tensor([self.input_ids(template, user_texts, image_tokens)])
        inputs["input_ids"] = input_ids
        inputs["attention_mask"] = torch.ones_like(input_ids)
        inputs["mm_token_type_ids"] = (input_ids == self.processor.image_token_id).long()
        inputs = {name: value.to(self.model.device) for name, value in inputs.items()}
        logits = self.model(**inputs).logits[0, -1]
        pair = torch.stack([logits[self.yes], logits[self.no]]).float()
        return float(torch.softmax(pair, dim=0)[0])
