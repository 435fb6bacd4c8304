"""The scan region: found inside synthetic scanner screens, the whole image for a bare scan, and
predict's masks mapped back to the screen's pixels."""

import numpy as np
import pytest
from scipy import ndimage

from busai.data.discover import discover_records, read_image
from busai.data.scanner_frame import frame_scan
from busai.input_check import image_statistics
from busai.scan_region import ScanRegion, find_scan_region, grey_and_spread, locate_scan, square_opening, tissue_map


def phantom(synthetic_dir, index=0, scale=4) -> np.ndarray:
    """A synthetic scan enlarged to a realistic size (the 64 x 80 phantoms are smaller than any scan)."""
    image = read_image(discover_records(synthetic_dir)[index].image)
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


@pytest.mark.parametrize("seed", range(4))
def test_finds_the_scan_inside_a_scanner_screen(synthetic_dir, seed):
    scan = phantom(synthetic_dir, seed)
    screen, box = frame_scan(scan, seed=seed)
    found = find_scan_region(screen)
    assert found.cropped and (found.x0, found.y0, found.x1, found.y1) == box
    assert np.array_equal(found.crop(screen)[40:-40, 40:-40], screen[box[1] + 40 : box[3] - 40, box[0] + 40 : box[2] - 40])


def test_a_bare_scan_is_used_whole(synthetic_dir):
    scan = phantom(synthetic_dir, 1)
    assert find_scan_region(scan) == ScanRegion(0, 0, scan.shape[1], scan.shape[0], False)
    small = read_image(discover_records(synthetic_dir)[0].image)  # under 64 px: never cropped
    assert not find_scan_region(small).cropped


def test_paste_puts_crop_values_back_at_the_original_place():
    region = ScanRegion(10, 20, 40, 35, True)
    crop = np.ones((15, 30), dtype=np.uint8)
    full = region.paste(crop, (50, 60))
    assert full.shape == (50, 60) and full.sum() == 15 * 30 and full[20:35, 10:40].all()


def test_predict_maps_the_mask_back_and_measures_depth_from_the_scan_top():
    from dicom_files import dark_is_lesion, ellipse_scan

    from busai.rendering import predict_array

    # A lesion of known place (top at row 100 of the scan) inside a scanner screen.
    scan = np.repeat(ellipse_scan(centre=(120, 160), radii=(20, 50))[..., None], 3, axis=2)
    screen, (x0, y0, x1, y1) = frame_scan(scan, seed=3)
    row, mask = predict_array(dark_is_lesion(), screen)
    assert row["input_check"] == "ok"
    assert (row["scan_x"], row["scan_y"], row["scan_width"], row["scan_height"]) == (x0, y0, x1 - x0, y1 - y0)
    assert mask.shape == screen.shape[:2]
    outside = mask.copy()
    outside[y0:y1, x0:x1] = 0
    assert not outside.any()  # nothing outlined on the screen's clutter
    assert row["bbox_y"] == pytest.approx(y0 + 100, abs=1) and row["bbox_x"] == pytest.approx(x0 + 110, abs=1)
    assert row["depth_px"] == row["bbox_y"] - y0
    # The same as predicting the scan's own pixels (calipers included) alone.
    bare, bare_mask = predict_array(dark_is_lesion(), screen[y0:y1, x0:x1], scan_region=False)
    assert np.array_equal(mask[y0:y1, x0:x1], bare_mask) and bare["depth_px"] == row["depth_px"]


def test_a_smooth_scan_with_speckle_in_one_band_is_used_whole(monkeypatch):
    # BUS-UCLM holds heavily smoothed scans whose speckle shows only near the skin line: the band
    # is tissue, the rest is image content, not a screen's flat frame, so nothing is cropped.
    rng = np.random.default_rng(0)
    rows = np.linspace(40, 140, 300, dtype=np.float32)[:, None] + np.linspace(0, 30, 400, dtype=np.float32)[None, :]
    image = rows.copy()
    image[:100] += rng.normal(0, 25, (100, 400))
    image = np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    assert find_scan_region(image) == ScanRegion(0, 0, 400, 300, False)
    import busai.scan_region as sr

    monkeypatch.setattr(sr, "MAX_CONTENT_OUTSIDE", 1.1)  # without the frame check, the band alone was cropped
    assert find_scan_region(image).cropped


@pytest.mark.parametrize("side", [1, 2, 3, 4, 7, 12])
def test_square_opening_equals_scipys_square_structure(side):
    """The filter-based opening the region finder uses is scipy's binary opening with a full square, odd and even sides."""
    rng = np.random.default_rng(side)
    for _ in range(10):
        grid = rng.random((int(rng.integers(4, 60)), int(rng.integers(4, 60)))) > rng.uniform(0.2, 0.8)
        assert np.array_equal(square_opening(grid, side), ndimage.binary_opening(grid, structure=np.ones((side, side), bool)))


@pytest.mark.parametrize("source", [np.uint8, np.float32])
def test_grey_and_spread_equal_numpys_channel_reductions(source):
    """The 8-bit integer path and the float path both equal numpy's reductions over the channel axis."""
    rgb = np.random.default_rng(0).integers(0, 256, (37, 41, 3)).astype(source)
    for dtype in (np.float32, np.float64):
        grey, spread = grey_and_spread(rgb, dtype)
        assert grey.dtype == dtype and spread.dtype == dtype
        assert np.array_equal(grey, rgb.astype(dtype).mean(axis=2))
        assert np.array_equal(spread, rgb.max(axis=2).astype(dtype) - rgb.min(axis=2).astype(dtype))


def test_the_gate_reuses_the_region_search_tissue_map(synthetic_dir):
    """locate_scan hands back the tissue map it searched, and the gate's statistics from it equal those computed afresh."""
    image = phantom(synthetic_dir, 1)
    region, tissue = locate_scan(image)
    assert region == find_scan_region(image) and np.array_equal(tissue, tissue_map(image))
    assert image_statistics(image, tissue=tissue) == image_statistics(image)
    assert locate_scan(image[:40, :40])[1] is None  # too small to search: no map


@pytest.mark.parametrize("seed", range(3))
def test_background_is_within_two_levels_of_the_border_median_in_every_channel(seed):
    """The 8-bit fast path equals the plain definition, also when the border's median falls between two levels."""
    from busai.scan_region import _background

    rng = np.random.default_rng(seed)
    rgb = rng.integers(95, 106, (30, 40, 3), dtype=np.uint8)
    rgb[0, :20] += 1  # an even border count with shifted halves: medians like 100.5
    median = np.median(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16), axis=0)
    expected = (np.abs(rgb.astype(np.int16) - median) <= 2).all(axis=2)
    assert np.array_equal(_background(rgb), expected) and 0 < expected.mean() < 1
