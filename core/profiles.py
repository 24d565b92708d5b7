"""Model profiles: how a reranking model wants its prompt laid out and how its answer becomes a score.

A profile is data. The Lychee-Rerank-MM layout is the default: the system prompt and the score rule come
from the model card and the paper (arXiv 2510.14824), the order of the user message's parts from a public
script that uses the model. Should the official card's layout differ, the fix is one line here and one
golden test. This module imports nothing heavy; whether the installed transformers has a profile's
architecture is checked when a model is loaded.

Example:
    >>> get_profile("lychee").positive_token
    'yes'
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from lychee_rerank.core.errors import InvalidInputError, UnknownProfileError
from lychee_rerank.core.inputs import Document, Query

PartKind = Literal["text", "query_text", "query_image", "document_text", "document_image"]


@dataclass(frozen=True)
class Part:
    """One piece of the user message.

    ``text`` parts are literal text formatted with ``{instruction}`` and ``{query_text}``; the other
    kinds insert the query's or document's text or image when it has one and nothing otherwise.
    """

    kind: PartKind
    template: str = ""


@dataclass(frozen=True)
class Profile:
    """How to prompt one family of yes/no rerankers.

    Attributes:
        name: The key users pass as ``profile=``.
        system_prompt: The system turn, or ``None`` to leave it to the chat template.
        user_parts: The user message's content parts, in order.
        positive_token: The answer whose probability is the score ("yes").
        negative_token: The competing answer ("no").
        default_instruction: Used when the caller gives none.
        min_pixels: Lower bound on an image's pixel count after resizing.
        max_pixels: Upper bound on an image's pixel count after resizing.
        model_types: ``config.model_type`` values this profile is meant for.
        default_model: The hub id used when no model is named.
        needs_query_text: The layout embeds the query text in a template, so a query must have text.
    """

    name: str
    system_prompt: str | None
    user_parts: tuple[Part, ...]
    positive_token: str
    negative_token: str
    default_instruction: str
    min_pixels: int
    max_pixels: int
    model_types: tuple[str, ...]
    default_model: str
    needs_query_text: bool = False
    notes: str = field(default="", compare=False)

    def messages(self, query: Query, document: Document, instruction: str | None = None) -> list[dict[str, Any]]:
        """The chat messages for one (query, document) pair, images as ``{"type": "image"}`` slots.

        The images themselves are returned by :meth:`images` in the order their slots appear.
        """
        if self.needs_query_text and not query.text:
            raise InvalidInputError(f"the {self.name!r} profile needs query text; this query has none")
        if query.has_image and not any(part.kind == "query_image" for part in self.user_parts):
            # Dropping the image silently would score a different query than the one asked.
            raise InvalidInputError(f"the {self.name!r} profile has no place for a query image; give query text only")
        values = {"instruction": instruction or self.default_instruction, "query_text": query.text or ""}
        content: list[dict[str, Any]] = []
        for part in self.user_parts:
            if part.kind == "text":
                content.append({"type": "text", "text": part.template.format(**values)})
            elif part.kind == "query_text" and query.text is not None:
                content.append({"type": "text", "text": query.text})
            elif part.kind == "document_text" and document.text is not None:
                content.append({"type": "text", "text": document.text})
            elif (part.kind == "query_image" and query.has_image) or (
                part.kind == "document_image" and document.has_image
            ):
                content.append({"type": "image"})
        messages: list[dict[str, Any]] = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        messages.append({"role": "user", "content": content})
        return messages

    def image_order(self, query: Query, document: Document) -> list[Literal["query", "document"]]:
        """Which images the prompt holds, in the order of their slots in :meth:`messages`."""
        order: list[Literal["query", "document"]] = []
        for part in self.user_parts:
            if part.kind == "query_image" and query.has_image:
                order.append("query")
            elif part.kind == "document_image" and document.has_image:
                order.append("document")
        return order


_YES_NO_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)

# Instruct, query (image then text), document (image then text).
_INSTRUCT_QUERY_DOCUMENT = (
    Part("text", "<Instruct>: {instruction}"),
    Part("text", "<Query>:"),
    Part("query_image"),
    Part("query_text"),
    Part("text", "\n<Document>:"),
    Part("document_image"),
    Part("document_text"),
)

LYCHEE = Profile(
    name="lychee",
    system_prompt=_YES_NO_SYSTEM,
    user_parts=_INSTRUCT_QUERY_DOCUMENT,
    positive_token="yes",
    negative_token="no",
    default_instruction="Given a web search query, retrieve relevant passages that answer the query",
    min_pixels=4 * 28 * 28,
    max_pixels=1280 * 28 * 28,
    model_types=("qwen2_5_vl",),
    default_model="vec-ai/lychee-rerank-mm",
    notes="Lychee-Rerank-MM (GMR-7B), a Qwen2.5-VL-7B fine-tune.",
)

# Qwen3-VL-Reranker's usage code (format_mm_instruction / format_mm_content in the Qwen3-VL-Embedding
# repository, which the model card points to): the same system prompt, "<Instruct>: " + instruction, then
# "<Query>:" and "\n<Document>:" each followed by that side's image, then its text; the score is
# sigmoid((w_yes - w_no) . h_last), i.e. P("yes") over yes/no; pixels between 4 and 1800 32x32 blocks.
QWEN3_VL_RERANKER = Profile(
    name="qwen3-vl-reranker",
    system_prompt=_YES_NO_SYSTEM,
    user_parts=_INSTRUCT_QUERY_DOCUMENT,
    positive_token="yes",
    negative_token="no",
    default_instruction="Given a search query, retrieve relevant candidates that answer the query.",
    min_pixels=4 * 32 * 32,
    max_pixels=1800 * 32 * 32,
    model_types=("qwen3_vl",),
    default_model="Qwen/Qwen3-VL-Reranker-2B",
    notes="Qwen3-VL-Reranker 2B/8B: same system prompt, P(yes) over yes/no.",
)

# The MonoQwen2-VL-v0.1 model card: no system turn (the chat template's default), the document image,
# then the prompt below with the query; P("True") over True/False. The card scores image documents only;
# a text document takes the image's place here. There is no place for a query image.
MONOQWEN2_VL = Profile(
    name="monoqwen2-vl",
    system_prompt=None,
    user_parts=(
        Part("document_image"),
        Part("document_text"),
        Part(
            "text",
            "Assert the relevance of the previous image document to the following query, "
            "answer True or False. The query is: {query_text}",
        ),
    ),
    positive_token="True",
    negative_token="False",
    default_instruction="",
    min_pixels=4 * 28 * 28,
    max_pixels=1280 * 28 * 28,
    model_types=("qwen2_vl",),
    default_model="lightonai/MonoQwen2-VL-v0.1",
    needs_query_text=True,
    notes="MonoQwen2-VL-v0.1: image documents, text queries, P(True) over True/False.",
)

ARCHITECTURES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
}
"""The transformers class of each ``model_type`` a profile is meant for."""

PROFILES: dict[str, Profile] = {profile.name: profile for profile in (LYCHEE, QWEN3_VL_RERANKER, MONOQWEN2_VL)}
"""Registered profiles, by name."""

TINY_MODEL_NAME = "tiny"
"""The reserved model name of the small random test checkpoint (written on first use; its scores mean nothing)."""

DEFAULT_PROFILE = "lychee"


def get_profile(profile: str | Profile) -> Profile:
    """Looks a profile up by name; a :class:`Profile` is returned as is.

    Raises:
        UnknownProfileError: The name is not registered; the message lists those that are.
    """
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise UnknownProfileError(
            f"unknown profile {profile!r}; choose one of {sorted(PROFILES)} or pass a Profile object"
        ) from None


INSTRUCTION_PRESETS: dict[str, str] = {
    "web": LYCHEE.default_instruction,
    "ecommerce": "Given a product image and description, retrieve similar products",
    "academic": (
        "Given a scientific question, retrieve the figure or table that contains the exact quantitative result"
    ),
    "image-search": "Given a text description, retrieve the image that best matches it",
    "document": "Given a question, retrieve the document page that answers it",
    "inspection": "Given a photo of a part, retrieve the annotated defect images that show the same kind of defect",
}
"""Named instructions. A fitting instruction moves scores by several points on the product's own test sets."""


INSTRUCTION_RULE = (
    "An `instruction` is a preset name (default, " + ", ".join(INSTRUCTION_PRESETS) + ") or a sentence of your "
    "own. Text that looks like a name (only ASCII letters, digits, `-` and `_`: no spaces, no punctuation) and "
    "is not a preset is refused (422), so that a mistyped preset such as `ecomerce` is not silently used as "
    "the instruction."
)
"""The rule :func:`resolve_instruction` applies, in words (the service's API docs quote it)."""


_NAME_LIKE = re.compile(r"[a-z0-9_-]+")


def resolve_instruction(instruction: str | None) -> str | None:
    """Maps a preset name to its text; an instruction of one's own is used as it is.

    ``None``, ``""`` and ``"default"`` mean the profile's own default instruction. Preset names are matched
    without regard to case or surrounding spaces. Text that looks like a name (only ASCII letters, digits,
    ``-`` and ``_``) and is not a preset is refused: it is almost always a mistyped preset, and using it as
    the instruction would silently change every score. Anything else (a sentence, text in a script
    written without spaces) is an instruction of one's own.

    Raises:
        InvalidInputError: Name-like text that is not a preset; the message lists the presets and the
            closest one.

    Example:
        >>> resolve_instruction("ecommerce")
        'Given a product image and description, retrieve similar products'
        >>> resolve_instruction("ecomerce")
        Traceback (most recent call last):
        ...
        lychee_rerank.core.errors.InvalidInputError: instruction: 'ecomerce' is not a preset ...
    """
    if instruction is None or not instruction.strip() or instruction.strip().lower() == "default":
        return None
    name = instruction.strip().lower()
    if name in INSTRUCTION_PRESETS:
        return INSTRUCTION_PRESETS[name]
    if _NAME_LIKE.fullmatch(name):
        close = difflib.get_close_matches(name, ["default", *INSTRUCTION_PRESETS], n=1, cutoff=0.6)
        guess = f"did you mean {close[0]!r}? " if close else ""
        raise InvalidInputError(
            f"instruction: {instruction.strip()[:60]!r} is not a preset; {guess}the presets are "
            f"{', '.join(['default', *INSTRUCTION_PRESETS])}. An instruction of your own is a sentence "
            "(with spaces), e.g. 'Given a product photo, retrieve matching listings'"
        )
    return instruction
