"""Pictures drawn with PIL for the demo corpus and the examples: products, charts and machine parts.

Everything is deterministic (a drawing depends only on its arguments), so the demo's corpus, its
first-stage scores and the tiny model's scores are the same on every machine. The pictures are simple
but honest: a caption that says "navy shirt" sits under a drawing of a navy shirt, so a real
vision-language reranker can use the image as well as the words.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "white": (245, 245, 240),
    "black": (30, 30, 32),
    "navy": (28, 42, 92),
    "blue": (60, 120, 210),
    "red": (200, 35, 45),
    "green": (50, 140, 70),
    "beige": (222, 204, 170),
    "yellow": (240, 200, 40),
    "pink": (236, 150, 180),
    "grey": (140, 140, 145),
    "brown": (120, 80, 45),
}
"""Colour names used in captions, and the RGB they are drawn with."""

PRODUCT_KINDS = ("shirt", "dress", "shoes", "bag", "mug")
CHART_KINDS = ("bar", "line", "scatter")
DEFECT_KINDS = ("scratch", "crack", "dent", "corrosion", "porosity", "none")

_BACKDROP: RGB = (214, 218, 224)  # a light studio grey, so white products stay visible


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font scales when FreeType is available; the bitmap fallback still draws text.
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _outline(colour: RGB) -> RGB:
    # Dark garments get a light edge and light ones a dark edge, so the silhouette always reads.
    return (200, 200, 200) if sum(colour) < 200 else (70, 70, 70)


def draw_product(kind: str, colour: str, size: int = 224, variant: int = 0) -> Image.Image:
    """A studio-style drawing of one product on a grey backdrop.

    Args:
        kind: One of :data:`PRODUCT_KINDS`.
        colour: A key of :data:`COLOURS`.
        size: Width and height in pixels.
        variant: Shifts and tilts the drawing a little, so two photos of the same product differ.

    Example:
        >>> draw_product("shirt", "navy").size
        (224, 224)
    """
    if kind not in PRODUCT_KINDS:
        raise ValueError(f"unknown product kind {kind!r}; choose one of {PRODUCT_KINDS}")
    fill = COLOURS[colour]
    edge = _outline(fill)
    rng = random.Random(f"{kind}-{colour}-{variant}")
    image = Image.new("RGB", (size, size), _BACKDROP)
    draw = ImageDraw.Draw(image)
    s = size / 224
    dx, dy = rng.randint(-8, 8) * s, rng.randint(-6, 6) * s

    def pts(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x * s + dx, y * s + dy) for x, y in points]

    if kind == "shirt":
        body = [(62, 40), (92, 30), (112, 44), (132, 30), (162, 40), (200, 80), (178, 102), (160, 88), (160, 196)]
        body += [(64, 196), (64, 88), (46, 102), (24, 80)]
        draw.polygon(pts(body), fill=fill, outline=edge, width=2)
        draw.polygon(pts([(92, 30), (112, 58), (132, 30), (112, 44)]), fill=edge)  # collar
        for y in (70, 100, 130, 160):
            cx, cy = pts([(112, y)])[0]
            draw.ellipse([cx - 3 * s, cy - 3 * s, cx + 3 * s, cy + 3 * s], fill=edge)
    elif kind == "dress":
        draw.polygon(pts([(86, 30), (138, 30), (146, 90), (196, 204), (28, 204), (78, 90)]), fill=fill, outline=edge)
        draw.line(pts([(78, 90), (146, 90)]), fill=edge, width=max(2, int(3 * s)))  # waist seam
        draw.line(pts([(92, 30), (96, 12)]), fill=edge, width=2)
        draw.line(pts([(132, 30), (128, 12)]), fill=edge, width=2)
    elif kind == "shoes":
        for offset in (0, 64):  # a pair, side view, the second a little behind and lower
            upper = [(24, 60), (30, 20), (64, 16), (96, 44), (168, 58), (196, 74), (198, 88), (24, 88)]
            draw.polygon(pts([(x + offset * 0.1, y + offset) for x, y in upper]), fill=fill, outline=edge)
            sole = pts([(22 + offset * 0.1, 88 + offset), (200 + offset * 0.1, 98 + offset)])
            draw.rectangle(sole, fill=(235, 235, 235), outline=edge)
            lace = pts([(60 + offset * 0.1, 30 + offset), (92 + offset * 0.1, 50 + offset)])
            draw.line(lace, fill=edge, width=2)
    elif kind == "bag":
        draw.arc([pts([(70, 20)])[0], pts([(154, 110)])[0]], 180, 360, fill=edge, width=max(3, int(6 * s)))
        draw.rounded_rectangle([pts([(40, 64)])[0], pts([(184, 196)])[0]], radius=int(14 * s), fill=fill, outline=edge)
        draw.rectangle([pts([(100, 64)])[0], pts([(124, 100)])[0]], fill=edge)  # clasp
    else:  # mug
        draw.ellipse([pts([(140, 80)])[0], pts([(204, 160)])[0]], outline=fill, width=max(6, int(12 * s)))
        draw.rounded_rectangle([pts([(40, 50)])[0], pts([(160, 190)])[0]], radius=int(10 * s), fill=fill, outline=edge)
        draw.ellipse([pts([(40, 40)])[0], pts([(160, 62)])[0]], fill=_outline(fill), outline=edge)
    return image


def draw_chart(
    kind: str,
    title: str,
    x_label: str,
    y_label: str,
    *,
    seed: int = 0,
    series: int = 2,
    rising: bool = True,
    width: int = 320,
    height: int = 240,
) -> Image.Image:
    """A figure in the style of a paper or a report: axes, labels, a title and one to three series.

    Args:
        kind: ``"bar"``, ``"line"`` or ``"scatter"``.
        title: Drawn above the plot.
        x_label: Drawn under the x axis.
        y_label: Drawn beside the y axis.
        seed: Picks the data.
        series: How many series (lines, bar groups, point clouds).
        rising: Whether the data trends upwards (accuracy) or downwards (loss).

    Example:
        >>> draw_chart("line", "Accuracy vs. steps", "steps", "accuracy").size
        (320, 240)
    """
    if kind not in CHART_KINDS:
        raise ValueError(f"unknown chart kind {kind!r}; choose one of {CHART_KINDS}")
    rng = random.Random(f"{kind}-{title}-{seed}")
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 48, 30, width - 14, height - 40
    draw.text((width / 2, 6), title, fill=(0, 0, 0), font=_font(14), anchor="mt")
    draw.text(((left + right) / 2, height - 6), x_label, fill=(0, 0, 0), font=_font(12), anchor="mb")
    label = Image.new("RGBA", (bottom - top, 16), (255, 255, 255, 0))
    ImageDraw.Draw(label).text(((bottom - top) / 2, 8), y_label, fill=(0, 0, 0), font=_font(12), anchor="mm")
    image.paste(label.rotate(90, expand=True), (4, top), label.rotate(90, expand=True))
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=(0, 0, 0), width=2)
    for tick in range(1, 5):  # light grid, as plotting libraries draw by default
        y = bottom - tick * (bottom - top) / 5
        draw.line([(left + 1, y), (right, y)], fill=(225, 225, 225))
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]
    count = 8
    for index in range(min(max(series, 1), 3)):
        colour = palette[index]
        level = rng.uniform(0.15, 0.35)
        gain = rng.uniform(0.3, 0.55) * (1 if rising else -1)
        if not rising:
            level = 1 - level
        values = [
            min(0.95, max(0.05, level + gain * (1 - math.exp(-3 * i / count)) + rng.uniform(-0.04, 0.04)))
            for i in range(count)
        ]
        xs = [left + (i + 0.5) * (right - left) / count for i in range(count)]
        ys = [bottom - v * (bottom - top) for v in values]
        if kind == "line":
            draw.line(list(zip(xs, ys, strict=True)), fill=colour, width=2)
        elif kind == "scatter":
            for x, y in zip(xs, ys, strict=True):
                for _ in range(3):
                    px, py = x + rng.uniform(-10, 10), y + rng.uniform(-12, 12)
                    draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        else:
            bar = (right - left) / count / (series + 1)
            for x, y in zip(xs, ys, strict=True):
                x0 = x - (right - left) / count / 2 + bar * (index + 0.5)
                draw.rectangle([x0, y, x0 + bar, bottom - 1], fill=colour)
    return image


def draw_part(defect: str, *, seed: int = 0, size: int = 224) -> Image.Image:
    """A photo-like top view of a machined ring (a bearing race) with one kind of surface defect.

    Args:
        defect: One of :data:`DEFECT_KINDS`; ``"none"`` draws a good part.
        seed: Where the defect sits and how it is shaped.
        size: Width and height in pixels.

    Example:
        >>> draw_part("crack", seed=3).size
        (224, 224)
    """
    if defect not in DEFECT_KINDS:
        raise ValueError(f"unknown defect {defect!r}; choose one of {DEFECT_KINDS}")
    rng = random.Random(f"{defect}-{seed}")
    image = Image.new("RGB", (size, size), (48, 52, 58))  # a dark inspection table
    draw = ImageDraw.Draw(image)
    c, outer, inner = size / 2, size * 0.44, size * 0.22
    for step in range(12):  # a radial gradient reads as brushed metal
        r = outer - step * (outer - inner) / 12
        shade = 150 + int(60 * math.sin(step / 12 * math.pi))
        draw.ellipse([c - r, c - r, c + r, c + r], fill=(shade, shade, shade + 6))
    draw.ellipse([c - inner, c - inner, c + inner, c + inner], fill=(48, 52, 58))
    angle = rng.uniform(0, 2 * math.pi)
    radius = rng.uniform(inner + 10, outer - 12)
    x, y = c + radius * math.cos(angle), c + radius * math.sin(angle)
    if defect == "scratch":
        length = rng.uniform(40, 70)
        tilt = angle + math.pi / 2 + rng.uniform(-0.3, 0.3)
        end = (x + length * math.cos(tilt), y + length * math.sin(tilt))
        draw.line([(x, y), end], fill=(235, 235, 240), width=2)
        draw.line([(x + 1, y + 2), (end[0] + 1, end[1] + 2)], fill=(90, 90, 95), width=1)
    elif defect == "crack":
        points = [(c + outer * math.cos(angle), c + outer * math.sin(angle))]
        for step in range(1, 7):
            r = outer - step * (outer - inner) / 7
            wobble = angle + rng.uniform(-0.08, 0.08)
            points.append((c + r * math.cos(wobble), c + r * math.sin(wobble)))
        draw.line(points, fill=(20, 20, 22), width=2)
    elif defect == "dent":
        r = rng.uniform(9, 14)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(105, 105, 110))
        draw.arc([x - r, y - r, x + r, y + r], 200, 340, fill=(230, 230, 235), width=2)
    elif defect == "corrosion":
        for _ in range(14):
            px, py, r = x + rng.uniform(-14, 14), y + rng.uniform(-14, 14), rng.uniform(3, 8)
            draw.ellipse([px - r, py - r, px + r, py + r], fill=(150 + rng.randint(0, 40), 80, 30))
    elif defect == "porosity":
        for _ in range(9):
            px, py, r = x + rng.uniform(-18, 18), y + rng.uniform(-18, 18), rng.uniform(1.5, 3.5)
            draw.ellipse([px - r, py - r, px + r, py + r], fill=(25, 25, 28))
    return image
