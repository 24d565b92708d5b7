"""Image loading under a media policy: where an image may come from, how big it may be, how it is decoded.

Every source form of :data:`~lychee_rerank.core.inputs.ImageInput` ends as a :class:`LoadedImage`: an RGB
``PIL.Image.Image`` plus a content digest. Limits are checked before the expensive step they protect: byte
caps before reading or while downloading, pixel caps from the header before any pixel is decoded. URLs are
fetched only from public addresses unless the policy allows more, and every redirect is checked again.

Example:
    >>> policy = MediaPolicy.for_service()
    >>> load_image("/etc/hosts", policy)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lychee_rerank.core.errors.ImageError: Reading local files is disabled by this media policy ...
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import functools
import hashlib
import io
import ipaddress
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

from PIL import Image, ImageOps

from lychee_rerank.core.caches import ByteBudgetLRU
from lychee_rerank.core.errors import ImageError, ImageErrorReason
from lychee_rerank.core.inputs import ImageInput
from lychee_rerank.core.sources import MAX_PATH_CHARS, looks_like_path, redact_url, source_kind

try:
    import httpx
except ImportError:  # the local engine also runs where only local images are read and httpx is absent
    httpx = None  # type: ignore[assignment]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Pillow raises more than OSError on hostile input (plugins hit struct/index errors on malformed headers).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError, struct.error)
_ACCEPTED = (
    "an http(s) URL, a data:image/...;base64,... URI, a file path or file:// URI, "
    "base64-encoded image bytes, raw bytes or a PIL image"
)


@dataclass(frozen=True)
class SettingNames:
    """How refusal messages name the setting that would allow what a policy refused.

    The defaults name :class:`MediaPolicy`'s fields, for library users; a program that builds the policy
    from its own settings (the HTTP service: flags and environment variables) passes its own names.

    Example:
        >>> SettingNames().allow_private_urls
        'MediaPolicy(allow_private_urls=True)'
    """

    max_image_bytes: str = "MediaPolicy.max_image_bytes"
    max_image_pixels: str = "MediaPolicy.max_image_pixels"
    allow_urls: str = "MediaPolicy(allow_urls=True)"
    allow_private_urls: str = "MediaPolicy(allow_private_urls=True)"
    local_roots: str = "MediaPolicy(local_roots=(...))"
    fetch_timeout_s: str = "MediaPolicy.fetch_timeout_s"


@dataclass(frozen=True)
class MediaPolicy:
    """Where images may come from and how large they may be.

    The default suits a library used in the user's own process (any local path, public URLs);
    :meth:`for_service` is the strict default of a server that reads images named by its clients.

    Attributes:
        max_image_bytes: Cap on encoded bytes, checked before decoding and while downloading.
        max_image_pixels: Cap on width*height, checked from the header before pixels are decoded.
        allow_urls: Whether http(s) URLs may be fetched at all.
        allow_private_urls: Whether URLs may resolve to loopback, private, link-local (cloud metadata),
            CGNAT, multicast, reserved or unspecified addresses.
        local_roots: ``None`` allows any local path; a tuple allows only paths that resolve (symlinks
            followed) under one of these folders; ``()`` allows no local path.
        fetch_timeout_s: Time allowed for a whole download, redirects included.
        max_redirects: Redirects followed before giving up.
        user_agent: Sent with every request.
        setting_names: How refusal messages name the settings above (not compared).
    """

    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    allow_urls: bool = True
    allow_private_urls: bool = False
    local_roots: tuple[str, ...] | None = None
    fetch_timeout_s: float = 10.0
    max_redirects: int = 3
    user_agent: str = "lychee-rerank"
    setting_names: SettingNames = field(default=SettingNames(), compare=False)

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_image_pixels", "fetch_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MediaPolicy.{name} must be positive, got {getattr(self, name)!r}")
        if self.max_redirects < 0:
            raise ValueError(f"MediaPolicy.max_redirects must be 0 or more, got {self.max_redirects!r}")
        if self.local_roots is not None:
            # A bare string would be iterated character by character into one-letter roots.
            if isinstance(self.local_roots, (str, bytes)) or any(not root for root in self.local_roots):
                raise ValueError(
                    "MediaPolicy.local_roots must be a tuple of non-empty folder paths, "
                    f"e.g. ('/data/images',), got {self.local_roots!r}"
                )
            object.__setattr__(self, "local_roots", tuple(os.fspath(root) for root in self.local_roots))

    @classmethod
    def for_service(cls) -> MediaPolicy:
        """The strict default of the HTTP service: public URLs only and no local files."""
        return cls(allow_urls=True, allow_private_urls=False, local_roots=())


DEFAULT_POLICY = MediaPolicy()


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image ready for the processor.

    Attributes:
        image: RGB, EXIF orientation applied, first frame of an animation, fully loaded; reduced to the
            model's pixel bounds when an :class:`ImageCache` with a ``fit`` loaded it. Shared by
            :class:`ImageCache`, so treat it as read-only.
        digest: Hex sha256 of the encoded bytes, or of the RGB pixels for a PIL image given directly.
        decoded_size: (width, height) as decoded, before any reduction; default: ``image.size``.
    """

    image: Image.Image
    digest: str
    decoded_size: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.decoded_size == (0, 0):
            object.__setattr__(self, "decoded_size", self.image.size)

    @property
    def nbytes(self) -> int:
        """The memory the pixels hold (Pillow keeps multi-band pixels in 4 bytes)."""
        width, height = self.image.size
        return width * height * (1 if len(self.image.getbands()) == 1 else 4)


def _error(reason: ImageErrorReason, message: str) -> ImageError:
    return ImageError(message, reason=reason)


def _redact(url: str) -> str:
    return redact_url(url)


def _check_bytes(size: int, policy: MediaPolicy, what: str) -> None:
    if size > policy.max_image_bytes:
        raise _error(
            "too_many_bytes",
            f"{what} is larger than the limit of {policy.max_image_bytes} bytes; send a smaller image "
            f"or raise {policy.setting_names.max_image_bytes}.",
        )


def _check_pixels(size: tuple[int, int], policy: MediaPolicy) -> None:
    width, height = size
    if width * height > policy.max_image_pixels:
        raise _error(
            "too_many_pixels",
            f"The image is {width}x{height} = {width * height} pixels, more than the limit of "
            f"{policy.max_image_pixels}; send a smaller image or raise {policy.setting_names.max_image_pixels}.",
        )


def _read_local(path: Path, policy: MediaPolicy) -> bytes:
    if policy.local_roots is not None:
        if not policy.local_roots:
            raise _error(
                "forbidden",
                "Reading local files is disabled by this media policy (no folder is allowed); send the image as "
                f"bytes, base64, a data URI or a URL, or allow a folder with {policy.setting_names.local_roots}.",
            )
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as error:  # RuntimeError: symlink loop before Python 3.13
            raise _error("not_found", f"The path {str(path)!r} cannot be resolved: {error}.") from error
        if not any(resolved.is_relative_to(Path(root).resolve()) for root in policy.local_roots):
            raise _error(
                "forbidden",
                f"The path {str(path)!r} is outside the folders this media policy allows "
                f"({', '.join(policy.local_roots)}); move the image under one of them or add its folder "
                f"to {policy.setting_names.local_roots}.",
            )
        path = resolved  # read what was checked, not whatever the link points to later
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # FIFOs and devices would block or never end
            raise _error("invalid_source", f"The path {str(path)!r} is not a regular file.")
        _check_bytes(info.st_size, policy, f"The file {str(path)!r}")
        with path.open("rb") as file:
            data = file.read(policy.max_image_bytes + 1)
    except FileNotFoundError as error:
        raise _error("not_found", f"The file {str(path)!r} does not exist; check the path.") from error
    except PermissionError as error:
        raise _error("forbidden", f"The file {str(path)!r} cannot be read: permission denied.") from error
    except OSError as error:
        raise _error("not_found", f"The file {str(path)!r} cannot be read: {error.strerror}.") from error
    _check_bytes(len(data), policy, f"The file {str(path)!r}")  # it may have grown since stat
    return data


def _decode_base64(text: str, policy: MediaPolicy) -> bytes | None:
    compact = "".join(text.split())
    if not compact:
        return None
    _check_bytes(len(compact) // 4 * 3 - 2, policy, "The base64 image")  # refuse before decoding
    try:
        return base64.b64decode(compact, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        return None


def _read_data_uri(uri: str, policy: MediaPolicy) -> bytes:
    header, comma, payload = uri[len("data:") :].partition(",")
    params = [param.strip().lower() for param in header.split(";")]
    if not comma:
        raise _error("invalid_source", "The data URI has no payload; send data:image/<type>;base64,<payload>.")
    if not params[0].startswith("image/"):
        raise _error(
            "invalid_source",
            f"The data URI has media type {params[0] or 'none'!r}, not an image; "
            "send data:image/<type>;base64,<payload>.",
        )
    data = _decode_base64(payload, policy) if "base64" in params[1:] else None
    if data is None:
        raise _error("invalid_source", "The data URI payload is not valid base64; send ...;base64,<payload>.")
    return data


def _describe_if_not_public(address: str) -> str | None:
    """None for a public address, else what kind of address it is."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # Addresses that carry an IPv4 address reach that address: judge the embedded one.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        ip = embedded or ip
    for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved", "site_local"):
        if getattr(ip, f"is_{kind}", False):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-public"


def _judge_addresses(infos: list[tuple[Any, ...]], policy: MediaPolicy, shown: str) -> list[str]:
    """The addresses of a DNS answer, each allowed by the policy, or the error naming the first that is not."""
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        kind = None if policy.allow_private_urls else _describe_if_not_public(address)
        if kind is not None:
            raise _error(
                "forbidden",
                f"The URL {shown} resolves to {address}, a {kind} address; image URLs must point to public "
                f"hosts. Set {policy.setting_names.allow_private_urls} to fetch from private networks.",
            )
    return addresses


def _lookup_target(url: httpx.URL) -> tuple[str, int]:
    return url.raw_host.decode("ascii"), url.port or (443 if url.scheme == "https" else 80)


def _unresolvable(url: httpx.URL, shown: str) -> ImageError:
    host = _lookup_target(url)[0]
    return _error("fetch_failed", f"Fetching {shown} failed: the host {host!r} cannot be resolved.")


def _checked_addresses(url: httpx.URL, policy: MediaPolicy, shown: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(*_lookup_target(url), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise _unresolvable(url, shown) from error
    return _judge_addresses(infos, policy, shown)


async def _achecked_addresses(url: httpx.URL, policy: MediaPolicy, shown: str) -> list[str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(*_lookup_target(url), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise _unresolvable(url, shown) from error
    return _judge_addresses(infos, policy, shown)


# The sync and async fetches below differ only in their I/O calls; every rule (which address to connect
# to, what a redirect or a status means, the byte cap, the deadline) is one of these shared helpers.


def _hop_request(
    client: httpx.Client | httpx.AsyncClient, url: httpx.URL, address: str, deadline: float
) -> httpx.Request:
    """A GET to the address that was checked, so a second DNS answer cannot point elsewhere."""
    return client.build_request(
        "GET",
        url.copy_with(host=address.partition("%")[0]),
        headers={"Host": url.netloc.decode("ascii")},
        extensions={"sni_hostname": url.raw_host.decode("ascii")},
        timeout=max(deadline - time.monotonic(), 0.001),
    )


def _redirect_or_check(response: httpx.Response, url: httpx.URL, policy: MediaPolicy, shown: str) -> httpx.URL | None:
    """Where a redirect points; ``None`` when the body is the image (after the status and length checks)."""
    if response.status_code in _REDIRECTS:
        location = response.headers.get("location")
        if not location:
            raise _error("fetch_failed", f"Fetching {shown} failed: a redirect without a Location.")
        return url.join(location)
    if not response.is_success:
        raise _error(
            "fetch_failed",
            f"Fetching {shown} failed: the server answered HTTP "
            f"{response.status_code}; check that the URL is right and public.",
        )
    length = response.headers.get("content-length", "")
    if length.isdigit():  # refuse before the first byte when the server says how much is coming
        _check_bytes(int(length), policy, f"The image at {shown}")
    return None


def _add_chunk(body: bytearray, chunk: bytes, policy: MediaPolicy, shown: str, deadline: float) -> None:
    body += chunk
    _check_bytes(len(body), policy, f"The image at {shown}")
    if time.monotonic() > deadline:
        raise httpx.ReadTimeout("the whole download took too long")


def _no_address(shown: str) -> ImageError:
    return _error("fetch_failed", f"Fetching {shown} failed: the host has no address.")


def _get(client: httpx.Client, url: httpx.URL, policy: MediaPolicy, deadline: float) -> bytes | httpx.URL:
    """One hop: the body, or where a redirect points."""
    import httpx

    shown = _redact(str(url))
    addresses = _checked_addresses(url, policy, shown)
    for attempt, address in enumerate(addresses, start=1):
        try:
            response = client.send(_hop_request(client, url, address, deadline), stream=True)
        except httpx.ConnectError:
            if attempt == len(addresses):
                raise
            continue
        try:
            target = _redirect_or_check(response, url, policy, shown)
            if target is not None:
                return target
            body = bytearray()
            for chunk in response.iter_bytes():
                _add_chunk(body, chunk, policy, shown, deadline)
            return bytes(body)
        finally:
            response.close()
    raise _no_address(shown)


async def _aget(client: httpx.AsyncClient, url: httpx.URL, policy: MediaPolicy, deadline: float) -> bytes | httpx.URL:
    """:func:`_get` on an async client."""
    shown = _redact(str(url))
    addresses = await _achecked_addresses(url, policy, shown)
    for attempt, address in enumerate(addresses, start=1):
        try:
            response = await client.send(_hop_request(client, url, address, deadline), stream=True)
        except httpx.ConnectError:
            if attempt == len(addresses):
                raise
            continue
        try:
            target = _redirect_or_check(response, url, policy, shown)
            if target is not None:
                return target
            body = bytearray()
            async for chunk in response.aiter_bytes():
                _add_chunk(body, chunk, policy, shown, deadline)
            return bytes(body)
        finally:
            await response.aclose()
    raise _no_address(shown)


def _start_url(url: str) -> httpx.URL:
    try:
        return httpx.URL(url)
    except httpx.InvalidURL as error:
        raise _error("invalid_source", f"The URL {_redact(url)} is not valid; check its host and port.") from error


def _check_hop_url(current: httpx.URL, shown: str) -> None:
    if current.scheme not in ("http", "https") or not current.raw_host:
        raise _error(
            "forbidden",
            f"Fetching {shown} led to {_redact(str(current))!r}; only http(s) URLs with a host are fetched.",
        )


@contextmanager
def _fetch_errors(shown: str, policy: MediaPolicy) -> Iterator[None]:
    """Turns the HTTP client's errors into :class:`ImageError` (``fetch_failed``)."""
    try:
        yield
    except httpx.TimeoutException as error:
        raise _error(
            "fetch_failed",
            f"Fetching {shown} took longer than the {policy.fetch_timeout_s} s "
            f"allowed; use a faster host or raise {policy.setting_names.fetch_timeout_s}.",
        ) from error
    except ImageError:
        raise
    except (httpx.HTTPError, httpx.InvalidURL) as error:  # connection refused, reset, bad redirect URL
        raise _error("fetch_failed", f"Fetching {shown} failed: {type(error).__name__}: {error}.") from error


def _too_many_redirects(shown: str, policy: MediaPolicy) -> ImageError:
    return _error("fetch_failed", f"Fetching {shown} failed: more than {policy.max_redirects} redirects.")


def _client_options(policy: MediaPolicy) -> dict[str, Any]:
    # Proxies from the environment would connect somewhere other than the address checked here.
    return {"follow_redirects": False, "trust_env": False, "headers": {"User-Agent": policy.user_agent}}


def _require_httpx(shown: str) -> None:
    if httpx is None:
        raise _error(
            "fetch_failed",
            f"Fetching {shown} needs the httpx package, which is not installed here: pip install httpx "
            "(or send the image as bytes, base64 or a data URI).",
        )


def _fetch_url(url: str, policy: MediaPolicy) -> bytes:
    shown = _redact(url)
    _require_httpx(shown)
    deadline = time.monotonic() + policy.fetch_timeout_s
    current = _start_url(url)
    with _fetch_errors(shown, policy), httpx.Client(**_client_options(policy)) as client:
        for _ in range(policy.max_redirects + 1):
            _check_hop_url(current, shown)
            result = _get(client, current, policy, deadline)
            if isinstance(result, bytes):
                return result
            current = result
    raise _too_many_redirects(shown, policy)


def async_fetch_client(policy: MediaPolicy, *, max_connections: int = 100) -> httpx.AsyncClient:
    """An async HTTP client for :func:`afetch_image_url`, meant to be shared by many fetches (one TLS setup).

    The caller closes it (``await client.aclose()``).
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(limits=limits, **_client_options(policy))


async def afetch_image_url(url: str, policy: MediaPolicy, client: httpx.AsyncClient) -> bytes:
    """Downloads an image URL under ``policy`` without a thread; cancelling the task closes its connection.

    The same rules as :func:`read_image_bytes` for a URL (public addresses unless allowed, the checked
    address connected to, every redirect checked again, byte caps while downloading), and the whole
    download, redirects included, ends within ``policy.fetch_timeout_s``.

    Args:
        url: An http(s) URL.
        policy: What may be fetched and how much.
        client: From :func:`async_fetch_client` with the same policy.

    Raises:
        ImageError: With ``reason`` forbidden, fetch_failed, too_many_bytes or invalid_source.
    """
    _require_httpx(_redact(url))
    shown = _redact(url)
    if not policy.allow_urls:
        raise _urls_disabled(url, policy)
    if source_kind(url) != "url":
        raise _error("invalid_source", f"{shown!r} is not an http(s) URL.")
    deadline = time.monotonic() + policy.fetch_timeout_s
    current = _start_url(url.strip())
    with _fetch_errors(shown, policy):
        try:
            # Per-operation timeouts let a server that drips bytes run past the whole download's time.
            async with asyncio.timeout(policy.fetch_timeout_s):
                for _ in range(policy.max_redirects + 1):
                    _check_hop_url(current, shown)
                    result = await _aget(client, current, policy, deadline)
                    if isinstance(result, bytes):
                        return result
                    current = result
        except TimeoutError as error:
            raise httpx.ReadTimeout("the whole download took too long") from error
    raise _too_many_redirects(shown, policy)


def _urls_disabled(text: str, policy: MediaPolicy) -> ImageError:
    return _error(
        "forbidden",
        f"Fetching image URLs is disabled by this media policy ({_redact(text)}); "
        f"send the image as bytes, base64 or a data URI, or set {policy.setting_names.allow_urls}.",
    )


def _is_existing_file(text: str, policy: MediaPolicy) -> bool:
    if len(text) >= MAX_PATH_CHARS:
        return False
    try:
        path = Path(text)
        # Under a restrictive policy, probing outside the roots would tell callers which files exist.
        if policy.local_roots is not None and not any(
            path.resolve().is_relative_to(Path(root).resolve()) for root in policy.local_roots
        ):
            return False
        return path.exists()
    except (OSError, ValueError, RuntimeError):
        return False


def _read_str(source: str, policy: MediaPolicy) -> bytes:
    text = source.strip()
    kind = source_kind(text)
    if kind == "url":
        if not policy.allow_urls:
            raise _urls_disabled(text, policy)
        return _fetch_url(text, policy)
    if kind == "data_uri":
        return _read_data_uri(text, policy)
    if kind == "file_uri":
        host, _, path = text[len("file://") :].partition("/")
        if host.lower() not in ("", "localhost"):
            raise _error("invalid_source", f"The file URI {text[:200]!r} names another host; use file:///path.")
        return _read_local(Path("/" + unquote(path)), policy)
    if kind == "other_scheme":
        raise _error("invalid_source", f"The URL scheme of {_redact(text)!r} is not supported; send {_ACCEPTED}.")
    if _is_existing_file(text, policy):
        return _read_local(Path(text), policy)
    data = _decode_base64(text, policy)
    if data is not None:
        return data
    if looks_like_path(text):
        return _read_local(Path(text), policy)  # says not_found, or forbidden outside the roots
    raise _error("invalid_source", f"The image source {text[:40]!r} is not {_ACCEPTED}.")


def read_image_bytes(source: str | bytes | os.PathLike[str], policy: MediaPolicy = DEFAULT_POLICY) -> bytes:
    """Reads the encoded bytes of an image from a URL, data URI, base64 text, path or bytes.

    Args:
        source: See :data:`~lychee_rerank.core.inputs.ImageInput`; a PIL image has no bytes to read.
        policy: Which sources are allowed and how large they may be.

    Returns:
        The encoded image, at most ``policy.max_image_bytes`` long.

    Raises:
        ImageError: With ``reason`` forbidden, not_found, fetch_failed, too_many_bytes or invalid_source.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, str):
        data = _read_str(source, policy)
    elif isinstance(source, os.PathLike):
        data = _read_local(Path(os.fsdecode(source)), policy)
    else:
        raise _error("invalid_source", f"An image of type {type(source).__name__} cannot be read; send {_ACCEPTED}.")
    _check_bytes(len(data), policy, "The image")
    return data


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        # Pillow's own conversion clips at 255, which turns most 16-bit images white: scale instead.
        high = cast(float, image.getextrema()[1])  # one band, so (min, max)
        if image.mode.startswith("I;16") or high > 255:
            scale = 1 / 257
        else:
            scale = 255.0 if image.mode == "F" and high <= 1.0 else 1.0
        image = image.convert("F").point(lambda value: value * scale).convert("L")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        # Transparent pixels are black underneath; the model should see them as white paper.
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _decode(data: bytes, policy: MediaPolicy, digest: str) -> LoadedImage:
    _check_bytes(len(data), policy, "The image")
    try:
        with Image.open(io.BytesIO(data)) as opened:  # reads the header only
            _check_pixels(opened.size, policy)
            opened.seek(0)  # an animation is judged by its first frame
            opened.load()
            image = _to_rgb(ImageOps.exif_transpose(opened))
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow refuses some sizes at open, before our own check can see the dimensions.
        raise _error(
            "too_many_pixels",
            f"The image is too large to decode safely ({error}); the limit of this media policy is "
            f"{policy.max_image_pixels} pixels. Send a smaller image.",
        ) from error
    except _PIL_ERRORS as error:
        raise _error(
            "undecodable",
            f"The bytes are not a supported image (they start with "
            f"{data[:8].hex(' ')}): {error}. Send PNG, JPEG, WebP, GIF, BMP or TIFF.",
        ) from error
    return LoadedImage(image=image, digest=digest)


def decode_image(data: bytes, policy: MediaPolicy = DEFAULT_POLICY) -> LoadedImage:
    """Decodes encoded image bytes into an RGB image, refusing oversized input before decoding.

    Args:
        data: The encoded image (PNG, JPEG, WebP, GIF, ...).
        policy: The byte and pixel caps to enforce.

    Raises:
        ImageError: With ``reason`` too_many_bytes, too_many_pixels or undecodable.
    """
    return _decode(data, policy, hashlib.sha256(data).hexdigest())


def _from_pil(image: Image.Image, policy: MediaPolicy) -> LoadedImage:
    _check_pixels(image.size, policy)
    try:
        rgb = _to_rgb(ImageOps.exif_transpose(image))  # a copy: the caller's image is never changed
    except _PIL_ERRORS as error:  # a lazily opened image may fail to load only now
        raise _error("undecodable", f"The PIL image cannot be converted to RGB: {error}.") from error
    # Hash the RGB pixels: a palette image's raw bytes would not include its palette.
    digest = hashlib.sha256(f"{rgb.mode}:{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return LoadedImage(image=rgb, digest=digest.hexdigest())


def load_image(source: ImageInput, policy: MediaPolicy = DEFAULT_POLICY) -> LoadedImage:
    """Reads and decodes an image from any :data:`~lychee_rerank.core.inputs.ImageInput` form.

    Args:
        source: Path, URL, data URI, base64 text, bytes or a PIL image.
        policy: Which sources are allowed and how large they may be.

    Raises:
        ImageError: Naming what was wrong in ``reason`` and the message.

    Example:
        >>> load_image(Image.new("RGBA", (1, 1))).image.getpixel((0, 0))
        (255, 255, 255)
    """
    if isinstance(source, Image.Image):
        return _from_pil(source, policy)
    data = read_image_bytes(source, policy)
    return _decode(data, policy, hashlib.sha256(data).hexdigest())


ImageFit = Callable[[Image.Image], Image.Image]
"""Reduces a decoded image to what the model will see (a smaller copy, or the image itself)."""

DEFAULT_IMAGE_CACHE_BYTES = 256 * 1024 * 1024
# Decoding a large image and reducing it frees its full-resolution pixels at once; past this size the
# freed heap is handed back to the system (see _return_freed_memory).
_RETURN_FREED_AFTER_BYTES = 32 * 1024 * 1024


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):  # no C library to open by that name (Windows)
        return None
    return cast("Callable[[int], int] | None", trim)


def _return_freed_memory() -> None:
    """Asks glibc to give freed heap pages back to the system; nothing elsewhere.

    Pillow allocates pixels in 16 MB blocks, which glibc serves from its heaps once a first large block
    has been freed, and it keeps freed heap pages resident: without this, each thread that decodes a
    6000x6000 image keeps a few hundred megabytes it no longer uses.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class ImageCache:
    """A thread-safe LRU of decoded images keyed by content, so identical images are decoded once.

    The budget is in bytes of pixels, so one huge photo cannot hold as much memory as hundreds of
    thumbnails. With ``fit``, an image is reduced right after decoding, before it is cached: what is
    kept is what the model will see, never the full resolution.

    Args:
        max_bytes: Pixel bytes to keep (an RGB pixel holds 4); 0 keeps nothing.
        fit: Applied to every decoded (or given) image before it is cached or returned.

    Example:
        >>> cache = ImageCache(max_bytes=1024 * 1024)
        >>> png = io.BytesIO(); Image.new("RGB", (1, 1)).save(png, "PNG")
        >>> first = cache.get_or_load(png.getvalue()); second = cache.get_or_load(png.getvalue())
        >>> (cache.hits, cache.misses, first is second)
        (1, 1, True)
    """

    def __init__(self, max_bytes: int = DEFAULT_IMAGE_CACHE_BYTES, *, fit: ImageFit | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"ImageCache max_bytes must be 0 or more, got {max_bytes}")
        self.max_bytes = max_bytes
        self.fit = fit
        self.hits = 0
        self.misses = 0
        self._entries: ByteBudgetLRU[LoadedImage] = ByteBudgetLRU(max_bytes)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Pixel bytes held now; never more than ``max_bytes``."""
        return self._entries.nbytes

    def clear(self) -> None:
        """Forgets every decoded image; the hit and miss counters are kept."""
        self._entries.clear()

    def _fitted(self, loaded: LoadedImage) -> LoadedImage:
        if self.fit is None:
            return loaded
        image = self.fit(loaded.image)
        if image is loaded.image:
            return loaded
        return LoadedImage(image=image, digest=loaded.digest, decoded_size=loaded.decoded_size)

    def get_or_load(self, source: ImageInput, policy: MediaPolicy = DEFAULT_POLICY) -> LoadedImage:
        """Returns the decoded (and fitted) image, decoding only when these bytes were not seen recently.

        A PIL image is converted (and fitted) directly and not cached. Two threads that miss on the same
        bytes at once may both decode; the result is the same.

        Raises:
            ImageError: As :func:`load_image`.
        """
        if isinstance(source, Image.Image):
            return self._fitted(_from_pil(source, policy))
        data = read_image_bytes(source, policy)
        digest = hashlib.sha256(data).hexdigest()
        cached = self._entries.get(digest)
        if cached is not None:
            with self._lock:
                self.hits += 1
            _check_pixels(cached.decoded_size, policy)  # a stricter policy than the one that decoded it
            return cached
        loaded = self._fitted(_decode(data, policy, digest))
        width, height = loaded.decoded_size
        if loaded.image.size != loaded.decoded_size and width * height * 4 >= _RETURN_FREED_AFTER_BYTES:
            _return_freed_memory()
        with self._lock:
            self.misses += 1
        self._entries.put(digest, loaded, loaded.nbytes)
        return loaded
