"""Every knob of the service: a frozen dataclass, each field also a flag and a ``LYCHEE_*`` variable.

The environment variable of a field is ``LYCHEE_`` + its name in upper case (``max_documents`` →
``LYCHEE_MAX_DOCUMENTS``); a flag given on the command line wins over the environment, which wins over
the default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from lychee_rerank.core.media import MediaPolicy, SettingNames
from lychee_rerank.core.wire import check_api_key

if TYPE_CHECKING:
    from lychee_rerank.core.server.connections import ConnectionLimits

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True)
class ServerSettings:
    """How the service runs and what it accepts.

    Attributes:
        model: Hub id, checkpoint folder or ``tiny``; ``None`` means the profile's model.
        served_model_name: The name reported in responses; default: the model's name.
        host: Address to listen on.
        port: Port to listen on.
        header_timeout_s: Time a client has to send a request's line and headers, from connecting (or from
            the previous answer); then it is answered 408 and closed.
        body_timeout_s: Time a client has to send a request's whole body once the headers are in; then 408.
        keep_alive_timeout_s: An idle keep-alive connection is closed after this many seconds.
        max_connections: Open connections at most (lowered to fit the open-file limit); at the cap the
            connection stalled longest is closed to make room, or the new one is answered 503.
        protect_docs: With an API key, ``/metrics``, ``/docs`` and ``/openapi.json`` need it too.
        device: ``cuda``, ``cpu``...; default: CUDA when available.
        dtype: ``bfloat16``, ``float32``...; default per device.
        profile: The model profile (``lychee``...).
        api_key: When set, every scoring route needs ``Authorization: Bearer <api_key>``.
        max_documents: Documents per request; more is answered 413.
        max_body_bytes: Request body size; more is answered 413 before the JSON is parsed.
        max_image_bytes: Encoded size of one image; more is answered 413.
        max_image_pixels: Width times height of one image, checked before decoding; more is answered 422.
        max_document_tokens: Tokens of a document's (and the query's) text; longer text is truncated.
        max_queue: Requests waiting for the model; more is answered 429 with Retry-After.
        max_batch_tokens: Padded tokens per forward pass, and the scheduler's budget for merging requests.
        max_batch_memory: Bytes of activations one forward pass may hold, estimated from the model's shape
            (its tokens, the shared prefix each row attends over, the vision tower's patches).
        max_wait_ms: How long the scheduler waits for more requests to merge into a batch.
        request_timeout_s: Time allowed per request from its arrival, image downloads, decoding, queueing and
            scoring included; more is answered 504.
        allow_urls: Whether image URLs (http/https) are fetched.
        allow_private_urls: Whether image URLs may point at loopback, private or metadata addresses.
        local_roots: Folders (comma-separated in the environment) under which local image paths are read;
            empty: no local path is read.
        fetch_timeout_s: Time allowed to download one image URL.
        json_documents: Parse string documents that hold a JSON ``{"text", "image"}`` object by default
            (a request can also ask with ``?json_documents=true`` or ``X-Lychee-Json-Documents: true``).
        ui: Mount the Gradio UI at ``/ui`` when gradio is installed.
        torch_threads: CPU threads for the model's operators (``torch.set_num_threads``); default: torch's.
            On a small or shared CPU machine 1 is often much faster than the default (no spinning threads).
        log_level: uvicorn's log level.
        image_cache_bytes: Memory for decoded images seen recently, in bytes of pixels (each image is
            first reduced to the model's pixel bounds; an RGB pixel holds 4 bytes); 0 turns it off.
        vision_cache_bytes: Memory for the vision tower's outputs of images seen recently (on the
            model's device); 0 turns it off.
        max_request_text_bytes: Text of one request (query, documents and instruction, in UTF-8 bytes, before
            truncation); more is answered 413.
        max_fetches_per_request: Image URLs of one request downloaded at once; the rest wait their turn.
        max_concurrent_fetches: Image URLs downloaded at once by the whole service; free slots go to the
            waiting requests in turn, so one request with many slow URLs cannot hold back another's.
        prepare_threads: Threads that prepare requests for the model (truncate, decode images, tokenise);
            requests with images may use all but one, so text requests never wait behind decoding.
    """

    model: str | None = None
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # -- connections and access (slow clients, which routes need the key)
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_timeout_s: float = 5.0
    max_connections: int = 1000
    protect_docs: bool = False
    # --
    device: str | None = None
    dtype: str | None = None
    profile: str = "lychee"
    api_key: str | None = None
    max_documents: int = 1000
    max_body_bytes: int = 64 * 1024 * 1024
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_document_tokens: int = 4096
    max_queue: int = 256
    max_batch_tokens: int = 16384
    max_batch_memory: int = 1024 * 1024 * 1024  # the engine's default (core/local/budget.py)
    max_wait_ms: float = 5.0
    request_timeout_s: float = 120.0
    allow_urls: bool = True
    allow_private_urls: bool = False
    local_roots: tuple[str, ...] = ()
    fetch_timeout_s: float = 10.0
    json_documents: bool = False
    ui: bool = True
    torch_threads: int | None = None
    log_level: str = "info"
    image_cache_bytes: int = 256 * 1024 * 1024
    vision_cache_bytes: int = 256 * 1024 * 1024
    # -- the request path: text size, image downloads, preparing threads ----------------------------
    max_request_text_bytes: int = 64 * 1024 * 1024
    max_fetches_per_request: int = 8
    max_concurrent_fetches: int = 64
    prepare_threads: int = 4

    def __post_init__(self) -> None:
        for name in ("max_documents", "max_body_bytes", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_document_tokens", "max_queue", "max_batch_tokens", "max_batch_memory"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.request_timeout_s <= 0 or self.fetch_timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and the timeouts positive")
        if self.api_key is not None:
            check_api_key(self.api_key, "api_key (--api-key, LYCHEE_API_KEY)")
        for name in ("max_request_text_bytes", "max_fetches_per_request", "max_concurrent_fetches", "prepare_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")

    def connection_limits(self) -> ConnectionLimits:
        """The per-connection deadlines and the connection cap of these settings."""
        from lychee_rerank.core.server.connections import ConnectionLimits  # uvicorn only when serving

        return ConnectionLimits(
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            keep_alive_timeout_s=self.keep_alive_timeout_s,
            max_connections=self.max_connections,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerSettings:
        """Defaults, then ``LYCHEE_*`` variables, then ``overrides`` that are not ``None``.

        Example:
            >>> ServerSettings.from_env({"LYCHEE_MAX_DOCUMENTS": "50"}).max_documents
            50
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = environ.get(env_var(field.name))
            if raw is not None:
                values[field.name] = parse_value(field.name, field.type, raw)
        values.update({name: value for name, value in overrides.items() if value is not None})
        return replace(cls(), **values)

    def media_policy(self) -> MediaPolicy:
        """The service's media policy: :meth:`MediaPolicy.for_service` widened only by these settings.

        Its refusals name the service's flags and variables (``--allow-private-urls`` /
        ``LYCHEE_ALLOW_PRIVATE_URLS``), which is what a service user can change.
        """
        return replace(
            MediaPolicy.for_service(),
            setting_names=SettingNames(**{item.name: setting_name(item.name) for item in fields(SettingNames)}),
            max_image_bytes=self.max_image_bytes,
            max_image_pixels=self.max_image_pixels,
            allow_urls=self.allow_urls,
            allow_private_urls=self.allow_private_urls,
            local_roots=tuple(self.local_roots),
            fetch_timeout_s=self.fetch_timeout_s,
        )


def env_var(name: str) -> str:
    """The environment variable of a settings field."""
    return "LYCHEE_" + name.upper()


def setting_name(name: str) -> str:
    """How a message names a settings field to a service user: its flag and its variable.

    Example:
        >>> setting_name("local_roots")
        '--local-roots / LYCHEE_LOCAL_ROOTS'
    """
    return f"--{name.replace('_', '-')} / {env_var(name)}"


def parse_value(name: str, annotation: Any, raw: str) -> Any:
    """Parses an environment string by the field's annotation (the annotations are strings here)."""
    kind = str(annotation)
    text = raw.strip()
    try:
        if kind.startswith("bool"):
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(f"expected true or false, got {raw!r}")
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in text.split(",") if part.strip())
    except ValueError as error:
        raise ValueError(f"{env_var(name)}: {error}") from None
    return text or None if "None" in kind else text
