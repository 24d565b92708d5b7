"""Queries and documents: text, an image, or both.

An image may be given as a filesystem path (``str`` or ``os.PathLike``), an http(s) URL, a data URI,
raw base64, ``bytes`` or a ``PIL.Image.Image``. It is kept as given here and read by
:mod:`lychee_rerank.core.media` only when the pair is scored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, Union

from PIL import Image

from lychee_rerank.core.errors import InvalidInputError

ImageInput: TypeAlias = Union[str, bytes, "os.PathLike[str]", Image.Image]
"""Anything that names or holds an image."""


@dataclass(frozen=True)
class _Content:
    text: str | None = None
    image: ImageInput | None = None

    def __post_init__(self) -> None:
        if self.text is not None and not isinstance(self.text, str):
            raise InvalidInputError(f"{type(self).__name__}.text must be a string, got {type(self.text).__name__}")
        if self.image is not None and not isinstance(self.image, (str, bytes, os.PathLike, Image.Image)):
            raise InvalidInputError(
                f"{type(self).__name__}.image must be a path, URL, data URI, base64 string, bytes or "
                f"PIL image, got {type(self.image).__name__}"
            )
        if self.text is None and self.image is None:
            raise InvalidInputError(f"a {type(self).__name__} needs text, an image, or both")
        if self.image is not None and isinstance(self.image, (str, bytes)) and not self.image:
            raise InvalidInputError(f"{type(self).__name__}.image is empty; leave it out or give an image")

    @property
    def has_image(self) -> bool:
        """Whether an image is part of this input."""
        return self.image is not None


@dataclass(frozen=True)
class Query(_Content):
    """What the user is looking for: text, an image, or both.

    Example:
        >>> Query("white linen shirt").text
        'white linen shirt'
    """


@dataclass(frozen=True)
class Document(_Content):
    """A candidate to be judged against a query: text, an image, or both.

    Example:
        >>> Document(text="A chart of revenue", image="figure3.png").has_image
        True
    """


QueryLike: TypeAlias = Query | str | Mapping[str, Any] | Image.Image
DocumentLike: TypeAlias = Document | str | Mapping[str, Any] | Image.Image


def _from_mapping(kind: type[_Content], value: Mapping[str, Any], where: str) -> Any:
    unknown = set(value) - {"text", "image"}
    if unknown:
        raise InvalidInputError(
            f"{where}: unknown key(s) {sorted(unknown)}; a {kind.__name__} mapping takes 'text' and/or 'image'"
        )
    try:
        return kind(text=value.get("text"), image=value.get("image"))
    except InvalidInputError as error:
        raise InvalidInputError(f"{where}: {error}") from None


def _coerce(kind: type[_Content], value: object, where: str) -> Any:
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        # A plain string is always text: guessing paths or URLs from text would be a silent wrong answer.
        return kind(text=value)
    if isinstance(value, Image.Image):
        return kind(image=value)
    if isinstance(value, Mapping):
        return _from_mapping(kind, value, where)
    raise InvalidInputError(
        f"{where}: expected a {kind.__name__}, a string or a {{'text', 'image'}} mapping, got {type(value).__name__}"
    )


def as_query(value: QueryLike) -> Query:
    """Turns a string, mapping or PIL image into a :class:`Query`.

    Example:
        >>> as_query({"text": "red dress"})
        Query(text='red dress', image=None)
    """
    query: Query = _coerce(Query, value, "query")
    return query


def as_documents(values: Sequence[DocumentLike]) -> list[Document]:
    """Turns each string, mapping or PIL image into a :class:`Document`; errors name the index.

    Example:
        >>> as_documents(["a", {"text": "b"}])[1].text
        'b'
    """
    if isinstance(values, (str, bytes, Mapping)):
        raise InvalidInputError("documents must be a list of documents, not a single document")
    return [_coerce(Document, value, f"document {index}") for index, value in enumerate(values)]
