"""The input gate: say when an image is not a B-mode ultrasound scan, instead of answering anyway.

The models answer whatever they are given: a bar chart gets a class and "lesions", a 1 x 1
image a confident label. :func:`check_input` looks at the pixels before any model runs and
returns ``"ok"`` or one line saying what is wrong (``tiny: ...``, ``blank: ...``, ...). The
checks are simple image statistics of a B-mode scan (grey, speckled, mostly dark); the
thresholds sit outside the range every BUSI and BUS-UCLM image falls in
(``benchmarks/input_gate.py`` measures the false alarms on both, ``results/input_gate.json``),
and the tests build the non-ultrasound images each check must catch.

No library offers a "not ultrasound" test; a learned detector would need non-ultrasound
training data the project does not have, so the gate is hand-written and deliberately coarse:
it catches inputs that are plainly wrong, not subtle ones.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

OK = "ok"
MIN_SIDE = 32  # px: below this a scan has no resolvable anatomy (models resize to 256)
MAX_ASPECT = 6.0  # longer side / shorter side: scanner images are between about 1:2 and 2:1
MIN_STD = 3.0  # grey levels: a blank or single-colour image
MAX_COLOUR_SHARE = 0.35  # share of strongly coloured pixels: Doppler colour covers far less
MIN_TISSUE_SHARE = 0.20  # share of speckle-textured grey pixels (scan_region.tissue_map)
MAX_BRIGHT_SHARE = 0.50  # share of near-white pixels: scans are mostly dark, documents and charts white
COLOURED = 60  # max - min of the RGB channels above which a pixel counts as coloured
BRIGHT = 215  # grey level above which a pixel counts as near-white


def check_array(image: np.ndarray) -> str:
    """``"ok"`` for an array busai takes as a scan; otherwise why not, with the fix.

    The one rule of :func:`busai.preprocessing.array_problem` (uint8, or float in [0, 1]), checked
    before any conversion so a wrongly scaled array is reported, never guessed at.
    """
    from busai.preprocessing import array_problem

    return array_problem(image) or OK


def image_statistics(image_rgb: np.ndarray, tissue: np.ndarray | None = None) -> dict:
    """The numbers the gate compares with its thresholds, for a uint8 (H, W, 3) image (``tissue``: its
    :func:`busai.scan_region.tissue_map`, when already computed)."""
    from busai.scan_region import grey_and_spread, tissue_map

    rgb = np.asarray(image_rgb)
    grey, saturation = grey_and_spread(rgb, np.float64)
    if tissue is None and min(rgb.shape[:2]) >= 3:
        tissue = tissue_map(rgb)
    return {
        "height": int(rgb.shape[0]),
        "width": int(rgb.shape[1]),
        "std": float(grey.std()),
        "colour_share": float((saturation > COLOURED).mean()),
        "tissue_share": float(tissue.mean()) if tissue is not None else 0.0,
        "bright_share": float((ndimage.uniform_filter(grey, 3) > BRIGHT).mean()),
    }


def check_input(image_rgb: np.ndarray, stats: dict | None = None) -> str:
    """``"ok"`` or one line saying why a uint8 (H, W, 3) image is not a B-mode ultrasound scan
    (``stats``: its :func:`image_statistics`, when already computed)."""
    height, width = image_rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        return f"tiny: {width}x{height} pixels; a scan is at least {MIN_SIDE} pixels a side"
    if max(height, width) / min(height, width) > MAX_ASPECT:
        return f"not a scan's shape: {width}x{height} pixels is a strip (over {MAX_ASPECT:g}:1)"
    stats = stats or image_statistics(image_rgb)
    if stats["std"] < MIN_STD:
        return "blank: the image is one flat colour"
    if stats["colour_share"] > MAX_COLOUR_SHARE:
        return f"colour image: {stats['colour_share']:.0%} of pixels are coloured; B-mode scans are grey (a photo, chart or colour map?)"
    if stats["bright_share"] > MAX_BRIGHT_SHARE:
        return f"mostly white: {stats['bright_share']:.0%} of pixels; B-mode scans are mostly dark (a document or chart?)"
    if stats["tissue_share"] < MIN_TISSUE_SHARE:
        return f"no speckle: {stats['tissue_share']:.0%} of pixels have ultrasound texture (a drawing, chart or screenshot?)"
    return OK
