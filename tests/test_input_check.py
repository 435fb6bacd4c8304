"""The input gate: drawn non-ultrasound images and bad arrays are flagged with their reason; scans pass;
predict withholds the answer for a flagged image and says why."""

import numpy as np
import pytest

from busai.data import not_ultrasound
from busai.data.discover import discover_records, read_image
from busai.input_check import OK, check_array, check_input
from busai.rendering import predict_array


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("bar_chart", "mostly white"),
        ("grey_chart", "no speckle"),
        ("photo", "colour image"),
        ("document", "mostly white"),
        ("blank_black", "blank: the image is one flat colour"),
        ("blank_grey", "blank: the image is one flat colour"),
        ("tiny_1x1", "tiny: 1x1 pixels; a scan is at least 32 pixels a side"),
        ("strip_3x500", "tiny: 500x3 pixels"),
    ],
)
def test_non_ultrasound_images_are_flagged(kind, reason):
    for seed in range(2):
        assert check_input(not_ultrasound.all_kinds(seed)[kind]).startswith(reason)


def test_a_long_strip_is_not_a_scan_shape():
    strip = np.random.default_rng(0).integers(0, 255, (40, 500, 3), dtype=np.uint8)
    assert check_input(strip) == "not a scan's shape: 500x40 pixels is a strip (over 6:1)"


def test_synthetic_scans_pass(synthetic_dir):
    for record in discover_records(synthetic_dir):
        assert check_input(read_image(record.image)) == OK, record.image


@pytest.mark.busi
def test_real_scans_pass():
    """A few BUSI images of each class (the full count is benchmarks/input_gate.py's)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "Dataset_BUSI_with_GT"
    if not root.is_dir():
        root = Path("/work/shared/data/Dataset_BUSI_with_GT")
    if not root.is_dir():
        pytest.skip("BUSI not present")
    for label in ("benign", "malignant", "normal"):
        for n in (1, 2, 3):
            assert check_input(read_image(root / label / f"{label} ({n}).png")) == OK


@pytest.mark.parametrize(
    "array, reason",
    [
        # One rule with busai.Model.predict (busai.preprocessing.array_problem): uint8, or float in [0, 1].
        (np.full((64, 64, 3), 200.0), "float image array with values outside [0, 1] (or not finite): scale it into [0, 1], e.g. x / 255"),
        (np.full((64, 64), np.nan), "float image array with values outside [0, 1] (or not finite)"),
        (np.full((64, 64), 4000, dtype=np.uint16), "image array of dtype uint16: pass uint8 (0-255) or float in [0, 1]"),
        (np.full((64, 64), 100, dtype=np.int64), "image array of dtype int64: pass uint8 (0-255) or float in [0, 1]"),
        (np.zeros((64, 64, 2), dtype=np.uint8), "image array of shape (64, 64, 2): pass H x W (grey) or H x W x 3 (RGB)"),
        (np.zeros((64, 64, 4), dtype=np.uint8), "image array of shape (64, 64, 4): pass H x W (grey) or H x W x 3 (RGB); drop an alpha channel"),
        (np.array([["a"]]), "image array of dtype <U1: pass uint8"),
    ],
)
def test_bad_arrays(array, reason):
    assert check_array(array).startswith(reason)


def test_one_array_rule_for_the_gate_and_the_api(seg_run):
    """A float scan in [0, 1] is the uint8 scan / 255 for predict_array as for busai.Model.predict."""
    import busai
    from busai.preprocessing import rgb_array

    uint8 = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    assert check_array(uint8 / 255.0) == OK
    assert np.array_equal(rgb_array(uint8 / 255.0), uint8)
    assert np.array_equal(rgb_array(uint8[..., :1]), np.repeat(uint8[..., :1], 3, axis=2))
    model = busai.load(seg_run, device="cpu")
    row, mask = predict_array([model], uint8 / 255.0, gate=False)
    expected_row, expected_mask = predict_array([model], uint8, gate=False)
    assert np.array_equal(mask, expected_mask) and row["input_check"] == expected_row["input_check"]


def test_predict_array_withholds_the_answer_for_a_flagged_image(seg_run, cls_run):
    import busai

    models = [busai.load(seg_run, device="cpu"), busai.load(cls_run, device="cpu")]
    row, mask = predict_array(models, not_ultrasound.bar_chart())
    assert row["input_check"].startswith("mostly white") and mask is None and row.get("label") is None
    row, mask = predict_array(models, np.full((64, 64, 3), 200.0))  # float in 0-255: refused, never guessed
    assert row["input_check"].startswith("float image array with values outside [0, 1]") and mask is None
    # --no-input-check answers anyway and still says what the gate saw.
    row, mask = predict_array(models, not_ultrasound.bar_chart(), gate=False)
    assert row["input_check"].startswith("mostly white") and row["label"] is not None and mask is not None
