"""What an image string is: the one place that decides, for the media policy, the client, the service and the UI.

An image given as a string is an http(s) URL, a ``data:`` URI, a ``file://`` URI, a string with some other
URL scheme (refused), or *bare text*: a filesystem path or raw base64. Bare text is told apart by whoever
holds the filesystem (:func:`lychee_rerank.core.media.read_image_bytes` under its policy, the client on its
own machine); everything else is decided from the string alone, here.
"""

from __future__ import annotations

import re
from typing import Literal

SourceKind = Literal["url", "data_uri", "file_uri", "other_scheme", "bare"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ico", ".avif", ".heic")
MAX_PATH_CHARS = 4096
"""Longer bare text is never a path (PATH_MAX on Linux)."""


def source_kind(source: str) -> SourceKind:
    """What kind of image reference ``source`` is, from the string alone.

    Example:
        >>> [source_kind(s) for s in ("https://a/b.png", "data:image/png;base64,AA", "ftp://x", "shirt.png")]
        ['url', 'data_uri', 'other_scheme', 'bare']
    """
    text = source.strip()
    prefix = text[:8].lower()
    if prefix.startswith(("http://", "https://")):
        return "url"
    if prefix.startswith("data:"):
        return "data_uri"
    if prefix.startswith("file://"):
        return "file_uri"
    if _SCHEME.match(text):
        return "other_scheme"
    return "bare"


def is_url(source: object) -> bool:
    """Whether ``source`` is an http(s) URL string (something to fetch over the network).

    Example:
        >>> is_url(" HTTPS://example.com/a.jpg"), is_url("a.jpg"), is_url(b"http://")
        (True, False, False)
    """
    return isinstance(source, str) and source_kind(source) == "url"


def is_reference(source: object) -> bool:
    """Whether ``source`` names an image by URL or carries it as a data URI (what a browser can send).

    Example:
        >>> is_reference("data:image/png;base64,AA"), is_reference("photo.png")
        (True, False)
    """
    return isinstance(source, str) and source_kind(source) in ("url", "data_uri")


def looks_like_path(text: str) -> bool:
    """Whether bare text reads as a file path (a separator, or an image file suffix) rather than base64.

    Example:
        >>> looks_like_path("images/shirt.png"), looks_like_path("iVBORw0KGgo=")
        (True, False)
    """
    return len(text) < MAX_PATH_CHARS and ("/" in text or "\\" in text or text.lower().endswith(_IMAGE_SUFFIXES))


_USERINFO = re.compile(r"(?<=://)[^/?#]*@")


def redact_url(url: str, *, limit: int = 200) -> str:
    """``url`` without ``user:password@``, shortened to ``limit`` characters, for messages, logs and reprs.

    Example:
        >>> redact_url("http://admin:hunter2@gpu-box:8000/v1/rerank")
        'http://gpu-box:8000/v1/rerank'
    """
    shown = _USERINFO.sub("", url)
    return shown if len(shown) <= limit else shown[:limit] + "..."
