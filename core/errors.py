"""Exceptions raised by the scoring core.

Every error says what was wrong and what to do about it. ``InvalidInputError`` (and its subclass
``ImageError``) is the caller's fault and maps to a 4xx in the service; ``ModelLoadError`` is a
deployment problem; ``RemoteRerankerError`` (and ``RemoteAuthError``) is what the service's client raises
when the service cannot serve a call.
"""

from __future__ import annotations

from typing import Literal

ImageErrorReason = Literal[
    "too_many_bytes",
    "too_many_pixels",
    "undecodable",
    "not_found",
    "forbidden",
    "fetch_failed",
    "invalid_source",
]


class LycheeError(Exception):
    """Base class of every error raised by lychee-rerank."""


class InvalidInputError(LycheeError, ValueError):
    """A query, document or argument that cannot be scored as given."""


class ImageError(InvalidInputError):
    """An image that cannot be read, fetched or decoded, or that breaks the media policy.

    Attributes:
        reason: A stable machine-readable code, used by the service to choose a status code.
    """

    def __init__(self, message: str, *, reason: ImageErrorReason) -> None:
        super().__init__(message)
        self.reason: ImageErrorReason = reason

    def located(self, where: str) -> ImageError:
        """Returns the same error with ``where`` (e.g. ``"document 3"``) in front of the message."""
        located = ImageError(f"{where}: {self}", reason=self.reason)
        located.__cause__ = self.__cause__
        return located


class ModelLoadError(LycheeError, RuntimeError):
    """The model or its processor could not be loaded."""


class UnknownProfileError(LycheeError, KeyError):
    """A profile name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RemoteRerankerError(LycheeError):
    """The service could not be reached in time or failed (transport error, 5xx, overloaded, a bad answer).

    Attributes:
        status: The HTTP status, or ``None`` when no answer came.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RemoteAuthError(RemoteRerankerError):
    """The service refused the API key (HTTP 401 or 403): check ``LYCHEE_API_KEY`` or ``api_key=``."""
