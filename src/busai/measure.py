"""Lesion measurements from a binary mask: area, the longest diameter and the one perpendicular
to it, orientation (taller-than-wide), depth below the skin line, and the bounding box.

Measurements describe the **largest connected component** (8-connectivity), the index lesion: a
thresholded network output often carries small specks beside the lesion, and letting them join
the measurement would stretch the diameter and the box across empty tissue. ``lesion_count``
says how many separate components the mask holds, so a second lesion is never hidden.

Geometry counts pixels as squares, not points: a lesion 10 pixels across has a diameter of 10,
and the longest diameter is the maximum Feret diameter, the largest distance between two corners
of the lesion's pixels, taken over the corners on its convex hull. The perpendicular diameter is
the lesion's extent across that axis (the calipers a sonographer places at right angles to the
long axis). Orientation is the BI-RADS one: ``depth_width_ratio`` is the lesion's vertical extent
(along the beam) over its horizontal extent, and ``taller_than_wide`` says whether it is above 1.
``depth`` is from the skin line (the top row of the scan; ``skin_row`` when the scan sits inside
a larger screen) to the lesion's top. ``pixel_spacing`` is the size of one pixel in millimetres:
one number for square pixels, or (row, column) spacing.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist, squareform

from busai.errors import ConfigError, DataError

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
# Key order is the column order of predictions.csv.
MEASUREMENT_KEYS = (
    "lesion_count",
    "area_px",
    "area_mm2",
    "longest_diameter_px",
    "longest_diameter_mm",
    "perpendicular_diameter_px",
    "perpendicular_diameter_mm",
    "depth_width_ratio",
    "taller_than_wide",
    "depth_px",
    "depth_mm",
    "bbox_x",
    "bbox_y",
    "bbox_width",
    "bbox_height",
)

# Far wider than any scan (roughly 0.03 to 0.5 mm), yet narrow enough that the hull and area
# arithmetic stay in floating-point range: 1e308 overflowed to inf and 1e-320 underflowed to 0.
PIXEL_SPACING_RANGE = (1e-3, 1e2)
# What a file or a dataset table may state: ultrasound pixels are a few hundredths to tenths of a mm,
# so a stated value outside this is a damaged tag or a wrong unit, not a scan to measure.
PLAUSIBLE_SPACING_MM = (1e-3, 10.0)


def stated_spacing(value: float, where: str, fix: str) -> float:
    """``value`` (mm per pixel), as a DICOM tag or a table cell states it, or a DataError naming
    ``where`` (the file and the tag, or the table's row and column) and ``fix``. The one check
    datasets and ``predict`` apply to a stated spacing, so a file is refused the same way by both."""
    low, high = PLAUSIBLE_SPACING_MM
    if not (np.isfinite(value) and low <= value <= high):
        raise DataError(f"{where} is not a plausible pixel size ({low:g} to {high:g} mm per pixel); {fix}")
    return float(value)


def spacing_mm(pixel_spacing: float | tuple[float, float] | list[float] | None) -> tuple[float, float] | None:
    """Normalise ``pixel_spacing`` to (row_mm, column_mm), or None when not given."""
    if pixel_spacing is None:
        return None
    values = [float(pixel_spacing)] * 2 if np.isscalar(pixel_spacing) else [float(v) for v in pixel_spacing]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"--pixel-spacing {pixel_spacing}: give one positive number (mm per pixel) or two (row, column)")
    low, high = PIXEL_SPACING_RANGE
    if not all(low <= v <= high for v in values):
        raise ConfigError(
            f"--pixel-spacing {pixel_spacing}: must be between {low:g} and {high:g} mm per pixel "
            "(ultrasound pixels are a few hundredths to tenths of a mm); give the scan's spacing in mm"
        )
    return values[0], values[1]


def largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 8-connected component of ``mask`` (bool) and the number of components."""
    labels, count = ndimage.label(mask > 0, structure=_EIGHT_CONNECTED)
    if count <= 1:
        return labels > 0, count
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1, count


def _hull_corners(region: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """(row, column) corners of the region's pixels on its convex hull, in physical units.

    Only boundary pixels can own hull corners, so the hull is built from their four corners.
    """
    boundary = region & ~ndimage.binary_erosion(region, structure=_EIGHT_CONNECTED)
    rows, cols = np.nonzero(boundary)
    corners = np.concatenate([np.stack([rows + dy, cols + dx], axis=1) for dy in (0, 1) for dx in (0, 1)]).astype(float)
    corners *= np.asarray(spacing)  # measure in physical units, so anisotropic pixels are handled
    return corners[ConvexHull(corners).vertices]


def _as_xy(points: np.ndarray, spacing) -> list[list[float]]:
    pixels = points / np.asarray(spacing)
    return [[round(float(p[1]), 2), round(float(p[0]), 2)] for p in pixels]


def feret_diameter(region: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[float, list[list[float]]]:
    """Maximum Feret diameter of a non-empty bool ``region`` and its two end points as [x, y]."""
    hull = _hull_corners(region, spacing)
    distances = squareform(pdist(hull))
    i, j = np.unravel_index(int(np.argmax(distances)), distances.shape)
    return float(distances[i, j]), _as_xy(hull[[i, j]], spacing)


def perpendicular_diameter(region: np.ndarray, axis_ends: list[list[float]], spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[float, list[list[float]]]:
    """The region's extent at right angles to the axis through ``axis_ends`` ([x, y] pixel corners),
    in the units of ``spacing``, and a segment of that length across the lesion's middle, as [x, y]."""
    hull = _hull_corners(region, spacing)
    (x_a, y_a), (x_b, y_b) = axis_ends
    axis = np.array([(y_b - y_a) * spacing[0], (x_b - x_a) * spacing[1]])
    axis /= np.linalg.norm(axis)
    normal = np.array([-axis[1], axis[0]])
    across = hull @ normal
    along = hull @ axis
    middle = (along.min() + along.max()) / 2
    ends = np.stack([middle * axis + across.min() * normal, middle * axis + across.max() * normal])
    return float(across.max() - across.min()), _as_xy(ends, spacing)


def measure_lesion(
    mask: np.ndarray, pixel_spacing: float | tuple[float, float] | None = None, *, skin_row: int = 0, component: tuple[np.ndarray, int] | None = None
) -> dict:
    """Measurements of the largest lesion in ``mask`` (H, W; any non-zero value is lesion).

    Returns the keys of :data:`MEASUREMENT_KEYS` plus ``diameter_endpoints`` and
    ``perpendicular_endpoints`` ([[x, y], [x, y]] in pixel-corner coordinates, for drawing). The
    mm keys are None without ``pixel_spacing``; every size is None (and ``lesion_count`` 0) when
    the mask is empty. The bounding box is x, y (top-left pixel) and width, height in pixels.
    ``component`` is :func:`largest_component` of ``mask`` when the caller already has it.
    """
    spacing = spacing_mm(pixel_spacing)
    region, count = component if component is not None else largest_component(np.asarray(mask))
    result: dict = {key: None for key in MEASUREMENT_KEYS}
    result.update(lesion_count=count, area_px=0, diameter_endpoints=None, perpendicular_endpoints=None)
    if count == 0:
        return result
    rows, cols = np.nonzero(region)
    diameter_px, ends = feret_diameter(region)
    across_px, across_ends = perpendicular_diameter(region, ends)
    top, bottom, left, right = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    row_mm, col_mm = spacing or (1.0, 1.0)  # the ratio needs physical units; square pixels without spacing
    ratio = ((bottom - top) * row_mm) / ((right - left) * col_mm)
    result.update(
        area_px=int(rows.size),
        longest_diameter_px=round(diameter_px, 2),
        perpendicular_diameter_px=round(across_px, 2),
        depth_width_ratio=round(ratio, 3),
        taller_than_wide=bool(ratio > 1),
        depth_px=max(0, top - int(skin_row)),
        perpendicular_endpoints=across_ends,
        bbox_x=int(cols.min()),
        bbox_y=int(rows.min()),
        bbox_width=int(cols.max() - cols.min() + 1),
        bbox_height=int(rows.max() - rows.min() + 1),
        diameter_endpoints=ends,
    )
    if spacing is not None:
        result["area_mm2"] = round(rows.size * spacing[0] * spacing[1], 3)
        # With anisotropic pixels the longest physical chord can differ from the longest pixel chord.
        diameter_mm, ends_mm = feret_diameter(region, spacing)
        result["longest_diameter_mm"] = round(diameter_mm, 3)
        result["perpendicular_diameter_mm"] = round(perpendicular_diameter(region, ends_mm, spacing)[0], 3)
        result["depth_mm"] = round(result["depth_px"] * spacing[0], 3)
    return result
