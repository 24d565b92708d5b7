"""Image loading and the media policy: every source form, every decode path, every refusal."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import resource
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from lychee_rerank.core.errors import ImageError
from lychee_rerank.core.media import (
    DEFAULT_POLICY,
    ImageCache,
    LoadedImage,
    MediaPolicy,
    decode_image,
    load_image,
    read_image_bytes,
)

PRIVATE_OK = MediaPolicy(allow_private_urls=True)
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def sample_image() -> Image.Image:
    image = Image.new("RGB", (3, 2))
    image.putdata([RED, GREEN, BLUE, WHITE, (10, 20, 30), (200, 100, 50)])
    return image


SAMPLE_PNG = encode(sample_image())


def image_pixels(image: Image.Image) -> list[object]:
    return [image.getpixel((x, y)) for y in range(image.height) for x in range(image.width)]


def pixels(loaded: LoadedImage) -> list[object]:
    assert loaded.image.mode == "RGB"
    return image_pixels(loaded.image)


def reason_of(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(ImageError) as caught:
        call()
    return caught.value.reason, str(caught.value)


# -- a real HTTP server on loopback -------------------------------------------------------------------


@dataclass
class Server:
    base: str
    port: int
    routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = field(default_factory=dict)


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def server() -> Iterator[Server]:
    routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path)
            try:
                if route is None:
                    _send(self, 404, b"not here", Content_Length="8")
                else:
                    route(self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading on purpose

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    port = httpd.server_address[1]
    try:
        yield Server(base=f"http://127.0.0.1:{port}", port=port, routes=routes)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def serve_image(handler: BaseHTTPRequestHandler) -> None:
    _send(handler, 200, SAMPLE_PNG, Content_Type="image/png", Content_Length=str(len(SAMPLE_PNG)))


# -- every source form --------------------------------------------------------------------------------


def test_every_source_form_gives_the_same_pixels_and_digest(tmp_path: Path, server: Server) -> None:
    path = tmp_path / "sample.png"
    path.write_bytes(SAMPLE_PNG)
    server.routes["/sample.png"] = serve_image
    encoded = base64.b64encode(SAMPLE_PNG).decode()
    sources: list[object] = [
        str(path),
        path,
        path.as_uri(),
        f"{server.base}/sample.png",
        f"data:image/png;base64,{encoded}",
        encoded,
        "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)),  # MIME-wrapped base64
        SAMPLE_PNG,
    ]
    expected = image_pixels(sample_image())
    for source in sources:
        loaded = load_image(source, PRIVATE_OK)  # type: ignore[arg-type]
        assert pixels(loaded) == expected, source
        assert loaded.digest == hashlib.sha256(SAMPLE_PNG).hexdigest()
    assert pixels(load_image(sample_image())) == expected


def test_pil_image_is_converted_without_changing_the_callers_image() -> None:
    image = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    loaded = load_image(image)
    assert pixels(loaded) == [WHITE, WHITE]
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0)) == (255, 0, 0, 0)


def test_pil_palette_images_with_different_palettes_get_different_digests() -> None:
    first = Image.new("P", (2, 2), 0)
    first.putpalette([255, 0, 0] * 256)
    second = first.copy()
    second.putpalette([0, 0, 255] * 256)
    assert load_image(first).digest != load_image(second).digest
    assert load_image(first).digest == load_image(first.copy()).digest


def test_read_image_bytes_returns_the_encoded_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(SAMPLE_PNG)
    assert read_image_bytes(path) == SAMPLE_PNG
    assert read_image_bytes(base64.b64encode(SAMPLE_PNG).decode()) == SAMPLE_PNG


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("ftp://example.com/a.png", "invalid_source"),
        ("gopher://example.com/a.png", "invalid_source"),
        ("data:text/plain;base64,aGVsbG8=", "invalid_source"),
        ("data:image/png,not-base64", "invalid_source"),
        ("data:image/png;base64,@@@@", "invalid_source"),
        ("data:image/png;base64", "invalid_source"),
        ("file://fileserver/share/a.png", "invalid_source"),
        ("http://user:pw@example.com:notaport/a.png", "invalid_source"),
        ("hello, this is not an image!", "invalid_source"),
        ("/no/such/dir/picture.png", "not_found"),
        ("missing-picture.jpg", "not_found"),
    ],
)
def test_unusable_strings_are_refused_with_a_reason(source: str, reason: str) -> None:
    got, message = reason_of(lambda: load_image(source))
    assert got == reason
    assert message[0].isupper()
    assert message.endswith(".")


def test_unrecognised_string_message_lists_the_accepted_forms() -> None:
    _, message = reason_of(lambda: load_image("hello, this is not an image!"))
    assert "http(s) URL" in message
    assert "data:image" in message
    assert "base64" in message


def test_missing_path_says_the_file_does_not_exist() -> None:
    _, message = reason_of(lambda: load_image("/no/such/dir/picture.png"))
    assert "does not exist" in message


# -- decoding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (2, 1), (0, 0, 0, 0)),
        Image.new("LA", (2, 1), (0, 0)),
    ],
    ids=["RGBA", "LA"],
)
def test_transparent_pixels_become_white(image: Image.Image) -> None:
    image.putpixel((1, 0), (255, 0, 0, 255) if image.mode == "RGBA" else (0, 255))
    loaded = decode_image(encode(image))
    assert loaded.image.getpixel((0, 0)) == WHITE
    assert loaded.image.getpixel((1, 0)) == (RED if image.mode == "RGBA" else (0, 0, 0))


def test_palette_transparency_becomes_white() -> None:
    image = Image.new("P", (2, 1), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    image.putpixel((1, 0), 1)
    loaded = decode_image(encode(image, transparency=0))
    assert pixels(loaded) == [WHITE, RED]


def test_cmyk_becomes_rgb() -> None:
    loaded = decode_image(encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG", quality=100))
    red, green, blue = loaded.image.getpixel((0, 0))  # type: ignore[misc]
    assert red > 240
    assert green < 15
    assert blue < 15


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    image = Image.new("I;16", (3, 1))
    image.putdata([0, 32896, 65535])
    data = encode(image)
    # The file holds 16-bit samples; Pillow before 10.3 opens such a PNG as 32-bit "I", later ones as "I;16".
    assert Image.open(io.BytesIO(data)).mode in ("I", "I;16")
    assert pixels(decode_image(data)) == [(0, 0, 0), (128, 128, 128), WHITE]


@pytest.mark.parametrize(("orientation", "top", "bottom"), [(6, RED, BLUE), (8, BLUE, RED)])
def test_exif_orientation_is_applied(orientation: int, top: tuple[int, ...], bottom: tuple[int, ...]) -> None:
    image = Image.new("RGB", (2, 1))
    image.putdata([RED, BLUE])
    exif = Image.Exif()
    exif[0x0112] = orientation
    loaded = decode_image(encode(image, exif=exif))
    assert loaded.image.size == (1, 2)
    assert pixels(loaded) == [top, bottom]


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (2, 2), RED), Image.new("RGB", (2, 2), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    assert set(pixels(decode_image(data))) == {RED}


def test_one_pixel_image_is_valid() -> None:
    assert pixels(decode_image(encode(Image.new("RGB", (1, 1), GREEN)))) == [GREEN]


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01garbage\xff" * 10,
        SAMPLE_PNG[: len(SAMPLE_PNG) // 2],
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj",
    ],
    ids=["corrupt", "truncated-png", "pdf"],
)
def test_bytes_that_are_not_an_image_are_undecodable(data: bytes) -> None:
    reason, message = reason_of(lambda: decode_image(data))
    assert reason == "undecodable"
    assert "not a supported image" in message
    assert data[:4].hex(" ") in message


def test_byte_cap_refuses_before_decoding() -> None:
    # Not an image at all: only a check made before decoding can answer too_many_bytes.
    reason, message = reason_of(lambda: decode_image(b"x" * 100, MediaPolicy(max_image_bytes=99)))
    assert reason == "too_many_bytes"
    assert "99 bytes" in message
    assert "max_image_bytes" in message
    assert reason_of(lambda: load_image("eHh4eHh4eHh4eHh4", MediaPolicy(max_image_bytes=8)))[0] == "too_many_bytes"


def test_pixel_cap_is_inclusive() -> None:
    data = encode(Image.new("L", (100, 100)))
    assert decode_image(data, MediaPolicy(max_image_pixels=10_000)).image.size == (100, 100)
    assert reason_of(lambda: decode_image(data, MediaPolicy(max_image_pixels=9_999)))[0] == "too_many_pixels"


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def one_bit_png(side: int) -> bytes:
    """A side x side one-bit PNG of one colour, written row by row so the pixels never exist in memory."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte, then 8 pixels a byte
    compressed = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", compressed) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """About 50 kB encoded, 400 MB once decoded."""
    return one_bit_png(20_000)


def test_decompression_bomb_is_refused_quickly_without_allocating_pixels(bomb_png: bytes) -> None:
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    reason, message = reason_of(lambda: decode_image(bomb_png, MediaPolicy(max_image_pixels=10_000_000)))
    assert reason == "too_many_pixels"
    assert "10000000" in message
    assert "smaller image" in message
    assert time.perf_counter() - started < 5  # the memory check below is the sharp one
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 100 * 1024  # decoding would take 400 MB


def test_pixel_cap_is_checked_from_the_header_and_names_the_size() -> None:
    # Under Pillow's own limits, so only our check can refuse it; decoding would take 16 MB.
    reason, message = reason_of(lambda: decode_image(one_bit_png(4000), MediaPolicy(max_image_pixels=10_000_000)))
    assert reason == "too_many_pixels"
    assert "4000x4000" in message
    assert "10000000" in message
    assert "max_image_pixels" in message


def test_pillow_bomb_guard_is_reported_as_too_many_pixels(bomb_png: bytes) -> None:
    # Our cap is above Pillow's own, so Pillow's DecompressionBombError is what stops it.
    reason, _ = reason_of(lambda: decode_image(bomb_png, MediaPolicy(max_image_pixels=10**9)))
    assert reason == "too_many_pixels"
    assert Image.MAX_IMAGE_PIXELS != 10**9


# -- local paths and roots ----------------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "in.png").write_bytes(SAMPLE_PNG)
    (outside / "out.png").write_bytes(SAMPLE_PNG)
    return allowed, outside


def test_path_under_an_allowed_root_is_read(roots: tuple[Path, Path]) -> None:
    allowed, _ = roots
    policy = MediaPolicy(local_roots=(str(allowed),))
    for source in (str(allowed / "in.png"), allowed / "in.png", (allowed / "in.png").as_uri()):
        assert load_image(source, policy).digest == hashlib.sha256(SAMPLE_PNG).hexdigest()


def test_paths_escaping_the_roots_are_forbidden(roots: tuple[Path, Path]) -> None:
    allowed, outside = roots
    (allowed / "link.png").symlink_to(outside / "out.png")
    policy = MediaPolicy(local_roots=(str(allowed),))
    for source in (
        str(outside / "out.png"),
        allowed / "link.png",
        f"{allowed}/../outside/out.png",
        (outside / "out.png").as_uri(),
        str(outside / "does-not-exist.png"),  # forbidden, not not_found: existence outside is not revealed
    ):
        reason, message = reason_of(lambda source=source: load_image(source, policy))  # type: ignore[misc]
        assert reason == "forbidden", source
        assert str(allowed) in message
        assert "local_roots" in message


def test_empty_roots_refuse_every_local_path(roots: tuple[Path, Path]) -> None:
    allowed, _ = roots
    policy = MediaPolicy.for_service()
    for source in (str(allowed / "in.png"), allowed / "in.png", (allowed / "in.png").as_uri()):
        reason, message = reason_of(lambda source=source: load_image(source, policy))  # type: ignore[misc]
        assert reason == "forbidden"
        assert "MediaPolicy(local_roots=" in message  # the library names its own setting


def test_local_file_over_the_cap_is_refused_quickly(tmp_path: Path) -> None:
    huge = tmp_path / "huge.png"
    with huge.open("wb") as file:
        file.truncate(4 * 1024**3)  # sparse: reading it would take seconds and 4 GB
    started = time.perf_counter()
    assert reason_of(lambda: load_image(huge))[0] == "too_many_bytes"
    assert time.perf_counter() - started < 1.5


def test_restrictive_policy_does_not_reveal_which_files_exist_outside_the_roots(
    roots: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed, outside = roots
    (outside / "notes").write_bytes(SAMPLE_PNG)
    monkeypatch.chdir(outside)
    policy = MediaPolicy(local_roots=(str(allowed),))
    assert reason_of(lambda: load_image("notes", policy))[0] == "invalid_source"
    assert reason_of(lambda: load_image("absent", policy))[0] == "invalid_source"
    assert load_image("notes").image.size == (3, 2)  # the permissive default does read it


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    assert reason_of(lambda: load_image(tmp_path))[0] == "invalid_source"


# -- URLs ---------------------------------------------------------------------------------------------


def test_loopback_url_is_forbidden_by_default_and_allowed_when_private_urls_are(server: Server) -> None:
    server.routes["/a.png"] = serve_image
    reason, message = reason_of(lambda: load_image(f"{server.base}/a.png"))
    assert reason == "forbidden"
    assert "loopback" in message
    assert "allow_private_urls" in message
    assert pixels(load_image(f"{server.base}/a.png", PRIVATE_OK)) == image_pixels(sample_image())
    assert load_image(f"http://localhost:{server.port}/a.png", PRIVATE_OK).image.size == (3, 2)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:{port}/a.png",
        "http://2130706433:{port}/a.png",
        "http://[::1]:{port}/a.png",
        "http://[::ffff:127.0.0.1]:{port}/a.png",
        "http://0.0.0.0:{port}/a.png",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/a.png",
        "http://192.168.0.1/a.png",
        "http://100.64.0.1/a.png",
        "http://224.0.0.1/a.png",
        "https://[fe80::1]/a.png",
        "https://[fd00::1]/a.png",
        "http://[2002:a01:203::1]/a.png",  # 6to4 wrapping of 10.1.2.3
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",  # NAT64 wrapping of 169.254.169.254
    ],
)
def test_non_public_addresses_are_refused_without_connecting(server: Server, url: str) -> None:
    requests_seen: list[str] = []

    def record(handler: BaseHTTPRequestHandler) -> None:
        requests_seen.append(handler.path)
        serve_image(handler)

    server.routes["/a.png"] = record
    started = time.perf_counter()
    reason, _ = reason_of(lambda: load_image(url.format(port=server.port), MediaPolicy(fetch_timeout_s=30)))
    assert reason == "forbidden"
    assert requests_seen == []  # the loopback forms never reached the local server
    # An attempt to reach 10.1.2.3 or the metadata address would hang until the 30 s fetch timeout; the
    # bound is far from both that and the refusal's real cost, so a loaded machine cannot make it flaky.
    assert time.perf_counter() - started < 15


def test_urls_are_refused_when_the_policy_disallows_them(server: Server) -> None:
    server.routes["/a.png"] = serve_image
    policy = MediaPolicy(allow_urls=False, allow_private_urls=True)
    reason, message = reason_of(lambda: load_image(f"{server.base}/a.png", policy))
    assert reason == "forbidden"
    assert "allow_urls" in message


def _redirect_to(location: str) -> Callable[[BaseHTTPRequestHandler], None]:
    return lambda handler: _send(handler, 302, Location=location, Content_Length="0")


def test_redirects_are_followed_up_to_the_limit(server: Server) -> None:
    server.routes["/a.png"] = serve_image
    for hop in range(1, 5):
        server.routes[f"/r{hop}"] = _redirect_to(f"/r{hop - 1}" if hop > 1 else f"{server.base}/a.png")
    policy = MediaPolicy(allow_private_urls=True, max_redirects=3)
    assert load_image(f"{server.base}/r3", policy).image.size == (3, 2)
    reason, message = reason_of(lambda: load_image(f"{server.base}/r4", policy))
    assert reason == "fetch_failed"
    assert "more than 3 redirects" in message


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/a.png", "gopher://x/"])
def test_redirect_to_another_scheme_is_refused(server: Server, location: str) -> None:
    server.routes["/jump"] = _redirect_to(location)
    reason, message = reason_of(lambda: load_image(f"{server.base}/jump", PRIVATE_OK))
    assert reason == "forbidden"
    assert "root:" not in message


def test_http_error_status_is_fetch_failed_and_hides_credentials(server: Server) -> None:
    url = f"http://alice:hunter2@127.0.0.1:{server.port}/missing.png"
    reason, message = reason_of(lambda: load_image(url, PRIVATE_OK))
    assert reason == "fetch_failed"
    assert "404" in message
    assert "hunter2" not in message
    assert "alice" not in message
    assert "hunter2" not in reason_of(lambda: load_image(url))[1]


def test_body_over_the_cap_is_refused_from_content_length(server: Server) -> None:
    def liar(handler: BaseHTTPRequestHandler) -> None:
        _send(handler, 200, b"\x89PNG", Content_Length=str(10**9))
        time.sleep(2)  # if the client waited for the body it would time out instead

    server.routes["/big"] = liar
    policy = MediaPolicy(allow_private_urls=True, max_image_bytes=1000, fetch_timeout_s=1.5)
    started = time.perf_counter()
    assert reason_of(lambda: load_image(f"{server.base}/big", policy))[0] == "too_many_bytes"
    assert time.perf_counter() - started < 1


def test_body_over_the_cap_without_content_length_stops_streaming(server: Server) -> None:
    def endless(handler: BaseHTTPRequestHandler) -> None:
        _send(handler, 200, b"\x89PNG" + bytes(5000))  # no Content-Length: the body ends at close
        handler.wfile.flush()
        time.sleep(2)

    server.routes["/endless"] = endless
    policy = MediaPolicy(allow_private_urls=True, max_image_bytes=1000, fetch_timeout_s=1.5)
    started = time.perf_counter()
    reason, message = reason_of(lambda: load_image(f"{server.base}/endless", policy))
    assert reason == "too_many_bytes"
    assert "1000 bytes" in message
    assert time.perf_counter() - started < 1


def test_slow_server_times_out_as_fetch_failed(server: Server) -> None:
    def slow(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(1)
        serve_image(handler)

    server.routes["/slow.png"] = slow
    policy = MediaPolicy(allow_private_urls=True, fetch_timeout_s=0.2)
    started = time.perf_counter()
    reason, message = reason_of(lambda: load_image(f"{server.base}/slow.png", policy))
    assert reason == "fetch_failed"
    assert "0.2 s" in message
    assert time.perf_counter() - started < 0.9


def test_unreachable_port_is_fetch_failed(server: Server) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]
    assert reason_of(lambda: load_image(f"http://127.0.0.1:{port}/a.png", PRIVATE_OK))[0] == "fetch_failed"


# -- cache, policy, errors ----------------------------------------------------------------------------


def test_cache_decodes_identical_bytes_once(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(SAMPLE_PNG)
    cache = ImageCache()
    first = cache.get_or_load(SAMPLE_PNG)
    second = cache.get_or_load(str(path))  # same content by another route
    third = cache.get_or_load(base64.b64encode(SAMPLE_PNG).decode())
    assert (cache.misses, cache.hits, len(cache)) == (1, 2, 1)
    assert first is second is third


def test_cache_evicts_the_least_recently_used() -> None:
    images = [encode(Image.new("RGB", (1, 1), (value, 0, 0))) for value in range(3)]
    cache = ImageCache(max_bytes=2 * 4)  # two 1x1 RGB images, 4 bytes of pixels each
    cache.get_or_load(images[0])
    cache.get_or_load(images[1])
    cache.get_or_load(images[0])  # now images[1] is the oldest
    cache.get_or_load(images[2])
    assert len(cache) == 2
    assert cache.misses == 3
    cache.get_or_load(images[0])
    assert cache.hits == 2
    cache.get_or_load(images[1])
    assert cache.misses == 4
    cache.clear()
    assert len(cache) == 0


def test_cache_is_consistent_under_threads() -> None:
    cache = ImageCache()
    threads = [threading.Thread(target=lambda: [cache.get_or_load(SAMPLE_PNG) for _ in range(20)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 1
    assert cache.hits + cache.misses == 160


def test_cache_applies_a_stricter_policy_on_a_hit() -> None:
    cache = ImageCache()
    cache.get_or_load(SAMPLE_PNG)
    assert reason_of(lambda: cache.get_or_load(SAMPLE_PNG, MediaPolicy(max_image_pixels=5)))[0] == "too_many_pixels"


def test_cache_converts_pil_images_without_keeping_them() -> None:
    cache = ImageCache()
    assert pixels(cache.get_or_load(sample_image())) == image_pixels(sample_image())
    assert len(cache) == 0


@pytest.mark.parametrize(
    "options",
    [
        {"max_image_bytes": 0},
        {"max_image_pixels": -1},
        {"fetch_timeout_s": 0},
        {"max_redirects": -1},
        {"local_roots": "/data"},
        {"local_roots": ("",)},
    ],
)
def test_policy_refuses_nonsense_settings(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="MediaPolicy"):
        MediaPolicy(**options)  # type: ignore[arg-type]


def test_service_policy_is_strict_and_default_is_permissive_for_paths() -> None:
    service = MediaPolicy.for_service()
    assert service.allow_urls
    assert not service.allow_private_urls
    assert service.local_roots == ()
    assert DEFAULT_POLICY.local_roots is None
    assert not DEFAULT_POLICY.allow_private_urls
    assert MediaPolicy(local_roots=[Path("/data")]).local_roots == ("/data",)  # type: ignore[arg-type]


def test_located_error_names_the_document() -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(b"%PDF-1.4")
    located = caught.value.located("document 2")
    assert str(located).startswith("document 2: The bytes are not a supported image")
    assert located.reason == "undecodable"
    assert isinstance(located.__cause__, Exception)


def test_cache_budget_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        ImageCache(max_bytes=-1)


def test_unknown_source_type_is_invalid() -> None:
    assert reason_of(lambda: load_image(12345))[0] == "invalid_source"  # type: ignore[arg-type]


def test_environment_proxy_is_not_used(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    server.routes["/a.png"] = serve_image
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    assert load_image(f"{server.base}/a.png", PRIVATE_OK).image.size == (3, 2)
    assert os.environ["HTTP_PROXY"]


def test_local_images_load_without_httpx_and_a_url_says_what_is_missing() -> None:
    """A bare GPU box may have transformers without httpx: local images work, a URL is a clear ImageError."""
    import subprocess
    import sys

    probe = """
import io, sys
sys.modules["httpx"] = None
from PIL import Image
from lychee_rerank.core.errors import ImageError
from lychee_rerank.core.media import MediaPolicy, load_image
buffer = io.BytesIO(); Image.new("RGB", (3, 2), (9, 9, 9)).save(buffer, "PNG")
assert load_image(buffer.getvalue()).image.size == (3, 2)
try:
    load_image("https://example.com/a.png", MediaPolicy())
except ImageError as error:
    assert error.reason == "fetch_failed" and "httpx" in str(error), error
else:
    raise AssertionError("a URL was fetched without httpx")
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
