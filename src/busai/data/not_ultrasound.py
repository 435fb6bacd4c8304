"""Images that are not B-mode ultrasound scans, drawn here so no download is needed: what the
input gate (``busai.input_check``) must flag. Used by its tests and ``benchmarks/input_gate.py``."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def bar_chart(seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A bar chart: white background, axes, coloured bars, labels."""
    rng = np.random.default_rng(seed)
    height, width = size
    picture = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    draw.line((60, 20, 60, height - 50), fill=(0, 0, 0), width=2)
    draw.line((60, height - 50, width - 20, height - 50), fill=(0, 0, 0), width=2)
    bars = int(rng.integers(4, 9))
    step = (width - 100) // bars
    for i in range(bars):
        top = int(rng.integers(40, height - 80))
        colour = tuple(int(v) for v in rng.integers(0, 200, 3))
        draw.rectangle((70 + i * step, top, 70 + i * step + step * 2 // 3, height - 51), fill=colour)
        draw.text((70 + i * step, height - 40), f"Q{i + 1}", fill=(0, 0, 0), font=ImageFont.load_default(size=14))
    return np.asarray(picture)


def grey_chart(seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A line plot in grey on a dark background (a chart styled like a scanner screen)."""
    rng = np.random.default_rng(seed)
    height, width = size
    picture = Image.new("RGB", (width, height), (20, 20, 20))
    draw = ImageDraw.Draw(picture)
    values = np.cumsum(rng.normal(0, 12, 40)) + height / 2
    points = [(40 + i * (width - 80) / 39, float(np.clip(v, 20, height - 20))) for i, v in enumerate(values)]
    draw.line(points, fill=(200, 200, 200), width=2)
    for y in range(40, height, 60):
        draw.line((40, y, width - 40, y), fill=(70, 70, 70), width=1)
    return np.asarray(picture)


def photo(seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A colour 'photograph': smooth coloured shapes under a sky-like gradient, with sensor noise."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[:height, :width] / max(height, width)
    image = np.stack([90 + 120 * yy, 140 + 80 * yy, 230 - 60 * yy], axis=-1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 1.0), rng.uniform(0.05, 0.2)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        image[blob] = rng.uniform(30, 255, 3)
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def document(seed: int = 0, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """A page of black text on white (a scanned report)."""
    rng = np.random.default_rng(seed)
    height, width = size
    picture = Image.new("RGB", (width, height), (250, 250, 248))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=14)
    for y in range(30, height - 30, 22):
        words = " ".join("".join(chr(97 + int(c)) for c in rng.integers(0, 26, int(rng.integers(2, 9)))) for _ in range(8))
        draw.text((30, y), words, fill=(10, 10, 10), font=font)
    return np.asarray(picture)


def blank(value: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    return np.full((*size, 3), value, dtype=np.uint8)


def all_kinds(seed: int = 0) -> dict[str, np.ndarray]:
    """Every kind above, plus the degenerate shapes: name -> uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    return {
        "bar_chart": bar_chart(seed),
        "grey_chart": grey_chart(seed),
        "photo": photo(seed),
        "document": document(seed),
        "blank_black": blank(0),
        "blank_grey": blank(128),
        "tiny_1x1": rng.integers(0, 255, (1, 1, 3), dtype=np.uint8),
        "strip_3x500": rng.integers(0, 255, (3, 500, 3), dtype=np.uint8),
    }
