"""Golden prompts: the exact text the model sees for each modality."""

from __future__ import annotations

from pathlib import Path

import pytest

from lychee_rerank.core import Document, InvalidInputError, LocalReranker, Query, UnknownProfileError
from lychee_rerank.core.profiles import (
    INSTRUCTION_PRESETS,
    LYCHEE,
    MONOQWEN2_VL,
    PROFILES,
    get_profile,
    resolve_instruction,
)

SYSTEM = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
)
INSTRUCT = "<Instruct>: Given a web search query, retrieve relevant passages that answer the query"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
ANSWER = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    ("query", "document", "expected_user_text"),
    [
        (
            Query("red dress"),
            Document("a red summer dress"),
            "<Query>:red dress\n<Document>:a red summer dress",
        ),
        (Query("red dress"), Document(image="d.png"), f"<Query>:red dress\n<Document>:{IMAGE}"),
        (
            Query(image="q.png"),
            Document("a red summer dress"),
            f"<Query>:{IMAGE}\n<Document>:a red summer dress",
        ),
        (
            Query("like this, in blue", image="q.png"),
            Document("blue dress", image="d.png"),
            f"<Query>:{IMAGE}like this, in blue\n<Document>:{IMAGE}blue dress",
        ),
        (
            Query("适合小个子女生的显高西装套装"),
            Document("米白色西装"),
            "<Query>:适合小个子女生的显高西装套装\n<Document>:米白色西装",
        ),
    ],
    ids=["text-text", "text-image", "image-text", "both-both", "chinese"],
)
def test_lychee_prompt_is_exactly_the_documented_layout(
    tiny_reranker: LocalReranker, query: Query, document: Document, expected_user_text: str
) -> None:
    rendered = tiny_reranker.engine.render(query, document)
    assert rendered == f"{SYSTEM}<|im_start|>user\n{INSTRUCT}{expected_user_text}{ANSWER}"


def test_instruction_replaces_the_default_in_the_prompt(tiny_reranker: LocalReranker) -> None:
    rendered = tiny_reranker.engine.render(Query("q"), Document("d"), INSTRUCTION_PRESETS["ecommerce"])
    assert "<Instruct>: Given a product image and description, retrieve similar products<Query>:q" in rendered


def test_lychee_profile_data_matches_the_model_card() -> None:
    assert LYCHEE.positive_token == "yes"
    assert LYCHEE.negative_token == "no"
    assert LYCHEE.min_pixels == 4 * 28 * 28
    assert LYCHEE.max_pixels == 1280 * 28 * 28
    assert LYCHEE.default_model == "vec-ai/lychee-rerank-mm"


def test_image_order_follows_the_slots() -> None:
    query, document = Query("q", image="q.png"), Document("d", image="d.png")
    assert LYCHEE.image_order(query, document) == ["query", "document"]
    assert LYCHEE.image_order(Query("q"), document) == ["document"]


def test_monoqwen_puts_the_image_first_and_needs_query_text() -> None:
    messages = MONOQWEN2_VL.messages(Query("red dress"), Document(image="d.png"))
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {
                    "type": "text",
                    "text": "Assert the relevance of the previous image document to the following query, "
                    "answer True or False. The query is: red dress",
                },
            ],
        }
    ]
    with pytest.raises(InvalidInputError, match="needs query text"):
        MONOQWEN2_VL.messages(Query(image="q.png"), Document(image="d.png"))


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(UnknownProfileError, match=r"unknown profile 'lychee2'; choose one of \['lychee'"):
        get_profile("lychee2")
    assert get_profile("lychee") is LYCHEE
    assert {"lychee", "qwen3-vl-reranker", "monoqwen2-vl"} <= set(PROFILES)


def test_unknown_profile_fails_before_loading_a_model(tiny_model_dir: Path) -> None:
    with pytest.raises(UnknownProfileError, match="unknown profile"):
        LocalReranker(model=str(tiny_model_dir), profile="nope")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, None),
        ("", None),
        ("default", None),
        ("ecommerce", INSTRUCTION_PRESETS["ecommerce"]),
        (" Academic ", INSTRUCTION_PRESETS["academic"]),
        ("Find the matching receipt", "Find the matching receipt"),
    ],
)
def test_instruction_presets_resolve(given: str | None, expected: str | None) -> None:
    assert resolve_instruction(given) == expected
