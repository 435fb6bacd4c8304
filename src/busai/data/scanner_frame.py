"""Synthetic scanner screenshots: a scan pasted into a 1280 x 960 screen with the clutter a
scanner draws around it (patient text, a tool bar, a depth ruler, a grey and a colour bar,
calipers with their read-out). Used by the scan-region tests and ``benchmarks/framing.py``.
The ruler, calipers and fonts are :mod:`busai.data.overlays`' drawing functions, which the
``scanner`` training augmentation also burns into scans.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same frame.
The patient text is invented (``DOE^JANE``); no real identity is ever drawn.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from busai.data.overlays import SETTINGS, draw_calipers, draw_depth_ruler, font

SCREEN = (960, 1280)  # (height, width), a common scanner video output


def frame_scan(scan_rgb: np.ndarray, seed: int = 0, screen: tuple[int, int] = SCREEN) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``scan_rgb`` (uint8 H, W, 3) inside a synthetic scanner screen.

    Returns the screen (uint8 RGB) and the box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) where the
    scan's pixels lie, unscaled. A scan larger than the free area is shrunk to fit it first.
    """
    rng = np.random.default_rng(seed)
    height, width = screen
    picture = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 18, 3)))
    draw = ImageDraw.Draw(picture)
    small, big = font(16), font(22)

    # The tool bar and patient line across the top, a settings column on the left.
    bar = int(rng.integers(50, 80))
    draw.rectangle((0, 0, width, bar), fill=(38, 44, 60))
    draw.text((12, 8), "DOE^JANE   ID 0000000   F 54Y", fill=(235, 235, 235), font=big)
    draw.text((12, 8 + 26), "2026-01-01 10:00:00   Breast L   L12-5 38mm", fill=(200, 200, 200), font=small)
    draw.text((width - 360, 12), "MI 1.1   TIs 0.3   12 MHz", fill=(230, 230, 120), font=small)
    left = int(rng.integers(170, 230))
    for i, line in enumerate(SETTINGS):
        draw.text((14, bar + 30 + 26 * i), line, fill=(220, 220, 220), font=small)

    # Free area: right of the settings column, below the bar, left of the colour bars.
    free_x0, free_y0, free_x1, free_y1 = left, bar + 20, width - 120, height - 60
    scan = Image.fromarray(np.ascontiguousarray(scan_rgb[..., :3]))
    room_w, room_h = free_x1 - free_x0, free_y1 - free_y0
    if scan.width > room_w or scan.height > room_h:
        factor = min(room_w / scan.width, room_h / scan.height)
        scan = scan.resize((max(1, int(scan.width * factor)), max(1, int(scan.height * factor))), Image.Resampling.BILINEAR)
    x0 = free_x0 + int(rng.integers(0, room_w - scan.width + 1))
    y0 = free_y0 + int(rng.integers(0, room_h - scan.height + 1))
    picture.paste(scan, (x0, y0))
    x1, y1 = x0 + scan.width, y0 + scan.height

    # Depth ruler: ticks every centimetre-ish down the scan's right edge, with numbers.
    ruler_x = min(x1 + 6, width - 118)
    draw_depth_ruler(draw, ruler_x, y0, y1, max(20, scan.height // 8), (240, 240, 240), small)

    # A grey bar and a colour bar at the right edge of the screen.
    ramp = np.linspace(255, 0, 256)
    grey = np.repeat(ramp[:, None], 14, axis=1).astype(np.uint8)
    picture.paste(Image.fromarray(grey).convert("RGB"), (width - 90, bar + 40))
    colour = np.stack([np.clip(ramp * 2, 0, 255), np.clip(255 - abs(ramp - 128) * 2, 0, 255), np.clip(510 - ramp * 2, 0, 255)], -1)
    picture.paste(Image.fromarray(np.repeat(colour[:, None], 14, axis=1).astype(np.uint8)), (width - 60, bar + 40))

    # Calipers on the scan (yellow '+' and a dotted line) and their read-out under it.
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    span = max(8, scan.width // 6)
    draw_calipers(draw, (cx - span, cy), (cx + span, cy), (255, 230, 0))
    draw.text((x0 + 8, min(y1 + 10, height - 24)), f"1 + Dist {rng.uniform(0.5, 2.5):.2f} cm", fill=(255, 230, 0), font=small)
    draw.text((width - 200, height - 30), "Frz  ||  Cine 120/120", fill=(200, 200, 200), font=small)
    return np.asarray(picture), (x0, y0, x1, y1)
