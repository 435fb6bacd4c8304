"""Scanner annotations burnt into an image: text, calipers, a colour-Doppler box, a depth ruler.

One set of drawing functions serves both the synthetic scanner screens
(:mod:`busai.data.scanner_frame`) and the ``scanner`` training augmentation
(:class:`BurntInOverlays`), which teaches a model that such marks are not tissue. Hand-written
because albumentations has no ultrasound annotations: its ``TextImage`` writes text into given
boxes and ``OverlayElements`` pastes given pictures, neither draws calipers, rulers or Doppler boxes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import albumentations as A
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# What scanners print beside a scan; the augmentation draws from these and from random read-outs.
SETTINGS = ("2D", "Gn 54", "DR 60", "FA 3", "Frq 12 MHz", "D 4.0 cm", "P Med", "AO 100%", "SRI 2")
LABELS = ("BREAST L", "BREAST R", "RT 10:00 3CM FN", "LT 2:00", "L12-5", "RAD", "ARAD", "TRANS", "LONG", "CF 7.5MHz", "FR 21Hz")
# Overlay colours as scanners use them: white and grey text, yellow calipers, green and cyan marks.
COLOURS = ((240, 240, 240), (200, 200, 200), (255, 230, 0), (80, 255, 80), (0, 220, 255))


@lru_cache(maxsize=32)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` pixels, loaded once per size (loading costs more than drawing)."""
    return ImageFont.load_default(size=size)


def draw_mark(draw: ImageDraw.ImageDraw, x: float, y: float, colour, arm: int = 6, width: int = 2, shape: str = "+") -> None:
    """A caliper mark centred on (x, y): ``+`` or ``x`` with arms of ``arm`` pixels."""
    if shape == "+":
        draw.line((x - arm, y, x + arm, y), fill=colour, width=width)
        draw.line((x, y - arm, x, y + arm), fill=colour, width=width)
    else:
        draw.line((x - arm, y - arm, x + arm, y + arm), fill=colour, width=width)
        draw.line((x - arm, y + arm, x + arm, y - arm), fill=colour, width=width)


def draw_calipers(
    draw: ImageDraw.ImageDraw,
    a: tuple[int, int],
    b: tuple[int, int],
    colour,
    *,
    arm: int = 6,
    width: int = 2,
    shape: str = "+",
    gap: tuple[int, int] = (10, 6),
    step: int = 8,
) -> None:
    """A measurement: marks at ``a`` and ``b`` and a dotted line between them, one dot every ``step``
    pixels from ``gap[0]`` past ``a`` to ``gap[1]`` before ``b``."""
    for x, y in (a, b):
        draw_mark(draw, x, y, colour, arm, width, shape)
    (ax, ay), (bx, by) = a, b
    length = float(np.hypot(bx - ax, by - ay))
    if length > 0:
        t = np.arange(gap[0], length - gap[1], step) / length
        dots = np.rint(np.stack([ax + t * (bx - ax), ay + t * (by - ay)], axis=1)).astype(int)
        draw.point([tuple(p) for p in dots.tolist()], fill=colour)


def draw_depth_ruler(
    draw: ImageDraw.ImageDraw, x: int, y0: int, y1: int, step: int, colour, text_font, *, tick: int = 10, width: int = 2, side: int = 1
) -> None:
    """Depth ticks down x from y0 to y1 every ``step`` pixels, long and numbered (0, 1, 2 ...) every
    other one; ``side`` +1 draws the ticks and numbers to the right of x, -1 to the left."""
    half = getattr(text_font, "size", 10) // 2
    for i, y in enumerate(range(y0, y1, step)):
        length = tick if i % 2 == 0 else tick // 2
        draw.line((x, y, x + side * length, y), fill=colour, width=width)
        if i % 2 == 0:
            label = str(i // 2)
            offset = tick + 3 if side > 0 else -(tick + 3) - draw.textlength(label, font=text_font)
            draw.text((x + offset, y - half), label, fill=colour, font=text_font)


def draw_doppler_box(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], outline, rng: np.random.Generator, *, blobs: int = 12) -> None:
    """A colour-Doppler box: its outline and up to ``blobs`` small red / blue flow spots inside."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=outline, width=1)
    flow = ((220, 30, 30), (255, 140, 0), (30, 60, 230), (0, 200, 255))
    for _ in range(int(rng.integers(1, blobs + 1))):
        r = int(rng.integers(1, 4))
        cx, cy = int(rng.integers(x0 + r + 1, max(x0 + r + 2, x1 - r))), int(rng.integers(y0 + r + 1, max(y0 + r + 2, y1 - r)))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=flow[int(rng.integers(len(flow)))])


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return COLOURS[int(rng.integers(len(COLOURS)))]


def burn_overlays(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 H, W, 3) with scanner annotations drawn on it: each of text, calipers, a
    Doppler box and a depth ruler with probability 1/2, at least one. Sizes follow the image's, so
    a 64-pixel and a 512-pixel training image look alike. Returns a new array."""
    picture = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(picture)
    height, width = image.shape[:2]
    unit = min(height, width) / 256  # sizes below are in pixels of a 256-pixel image
    kinds = rng.random(4) < 0.5
    if not kinds.any():
        kinds[int(rng.integers(4))] = True
    text_font = font(max(6, int(round(unit * rng.uniform(9, 14)))))
    if kinds[0]:  # settings and labels in the corners
        for _ in range(int(rng.integers(1, 4))):
            pool = SETTINGS if rng.random() < 0.5 else LABELS
            text = pool[int(rng.integers(len(pool)))]
            x = int(rng.uniform(0.02, 0.6) * width)
            y = int((rng.uniform(0.01, 0.12) if rng.random() < 0.5 else rng.uniform(0.82, 0.93)) * height)
            draw.text((x, y), text, fill=_colour(rng), font=text_font)
    if kinds[1]:  # one or two measurements anywhere on the scan, with their read-out
        for k in range(int(rng.integers(1, 3))):
            a = rng.uniform(0.1, 0.9, 2) * (width, height)
            angle, length = rng.uniform(0, np.pi), rng.uniform(0.1, 0.5) * min(height, width)
            b = np.clip(a + length * np.array([np.cos(angle), np.sin(angle)]), 0, (width - 1, height - 1))
            colour = _colour(rng)
            arm = max(2, int(round(unit * rng.uniform(3, 6))))
            draw_calipers(
                draw,
                tuple(np.rint(a).astype(int).tolist()),
                tuple(np.rint(b).astype(int).tolist()),
                colour,
                arm=arm,
                width=max(1, int(round(unit))),
                shape="+" if rng.random() < 0.5 else "x",
                gap=(arm + 2, arm + 2),
                step=max(3, int(round(unit * rng.uniform(4, 8)))),
            )
            if rng.random() < 0.5:
                draw.text(
                    (int(0.05 * width), int((0.86 - 0.07 * k) * height)),
                    f"{k + 1} {'+x'[k % 2]} Dist {rng.uniform(0.3, 3.0):.2f} cm",
                    fill=colour,
                    font=text_font,
                )
    if kinds[2]:
        w, h = rng.uniform(0.25, 0.6) * width, rng.uniform(0.2, 0.5) * height
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        draw_doppler_box(draw, (int(x0), int(y0), int(x0 + w), int(y0 + h)), _colour(rng), rng, blobs=max(3, int(12 * unit)))
    if kinds[3]:
        left = rng.random() < 0.5
        x = int((rng.uniform(0.01, 0.04) if left else rng.uniform(0.96, 0.99)) * width)
        draw_depth_ruler(
            draw,
            x,
            int(rng.uniform(0, 0.1) * height),
            height,
            max(4, int(height / rng.uniform(6, 12))),
            _colour(rng),
            text_font,
            tick=max(3, int(round(6 * unit))),
            width=max(1, int(round(unit))),
            side=1 if left else -1,
        )
    return np.array(picture)


class BurntInOverlays(A.ImageOnlyTransform):
    """Albumentations transform drawing :func:`burn_overlays` on the image only: masks and labels
    stay as they were, since annotations lie on top of the tissue, not in it. Seeded by the
    pipeline (``Compose(seed=...)`` / ``set_random_seed``) like every other transform."""

    def __init__(self, p: float = 0.4) -> None:
        super().__init__(p=p)

    def get_params(self) -> dict[str, Any]:
        return {"overlay_seed": int(self.random_generator.integers(2**31 - 1))}

    def apply(self, img: np.ndarray, overlay_seed: int = 0, **params: Any) -> np.ndarray:
        return burn_overlays(img, np.random.default_rng(overlay_seed))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("p",)
