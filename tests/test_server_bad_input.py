"""Malformed and hostile requests: each gets its documented 4xx and a JSON error, never a 500.

The statuses are those of ``lychee_rerank.core.server.errors``. A 1×1 image is valid input and scores
200: the processor upsamples it to the model's minimum size, which is the right answer for a tiny image.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from lychee_rerank.core.server.background import running_service

KEY = "bad-input-key"
MAX_DOCUMENTS = 100
MAX_BODY = 2_000_000
MAX_IMAGE_BYTES = 200_000


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A few hundred bytes that claim ``width``×``height`` pixels: decoding would need gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def _doc_image(image: str) -> dict[str, Any]:
    return {"query": "q", "documents": [{"text": "d", "image": image}]}


VALID_PNG = _png(32, 32)
CASES: list[tuple[str, str, Any, int]] = [
    # (name, path, JSON body or raw bytes, expected status)
    ("malformed JSON", "/v1/rerank", b'{"query": "q", "documents": [', 400),
    ("empty body", "/v1/rerank", b"", 400),
    ("empty documents", "/v1/rerank", {"query": "q", "documents": []}, 400),
    ("empty query", "/v1/rerank", {"query": "  ", "documents": ["a"]}, 400),
    ("document without text or image", "/v1/rerank", {"query": "q", "documents": [{}]}, 422),
    ("documents is a string", "/v1/rerank", {"query": "q", "documents": "a"}, 422),
    ("documents are numbers", "/v1/rerank", {"query": "q", "documents": [1, 2]}, 422),
    ("query is a number", "/v1/rerank", {"query": 5, "documents": ["a"]}, 422),
    (
        "nested junk in a content part",
        "/v1/rerank",
        {"query": "q", "documents": [{"content": [{"type": "text", "text": "a", "x": {"y": [1]}}]}]},
        422,
    ),
    ("nested lists", "/v1/rerank", {"query": "q", "documents": [[["a"]]]}, 422),
    ("unknown top-level field", "/v1/rerank", {"query": "q", "documents": ["a"], "junk": 1}, 422),
    ("body is a JSON array", "/rerank", [1, 2, 3], 422),
    ("negative top_n", "/v1/rerank", {"query": "q", "documents": ["a"], "top_n": -1}, 422),
    ("top_n as a string", "/v1/rerank", {"query": "q", "documents": ["a"], "top_n": "5"}, 422),
    ("top_n as a float", "/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 1.5}, 422),
    ("top_n as a bool", "/v1/rerank", {"query": "q", "documents": ["a"], "top_n": True}, 422),
    ("min_score NaN literal", "/v1/rerank", b'{"query": "q", "documents": ["a"], "min_score": NaN}', 422),
    ("min_score Infinity", "/v1/rerank", b'{"query": "q", "documents": ["a"], "min_score": Infinity}', 422),
    ("min_score 'nan' string", "/v1/rerank", {"query": "q", "documents": ["a"], "min_score": "nan"}, 422),
    ("10k documents", "/v1/rerank", {"query": "q", "documents": ["d"] * 10_000}, 413),
    ("body over the byte limit", "/v1/rerank", {"query": "q", "documents": ["x" * (MAX_BODY + 10)]}, 413),
    ("corrupt base64", "/v1/rerank", _doc_image("data:image/png;base64,@@@not-base64@@@"), 422),
    ("truncated base64 image", "/v1/rerank", _doc_image("data:image/png;base64," + _b64(VALID_PNG)[:61]), 422),
    ("truncated PNG bytes", "/v1/rerank", _doc_image("data:image/png;base64," + _b64(VALID_PNG[:40])), 422),
    ("decompression bomb", "/v1/rerank", _doc_image("data:image/png;base64," + _b64(_bomb_png())), 422),
    ("wrong mime type", "/v1/rerank", _doc_image("data:text/plain;base64," + _b64(VALID_PNG)), 422),
    ("non-image bytes", "/v1/rerank", _doc_image("data:image/png;base64," + _b64(b"%PDF-1.4 not an image" * 4)), 422),
    ("image over the byte limit", "/v1/rerank", _doc_image("data:image/png;base64," + _b64(b"\0" * 300_000)), 413),
    ("loopback URL", "/v1/rerank", _doc_image("http://127.0.0.1:1/x.png"), 422),
    ("cloud metadata URL", "/v1/rerank", _doc_image("http://169.254.169.254/latest/meta-data/"), 422),
    ("private network URL", "/v1/rerank", _doc_image("http://10.0.0.1/x.png"), 422),
    ("IPv6 loopback URL", "/v1/rerank", _doc_image("http://[::1]/x.png"), 422),
    ("file:// URI", "/v1/rerank", _doc_image("file:///etc/passwd"), 422),
    ("/etc/passwd path", "/v1/rerank", _doc_image("/etc/passwd"), 422),
    ("unsupported scheme", "/v1/rerank", _doc_image("ftp://example.com/x.png"), 422),
    ("query image from a local path", "/v1/rerank", {"query": {"image": "/etc/hosts"}, "documents": ["a"]}, 422),
    (
        "two images in a content list",
        "/v1/rerank",
        {
            "query": "q",
            "documents": [
                {
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(VALID_PNG)}},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(VALID_PNG)}},
                    ]
                }
            ],
        },
        422,
    ),
    ("unknown content part type", "/v1/rerank", {"query": "q", "documents": [{"content": [{"type": "video"}]}]}, 422),
    ("reserved image token in text", "/v1/rerank", {"query": "q", "documents": ["a <|image_pad|> b"]}, 422),
    ("TEI texts not strings", "/rerank", {"query": "q", "texts": [{"text": "a"}]}, 422),
    ("TEI with too many texts", "/rerank", {"query": "q", "texts": ["a"] * (MAX_DOCUMENTS + 1)}, 413),
    ("batch query with junk key", "/rerank_batch", {"query": {"txt": "q"}, "documents": [{"text": "a"}]}, 422),
    ("score without a document", "/score", {"query": "q"}, 422),
    ("unknown path", "/v3/rerank", {"query": "q", "documents": ["a"]}, 404),
]


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path) -> Iterator[Any]:
    with running_service(
        tiny_model_dir,
        api_key=KEY,
        max_documents=MAX_DOCUMENTS,
        max_body_bytes=MAX_BODY,
        max_image_bytes=MAX_IMAGE_BYTES,
        max_image_pixels=4_000_000,
        max_document_tokens=256,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(service: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as http:
        yield http


def _post(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(("name", "path", "body", "status"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_gets_its_documented_status_and_a_json_error(
    client: httpx.Client, name: str, path: str, body: Any, status: int
) -> None:
    answer = _post(client, path, body)
    assert answer.status_code == status, answer.text[:500]
    error = answer.json()["error"]
    assert error["status"] == status
    assert error["message"]
    assert answer.json()["message"] == error["message"]


def test_there_are_at_least_25_bad_inputs() -> None:
    assert len(CASES) >= 25


def test_missing_or_wrong_api_key_is_401(service: Any) -> None:
    body = {"query": "q", "documents": ["a"]}
    assert httpx.post(f"{service.url}/v1/rerank", json=body).status_code == 401
    assert httpx.post(f"{service.url}/v1/rerank", json=body, headers={"Authorization": KEY}).status_code == 401
    assert httpx.post(f"{service.url}/rerank", json={"query": "q", "texts": ["a"]}).status_code == 401


def test_image_errors_carry_their_reason(client: httpx.Client) -> None:
    reasons = {
        "decompression bomb": "too_many_pixels",
        "wrong mime type": "invalid_source",
        "non-image bytes": "undecodable",
        "loopback URL": "forbidden",
        "/etc/passwd path": "forbidden",
        "image over the byte limit": "too_many_bytes",
    }
    by_name = {case[0]: case for case in CASES}
    for name, reason in reasons.items():
        _, path, body, _ = by_name[name]
        assert _post(client, path, body).json()["error"]["reason"] == reason, name


def test_valid_edge_inputs_score_200(client: httpx.Client) -> None:
    one_pixel = {"query": "q", "documents": [{"image": "data:image/png;base64," + _b64(_png(1, 1))}]}
    huge_text = {"query": "q", "documents": ["word " * 200_000]}  # 1 MB: truncated, not refused
    huge_top_n = {"query": "q", "documents": ["a", "b"], "top_n": 10**12}
    for body in (one_pixel, huge_text, huge_top_n):
        answer = _post(client, "/v1/rerank", body)
        assert answer.status_code == 200, answer.text[:300]
    assert len(_post(client, "/v1/rerank", huge_top_n).json()["results"]) == 2


def test_server_is_healthy_and_never_answered_500_after_the_suite(client: httpx.Client) -> None:
    for _, path, body, _ in CASES:
        _post(client, path, body)
    assert client.get("/health").status_code == 200
    metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics
    assert _post(client, "/v1/rerank", {"query": "q", "documents": ["still works"]}).status_code == 200
