"""The browser UI (Gradio), mounted on the service at ``/ui``.

Two tabs: one (query, document) pair and its score, and a batch of documents reranked into a table.
Images come by upload or by URL. A URL is handed to the reranker as the image itself, so the
service's media policy (timeouts, size caps, refused addresses) decides whether it is fetched; the
UI never fetches anything. Handlers use the reranker's async methods so the event loop keeps serving.

Example:
    >>> app = fastapi.FastAPI()  # doctest: +SKIP
    >>> mount_ui(app, LocalReranker(model="tiny"))  # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Any

from PIL import Image

from lychee_rerank.core.errors import InvalidInputError, LycheeError
from lychee_rerank.core.extras import require
from lychee_rerank.core.inputs import Document, Query
from lychee_rerank.core.interface import Reranker, RerankResult
from lychee_rerank.core.profiles import INSTRUCTION_PRESETS, resolve_instruction
from lychee_rerank.core.sources import is_reference

if TYPE_CHECKING:
    import fastapi
    import gradio

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "default"
PRESET_CHOICES = [DEFAULT_PRESET, *INSTRUCTION_PRESETS]
"""The instruction dropdown: the profile's default, then every named preset."""

RESULT_HEADERS = ["rank", "score", "index", "text", "image"]


def instruction_for(preset: str | None, custom: str | None) -> str | None:
    """The instruction to score with: the custom text when given, else the preset's text.

    ``None`` means the profile's default. Resolving here, not in the reranker, keeps a remote or
    scheduler-backed reranker from having to know preset names.

    Example:
        >>> instruction_for("ecommerce", "")
        'Given a product image and description, retrieve similar products'
    """
    if custom and custom.strip():
        return resolve_instruction(custom.strip())
    return resolve_instruction(preset)


def _image(upload: Image.Image | None, url: str | None, where: str) -> Image.Image | str | None:
    reference = (url or "").strip()
    if upload is not None and reference:
        # Picking one silently would score an image the user did not mean.
        raise InvalidInputError(f"{where}: give the image by upload or by URL, not both")
    return upload if upload is not None else reference or None


def _text(text: str | None) -> str | None:
    return text if text and text.strip() else None


def parse_document_lines(lines: str | None) -> list[Document]:
    """One document per non-blank line; ``text | image-URL`` (or ``| image-URL``) adds an image.

    Only a part after the last ``|`` that starts with ``http://``, ``https://`` or ``data:`` is an
    image; anything else is text, ``|`` included, because guessing would silently change a document.

    Example:
        >>> parse_document_lines("a red dress\\nshoes | https://example.com/shoes.jpg")[1]
        Document(text='shoes', image='https://example.com/shoes.jpg')
    """
    documents = []
    for line in (lines or "").splitlines():
        if not line.strip():
            continue
        text, bar, reference = line.rpartition("|")
        if bar and is_reference(reference):
            documents.append(Document(text=_text(text.strip()), image=reference.strip()))
        else:
            documents.append(Document(text=line.strip()))
    return documents


def gallery_documents(gallery: list[tuple[Image.Image, str | None]] | None, captions: str | None) -> list[Document]:
    """Each uploaded image as a document; line *k* of ``captions`` is image *k*'s text.

    Example:
        >>> gallery_documents([(Image.new("RGB", (4, 4)), None)], "a black square")[0].text
        'a black square'
    """
    caption_lines = (captions or "").splitlines()
    documents = []
    for number, (image, gallery_caption) in enumerate(gallery or []):
        caption = caption_lines[number] if number < len(caption_lines) else gallery_caption
        documents.append(Document(text=_text(caption.strip() if caption else None), image=image))
    return documents


def _describe_image(result: RerankResult, first_upload: int) -> str:
    image = result.document.image
    if isinstance(image, Image.Image):
        width, height = image.size
        return f"upload {result.index - first_upload + 1} ({width}×{height})"
    if isinstance(image, str) and image.startswith("data:"):
        return f"{image[:24]}… ({len(image)} characters)"  # the whole URI would flood the table
    return "" if image is None else str(image)


def result_rows(results: list[RerankResult], first_upload: int) -> list[list[Any]]:
    """The results table: rank (from 1), score, the document's input index, its text and image.

    Documents from ``first_upload`` on are the uploaded images, labelled by their upload number.
    """
    return [
        [rank, round(result.score, 6), result.index, result.document.text or "", _describe_image(result, first_upload)]
        for rank, result in enumerate(results, start=1)
    ]


UNTRAINED_WARNING = (
    "Warning: this is the untrained test model (tiny). Its weights are random: the scores below mean "
    "nothing. Start the service with a real model (--model vec-ai/lychee-rerank-mm) to rank."
)
_BANNER_STYLE = "background:#fff3cd;color:#5c4400;border:2px solid #d39e00;border-radius:6px;padding:0.6em 1em"


def build_ui(reranker: Reranker, *, serving: str | None = None, untrained: bool = False) -> gradio.Blocks:
    """The Gradio app: a single-pair tab and a batch tab, both scoring with ``reranker``.

    Args:
        reranker: Any :class:`Reranker`; the service passes its scheduler-backed one.
        serving: What serves, shown under the title (``model X on cuda (bfloat16)``).
        untrained: Show a warning banner: the model is the random test model, its scores mean nothing.

    Raises:
        ImportError: gradio is missing; the message names the ``ui`` extra.
    """
    gr: Any = require("gradio", "ui")

    def show_error(error: Exception) -> str:
        # The UI is a top-level boundary: a failure clears the stale result and says what went wrong
        # (an overloaded queue, a timeout) instead of leaving an old score on screen. Input errors are
        # the user's to fix; anything else is also logged with its traceback.
        if not isinstance(error, LycheeError):
            logger.error("UI request failed", exc_info=error)
        gr.Warning(str(error))
        return f"Error: {error}"

    async def score_pair(
        query_text: str | None,
        query_upload: Image.Image | None,
        query_url: str | None,
        document_text: str | None,
        document_upload: Image.Image | None,
        document_url: str | None,
        preset: str | None,
        custom_instruction: str | None,
    ) -> tuple[str, str]:
        try:
            query = Query(text=_text(query_text), image=_image(query_upload, query_url, "query"))
            document = Document(text=_text(document_text), image=_image(document_upload, document_url, "document"))
            scores = await reranker.ascore(query, [document], instruction=instruction_for(preset, custom_instruction))
        except Exception as error:
            return "", show_error(error)
        return f"{scores[0]:.6f}", ""

    async def rerank_batch(
        query_text: str | None,
        query_upload: Image.Image | None,
        query_url: str | None,
        document_lines: str | None,
        gallery: list[tuple[Image.Image, str | None]] | None,
        captions: str | None,
        top_n: float | None,
        preset: str | None,
        custom_instruction: str | None,
    ) -> tuple[list[list[Any]], str]:
        try:
            query = Query(text=_text(query_text), image=_image(query_upload, query_url, "query"))
            line_documents = parse_document_lines(document_lines)
            documents = line_documents + gallery_documents(gallery, captions)
            if not documents:
                raise InvalidInputError("no documents: enter one per line or upload images")
            results = await reranker.arerank(
                query,
                documents,
                top_n=int(top_n) if top_n else None,  # a cleared number box arrives as 0 or None: all
                instruction=instruction_for(preset, custom_instruction),
            )
        except Exception as error:
            return [], show_error(error)
        return result_rows(results, len(line_documents)), f"{len(results)} of {len(documents)} documents, best first"

    def preset_hint(preset: str | None) -> Any:
        shown = resolve_instruction(preset) or "the model profile's default instruction"
        return gr.Textbox(placeholder=f"Leave empty to use: {shown}")

    def instruction_inputs(prefix: str) -> tuple[Any, Any]:
        with gr.Row():
            preset = gr.Dropdown(
                PRESET_CHOICES, value=DEFAULT_PRESET, label="Instruction preset", elem_id=f"{prefix}-preset"
            )
            custom = gr.Textbox(
                label="Custom instruction (overrides the preset)",
                placeholder="Leave empty to use: the model profile's default instruction",
                elem_id=f"{prefix}-instruction",
                scale=3,
            )
        preset.change(preset_hint, inputs=preset, outputs=custom, api_visibility="private")
        return preset, custom

    def content_inputs(prefix: str, label: str) -> tuple[Any, Any, Any]:
        text = gr.Textbox(label=f"{label} text", lines=2, elem_id=f"{prefix}-text")
        with gr.Row():
            upload = gr.Image(type="pil", label=f"{label} image (upload)", height=160, elem_id=f"{prefix}-image")
            url = gr.Textbox(
                label=f"{label} image URL",
                placeholder="https://… or data:image/…",
                elem_id=f"{prefix}-image-url",
            )
        return text, upload, url

    # Analytics off: the UI must render and work on machines without internet access.
    blocks: gradio.Blocks = gr.Blocks(title="Lychee Rerank", analytics_enabled=False)
    with blocks:
        gr.Markdown("# Lychee Rerank\nScore how well documents (text, images, or both) satisfy a query.")
        if serving:
            gr.Markdown(f"Serving: {serving}", elem_id="serving")
        if untrained:
            gr.HTML(
                f'<div role="alert" style="{_BANNER_STYLE}"><b>{UNTRAINED_WARNING}</b></div>',
                elem_id="untrained-warning",
            )
        with gr.Tab("Single pair", elem_id="tab-pair"):
            with gr.Row():
                with gr.Column():
                    pair_query = content_inputs("pair-query", "Query")
                with gr.Column():
                    pair_document = content_inputs("pair-document", "Document")
            pair_instruction = instruction_inputs("pair")
            pair_button = gr.Button("Score", variant="primary", elem_id="pair-score-button")
            with gr.Row():
                pair_score = gr.Textbox(label="Score (0 to 1)", interactive=False, elem_id="pair-score")
                pair_message = gr.Textbox(label="Message", interactive=False, elem_id="pair-message")
        with gr.Tab("Batch", elem_id="tab-batch"):
            batch_query = content_inputs("batch-query", "Query")
            batch_lines = gr.Textbox(
                label="Documents, one per line",
                info="Add an image to a line with `text | https://image-url` (or `| https://image-url` alone).",
                lines=6,
                elem_id="batch-documents",
            )
            with gr.Row():
                batch_gallery = gr.Gallery(
                    type="pil",
                    label="Image documents (upload)",
                    interactive=True,
                    columns=4,
                    height=240,
                    object_fit="contain",
                    elem_id="batch-gallery",
                )
                batch_captions = gr.Textbox(
                    label="Captions for uploaded images, one per line, in upload order",
                    lines=4,
                    elem_id="batch-captions",
                )
            batch_instruction = instruction_inputs("batch")
            with gr.Row():
                batch_top_n = gr.Number(label="top_n (0: all)", precision=0, minimum=0, value=0, elem_id="batch-top-n")
                batch_button = gr.Button("Rerank", variant="primary", elem_id="batch-rerank-button", scale=3)
            batch_message = gr.Textbox(label="Message", interactive=False, elem_id="batch-message")
            batch_table = gr.Dataframe(
                headers=RESULT_HEADERS,
                datatype=["number", "number", "number", "str", "str"],
                interactive=False,
                wrap=True,
                column_widths=["8%", "12%", "8%", "42%", "30%"],
                label="Results, best first",
                elem_id="batch-results",
            )

        # No per-event concurrency cap: the reranker (the service's scheduler) batches concurrent
        # requests and enforces its own queue limit; Gradio's default of 1 would serialise users.
        pair_button.click(
            score_pair,
            inputs=[*pair_query, *pair_document, *pair_instruction],
            outputs=[pair_score, pair_message],
            concurrency_limit=None,
            api_visibility="private",
        )
        batch_button.click(
            rerank_batch,
            inputs=[*batch_query, batch_lines, batch_gallery, batch_captions, batch_top_n, *batch_instruction],
            outputs=[batch_table, batch_message],
            concurrency_limit=None,
            api_visibility="private",
        )
    return blocks


def mount_ui(
    app: fastapi.FastAPI,
    reranker: Reranker,
    *,
    path: str = "/ui",
    api_key: str | None = None,
    serving: str | None = None,
    untrained: bool = False,
) -> None:
    """Serves :func:`build_ui` on ``app`` at ``path``.

    Args:
        app: The service's FastAPI app.
        reranker: What the UI scores with; the service passes its scheduler-backed reranker.
        path: Where the UI is served.
        api_key: The service's API key, if it has one. A browser cannot send a Bearer header, so the UI
            then shows a login form whose password is the API key (any user name); without this the UI
            would be a way around the key. The service throttles wrong keys per client (see
            :mod:`lychee_rerank.core.server.access`).
        serving: What serves, shown under the title.
        untrained: Show the warning banner of the random test model.

    Raises:
        ImportError: gradio is missing; the message names the ``ui`` extra.
    """
    gr: Any = require("gradio", "ui")

    def key_matches(username: str, password: str) -> bool:
        # Constant-time, as the service compares Bearer keys.
        return api_key is not None and hmac.compare_digest(password.encode(), api_key.encode())

    # No server-side rendering (it would need a Node server) and no Gradio MCP endpoint: the service's
    # REST API is the programmatic interface, so Gradio's own "Use via API" footer link is left out.
    gr.mount_gradio_app(
        app,
        build_ui(reranker, serving=serving, untrained=untrained),
        path=path,
        ssr_mode=False,
        mcp_server=False,
        footer_links=["gradio", "settings"],
        auth=key_matches if api_key else None,
        auth_message="This service needs its API key: enter it as the password (any user name)." if api_key else None,
    )
