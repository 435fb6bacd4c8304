"""Lesion measurements on drawn shapes whose answers are known."""

import math

import numpy as np
import pytest

from busai.errors import ConfigError
from busai.measure import MEASUREMENT_KEYS, measure_lesion


def rectangle(height=60, width=80, top=10, left=5, h=10, w=30):
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top : top + h, left : left + w] = 1
    return mask


def test_rectangle_area_box_and_diameter():
    m = measure_lesion(rectangle())
    assert m["lesion_count"] == 1
    assert m["area_px"] == 300
    assert (m["bbox_x"], m["bbox_y"], m["bbox_width"], m["bbox_height"]) == (5, 10, 30, 10)
    # Pixels are squares: the longest diameter runs corner to corner of the 30 x 10 block.
    assert m["longest_diameter_px"] == pytest.approx(math.hypot(30, 10), abs=0.01)
    assert sorted(m["diameter_endpoints"]) == [[5.0, 10.0], [35.0, 20.0]] or sorted(m["diameter_endpoints"]) == [[5.0, 20.0], [35.0, 10.0]]
    assert m["area_mm2"] is None and m["longest_diameter_mm"] is None


def test_millimetres_isotropic_and_anisotropic():
    m = measure_lesion(rectangle(), pixel_spacing=0.1)
    assert m["area_mm2"] == pytest.approx(3.0)
    assert m["longest_diameter_mm"] == pytest.approx(math.hypot(3.0, 1.0), abs=1e-3)
    # (row, column) spacing: 10 rows x 0.5 mm = 5 mm tall, 30 columns x 0.1 mm = 3 mm wide.
    m = measure_lesion(rectangle(), pixel_spacing=(0.5, 0.1))
    assert m["area_mm2"] == pytest.approx(300 * 0.05)
    assert m["longest_diameter_mm"] == pytest.approx(math.hypot(5.0, 3.0), abs=1e-3)


def test_disc_diameter_and_area():
    yy, xx = np.mgrid[:121, :121]
    disc = (yy - 60) ** 2 + (xx - 60) ** 2 <= 40**2
    m = measure_lesion(disc)
    assert m["area_px"] == pytest.approx(math.pi * 40**2, rel=0.01)
    assert 81 <= m["longest_diameter_px"] <= 82  # 81 pixels across, a little more corner to corner
    assert (m["bbox_width"], m["bbox_height"]) == (81, 81)


def test_diagonal_line():
    mask = np.eye(10, dtype=np.uint8)
    assert measure_lesion(mask)["longest_diameter_px"] == pytest.approx(math.hypot(10, 10), abs=0.01)


def test_largest_component_is_measured_and_others_counted():
    mask = rectangle()
    mask[50:53, 70:73] = 1  # a 3x3 speck far away
    m = measure_lesion(mask)
    assert m["lesion_count"] == 2
    assert m["area_px"] == 300
    assert m["bbox_width"] == 30


def test_single_pixel_and_empty_mask():
    one = np.zeros((5, 5), dtype=np.uint8)
    one[2, 3] = 255
    m = measure_lesion(one, pixel_spacing=0.5)
    assert (m["area_px"], m["area_mm2"]) == (1, 0.25)
    assert m["longest_diameter_px"] == pytest.approx(math.sqrt(2), abs=0.01)
    empty = measure_lesion(np.zeros((5, 5)), pixel_spacing=0.5)
    assert empty["lesion_count"] == 0 and empty["area_px"] == 0
    assert all(empty[k] is None for k in MEASUREMENT_KEYS if k not in ("lesion_count", "area_px"))


@pytest.mark.parametrize("spacing", [0, -1, (0.1, 0.2, 0.3), float("nan")])
def test_bad_pixel_spacing(spacing):
    with pytest.raises(ConfigError, match="pixel-spacing"):
        measure_lesion(rectangle(), pixel_spacing=spacing)


def test_perpendicular_diameter_orientation_and_depth_of_an_ellipse():
    # An ellipse 121 px wide and 41 px tall (semi-axes 60.5 and 20.5), top at row 80, skin at row 30.
    yy, xx = np.mgrid[:200, :300]
    ellipse = ((xx - 150) / 60.5) ** 2 + ((yy - 100) / 20.5) ** 2 <= 1
    m = measure_lesion(ellipse, pixel_spacing=0.1, skin_row=30)
    assert m["longest_diameter_px"] == pytest.approx(121, abs=0.5)
    assert m["perpendicular_diameter_px"] == pytest.approx(41, abs=1.5)
    assert m["perpendicular_diameter_mm"] == pytest.approx(4.1, abs=0.15)
    assert m["depth_width_ratio"] == pytest.approx(41 / 121, abs=0.01) and m["taller_than_wide"] is False
    assert (m["depth_px"], m["depth_mm"]) == (50, 5.0)
    # Its ends span the short axis through the lesion's middle.
    (xa, ya), (xb, yb) = m["perpendicular_endpoints"]
    assert abs(xa - xb) < 3 and abs(ya - yb) == pytest.approx(41, abs=1.5)


def test_taller_than_wide_uses_millimetres():
    # 50 rows x 10 columns: taller than wide in pixels; with 0.1 mm rows and 0.6 mm columns it is
    # 5 mm tall and 6 mm wide, so not taller than wide.
    mask = rectangle(height=80, width=40, top=10, left=5, h=50, w=10)
    assert measure_lesion(mask)["taller_than_wide"] is True
    m = measure_lesion(mask, pixel_spacing=(0.1, 0.6))
    assert m["depth_width_ratio"] == pytest.approx(5 / 6, abs=1e-3) and m["taller_than_wide"] is False
    # A rectangle's extent across its diagonal is twice its area over the diagonal.
    assert measure_lesion(rectangle())["perpendicular_diameter_px"] == pytest.approx(2 * 300 / math.hypot(30, 10), abs=0.01)
