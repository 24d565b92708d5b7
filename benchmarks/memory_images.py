"""Resident memory of ``lychee-rerank serve`` while distinct huge images stream through it.

Starts the service in a subprocess on loopback, sends N requests with one distinct W x H image each
(a PNG of a solid colour with one distinct pixel: tens of kilobytes on the wire, W*H*4 bytes once
decoded), and reads the server's ``VmRSS`` from ``/proc/PID/status`` after each answer. The figure is
the growth over its level after the first such request; the target is +500 MB for 50 images of
6000x6000 (each 144 MB of pixels at full resolution).

Examples:
    python benchmarks/memory_images.py                      # 50 images of 6000x6000 on a fresh tiny model
    python benchmarks/memory_images.py --images 10 --size 3000
    python benchmarks/memory_images.py --server-arg=--image-cache-bytes=0
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _service import served

MIB = 1024 * 1024


@dataclass
class MemoryRun:
    """What one run measured (MiB unless named otherwise)."""

    images: int
    size: int
    request_bytes: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    rss_start_mib: float = 0.0
    rss_mib: list[float] = field(default_factory=list)  # after each request
    peak_rss_mib: float = 0.0  # VmHWM at the end

    @property
    def growth_after_first_mib(self) -> float:
        """The largest RSS after any request minus the RSS after the first."""
        return max(self.rss_mib) - self.rss_mib[0]


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    """A memory figure of process ``pid`` from ``/proc/PID/status``, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no {key}")


def solid_png(size: int, number: int) -> bytes:
    """A size x size PNG of one colour with one pixel that differs, distinct for each ``number``."""
    image = Image.new("RGB", (size, size), ((number * 53) % 256, (number * 97) % 256, (number * 31) % 256))
    image.putpixel((number % size, number // size % size), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run(url: str, pid: int, *, images: int, size: int, timeout_s: float = 600.0) -> MemoryRun:
    """Sends ``images`` requests of one distinct image each and records the server's RSS after each."""
    result = MemoryRun(images=images, size=size, rss_start_mib=rss_mib(pid))
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        for number in range(images):
            image = "data:image/png;base64," + base64.b64encode(solid_png(size, number)).decode()
            body = json.dumps({"query": "a photo", "documents": [{"text": f"photo {number}", "image": image}]})
            started = time.perf_counter()
            answer = client.post("/v1/rerank", content=body, headers={"Content-Type": "application/json"})
            result.seconds.append(time.perf_counter() - started)
            if answer.status_code != 200:
                raise RuntimeError(f"request {number} answered {answer.status_code}: {answer.text[:300]}")
            result.request_bytes.append(len(body))
            result.rss_mib.append(rss_mib(pid))
            print(
                f"request {number + 1:3d}/{images}: {len(body) / 1024:7.1f} KiB sent, "
                f"{result.seconds[-1]:5.2f} s, server RSS {result.rss_mib[-1]:7.1f} MiB",
                file=sys.stderr,
            )
    result.peak_rss_mib = rss_mib(pid, "VmHWM")
    return result


def report(result: MemoryRun, *, target_mib: float, label: str) -> str:
    """The figures as Markdown lines."""
    full_resolution = result.images * result.size * result.size * 4 / MIB
    ok = "within" if result.growth_after_first_mib <= target_mib else "OVER"
    return "\n".join(
        [
            f"### {label}: {result.images} distinct {result.size}x{result.size} images, one per request",
            "",
            "| figure | value |",
            "| --- | --- |",
            f"| request body, mean | {sum(result.request_bytes) / len(result.request_bytes) / 1024:.1f} KiB |",
            f"| seconds per request, median | {sorted(result.seconds)[len(result.seconds) // 2]:.2f} s |",
            f"| server RSS at start | {result.rss_start_mib:.0f} MiB |",
            f"| server RSS after the first request | {result.rss_mib[0]:.0f} MiB |",
            f"| server RSS after the last request | {result.rss_mib[-1]:.0f} MiB |",
            f"| largest RSS after any request | {max(result.rss_mib):.0f} MiB |",
            f"| growth over the level after the first request | {result.growth_after_first_mib:+.0f} MiB "
            f"({ok} the +{target_mib:.0f} MiB target) |",
            f"| server peak RSS (VmHWM) | {result.peak_rss_mib:.0f} MiB |",
            f"| pixels of these images at full resolution (RGB, 4 bytes) | {full_resolution:.0f} MiB |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the measurement and prints its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50, help="distinct images, one per request (50)")
    parser.add_argument("--size", type=int, default=6000, help="width and height of each image (6000)")
    parser.add_argument("--model", default=None, help="a checkpoint folder; default: a fresh tiny checkpoint")
    parser.add_argument("--target-mib", type=float, default=500 * 1e6 / MIB, help="allowed growth (500 MB)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for serve (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.images < 1 or args.size < 1:
        parser.error("--images and --size must be positive")
    with tempfile.TemporaryDirectory() as folder:
        model = args.model
        if model is None:
            from lychee_rerank.core.testing.checkpoint import write_tiny_checkpoint

            model = str(write_tiny_checkpoint(Path(folder) / "tiny"))
        extra = ["--torch-threads", "1", *args.server_arg]
        with served(model, extra) as (url, pid):
            result = run(url, pid, images=args.images, size=args.size)
    label = "serve " + " ".join(["--model", args.model or "tiny", *extra])
    print(report(result, target_mib=args.target_mib, label=label))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (CPUs: {os.cpu_count()})")
    if args.json:
        args.json.write_text(json.dumps({**asdict(result), "growth_after_first_mib": result.growth_after_first_mib}))
    return 0 if result.growth_after_first_mib <= args.target_mib else 1


if __name__ == "__main__":
    sys.exit(main())
