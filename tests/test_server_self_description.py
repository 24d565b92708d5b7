"""The API describes itself (OpenAPI, offline docs, health) and speaks to service users in their words."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lychee_rerank.core.errors import InvalidInputError
from lychee_rerank.core.local import LocalReranker
from lychee_rerank.core.profiles import resolve_instruction
from lychee_rerank.core.server.app import create_app
from lychee_rerank.core.server.background import BackgroundServer
from lychee_rerank.core.server.cli import register
from lychee_rerank.core.server.settings import ServerSettings

KEY = "k3y"


@pytest.fixture(scope="module")
def service(tiny_reranker: LocalReranker) -> Iterator[str]:
    with BackgroundServer(create_app(tiny_reranker, ServerSettings(ui=False, api_key=KEY))) as url:
        yield url


def _schema(url: str) -> dict[str, Any]:
    schema: dict[str, Any] = httpx.get(f"{url}/openapi.json").json()
    return schema


def test_the_schema_declares_a_bearer_scheme_on_the_routes_that_need_the_key(service: str) -> None:
    schema = _schema(service)
    assert schema["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "the service's API key (`--api-key` / `LYCHEE_API_KEY`)",
    }
    assert schema["paths"]["/v1/rerank"]["post"]["security"] == [{"apiKey": []}]
    assert "security" not in schema["paths"]["/health"]["get"]
    assert "`/health`, `/metrics`, `/docs` and `/openapi.json`" in schema["info"]["description"]


def test_the_schema_declares_both_rerank_shapes_and_minimum_lengths(service: str) -> None:
    schema = _schema(service)
    body = schema["paths"]["/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"] == [
        {"$ref": "#/components/schemas/RerankRequest"},
        {"$ref": "#/components/schemas/TEIRerankRequest"},
    ]
    models = schema["components"]["schemas"]
    assert models["RerankRequest"]["properties"]["documents"]["minItems"] == 1
    assert models["TEIRerankRequest"]["properties"]["texts"]["minItems"] == 1
    assert models["TEIRerankRequest"]["properties"]["query"]["minLength"] == 1
    query_text = models["RerankRequest"]["properties"]["query"]["anyOf"][0]
    assert query_text["minLength"] == 1


def test_docs_reference_no_external_host_and_their_assets_load_from_the_service(service: str) -> None:
    page = httpx.get(f"{service}/docs")
    assert page.status_code == 200
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page.text, re.IGNORECASE)
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets)
    assert any(asset.endswith("swagger-ui.css") for asset in assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        assert httpx.get(f"{service}{asset}").status_code == 200, asset


def test_a_mistyped_preset_is_422_naming_the_presets(service: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"query": "shirt", "documents": ["a shirt"]}
    typo = httpx.post(f"{service}/v1/rerank", json={**body, "instruction": "ecomerce"}, headers=headers)
    assert typo.status_code == 422
    message = typo.json()["error"]["message"]
    assert "did you mean 'ecommerce'" in message
    assert "academic" in message
    for fine in ("ecommerce", "Given a shirt, find shirts", "给定一个查询，检索相关段落"):
        answer = httpx.post(f"{service}/v1/rerank", json={**body, "instruction": fine}, headers=headers)
        assert answer.status_code == 200, (fine, answer.text)


def test_the_instruction_rule() -> None:
    assert resolve_instruction(" Ecommerce ") == resolve_instruction("ecommerce")
    assert resolve_instruction("default") is None
    assert resolve_instruction("Rank by relevance.") == "Rank by relevance."
    for name_like in ("ecomerce", "websearch", "image_search", "x"):
        with pytest.raises(InvalidInputError, match="is not a preset"):
            resolve_instruction(name_like)


def test_health_says_which_model_device_and_dtype_serve(service: str) -> None:
    health = httpx.get(f"{service}/health").json()
    assert health["device"] == "cpu"
    assert health["dtype"] == "float32"
    assert health["untrained"] is True  # the tiny checkpoint holds random weights
    # On a CPU the vision tower stacks every window of every image into one SDPA call per layer.
    assert health["vision_attention"] == "sdpa-packed"


def test_the_ui_shows_what_serves_and_warns_about_the_untrained_model(tiny_reranker: LocalReranker) -> None:
    pytest.importorskip("gradio")
    from lychee_rerank.core.server.ui import UNTRAINED_WARNING, build_ui

    def texts(blocks: Any) -> list[str]:
        return [str(getattr(block, "value", "")) for block in blocks.blocks.values()]

    warned = texts(build_ui(tiny_reranker, serving="model tiny on cpu (float32)", untrained=True))
    assert any(UNTRAINED_WARNING in text for text in warned)
    assert any("model tiny on cpu (float32)" in text for text in warned)
    assert not any(UNTRAINED_WARNING in text for text in texts(build_ui(tiny_reranker, untrained=False)))


def test_the_service_scores_with_the_rerankers_own_engine(tiny_model_dir: Path) -> None:
    reranker = LocalReranker(model=str(tiny_model_dir), device="cpu", max_padding=0.25)
    app = create_app(reranker, ServerSettings(ui=False))
    assert app.state.engine is reranker.engine
    assert app.state.engine.max_padding == 0.25
    with BackgroundServer(app) as url:
        answer = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["a", "b", "c"]}, timeout=60)
    assert answer.status_code == 200
    assert reranker.engine.stats.pairs == 3  # the reranker's engine did the work


def test_media_refusals_name_the_service_settings(tiny_reranker: LocalReranker, image_files: list[Path]) -> None:
    with BackgroundServer(create_app(tiny_reranker, ServerSettings(ui=False, max_image_bytes=100))) as url:
        local = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": [{"image": str(image_files[0])}]})
        private = httpx.post(
            f"{url}/v1/rerank", json={"query": "q", "documents": [{"image": "http://127.0.0.1:9/a.png"}]}
        )
        big = base64.b64encode(image_files[1].read_bytes()).decode()
        large = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": [{"image": big}]})
    messages = {
        "local": local.json()["error"]["message"],
        "private": private.json()["error"]["message"],
        "large": large.json()["error"]["message"],
    }
    assert "--local-roots / LYCHEE_LOCAL_ROOTS" in messages["local"]
    assert "--allow-private-urls / LYCHEE_ALLOW_PRIVATE_URLS" in messages["private"]
    assert "--max-image-bytes / LYCHEE_MAX_IMAGE_BYTES" in messages["large"]
    assert not any("MediaPolicy" in message for message in messages.values())


def test_serve_help_is_written_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="lychee-rerank")
    register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, variable in (
        ("--header-timeout-s", "LYCHEE_HEADER_TIMEOUT_S"),
        ("--max-connections", "LYCHEE_MAX_CONNECTIONS"),
        ("--protect-docs", "LYCHEE_PROTECT_DOCS"),
        ("--allow-private-urls", "LYCHEE_ALLOW_PRIVATE_URLS"),
    ):
        assert flag in text
        assert f"env {variable}" in text
    assert "``" not in text
    assert ":class:" not in text
    assert "header timeout s" not in text  # every flag has written help, not its field name
