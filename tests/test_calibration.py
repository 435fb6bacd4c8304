"""Calibration: ECE against a hand-computed value, temperature scaling recovering a known temperature,
and `busai calibrate` storing a temperature every prediction path applies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from busai.calibration import apply_temperature, expected_calibration_error, fit_temperature, judge_temperature, reliability_bins
from busai.errors import ConfigError


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.8, 0.2, 0.0], [0.55, 0.45, 0.0]])
    y = np.array([0, 1, 0, 0])
    # Each confidence lands in its own bin: gaps 0.1, 0.6 (wrong), 0.2, 0.45 -> mean 0.3375.
    assert expected_calibration_error(probs, y) == pytest.approx(0.3375)
    bins = reliability_bins(probs, y)
    assert sum(b["count"] for b in bins) == 4 and bins[-1]["high"] == 1.0


def test_shared_bins_by_hand_and_the_one_diagram(tmp_path):
    """Predictions sharing a bin, one on a bin's lower edge and one at confidence 1, through the one
    binning (10 bins) that evaluate, calibrate, the study report and the release benchmark share."""
    import importlib.util
    from pathlib import Path

    from PIL import Image

    from busai.calibration import N_BINS, reliability_figure

    probs = np.array([[0.91, 0.09, 0.0], [0.05, 0.95, 0.0], [1.0, 0.0, 0.0], [0.62, 0.38, 0.0], [0.35, 0.33, 0.32], [0.5, 0.3, 0.2]])
    y = np.array([0, 0, 0, 0, 1, 0])
    # Bin [0.9, 1]: 0.91 right, 0.95 wrong, 1.0 right -> |0.95333 - 2/3| x 3 = 0.86; bin [0.6, 0.7): 0.62 right -> 0.38;
    # bin [0.3, 0.4): 0.35 wrong -> 0.35; bin [0.5, 0.6): 0.5 right -> 0.5. ECE = 2.09 / 6.
    assert N_BINS == 10
    assert expected_calibration_error(probs, y) == pytest.approx(2.09 / 6)
    bins = reliability_bins(probs, y)
    assert [b["count"] for b in bins] == [0, 0, 0, 1, 0, 1, 1, 0, 0, 3]
    assert bins[9]["confidence"] == pytest.approx(2.86 / 3) and bins[9]["accuracy"] == pytest.approx(2 / 3)
    path = Path(reliability_figure({"val": bins, "empty": reliability_bins(probs[:0], y[:0])}, tmp_path / "sub" / "r.png", title="t"))
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100
    assert not list(path.parent.glob("*.tmp.png"))
    # The release benchmark reports the same ECE.
    spec = importlib.util.spec_from_file_location("release_calibration", Path(__file__).parents[1] / "benchmarks" / "release_calibration.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = bench.calibration(y, probs)
    assert row["ece_10_bins"] == round(2.09 / 6, 4) and row["images"] == 6


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, size=(20000, 3))
    y = np.array([rng.choice(3, p=p) for p in apply_temperature(true_logits, 1.0)])
    overconfident = 3.0 * true_logits  # a model three times too sure of itself
    assert fit_temperature(overconfident, y) == pytest.approx(3.0, rel=0.05)
    assert expected_calibration_error(apply_temperature(overconfident, 3.0), y) < expected_calibration_error(apply_temperature(overconfident, 1.0), y)


def test_calibrate_stores_a_temperature_that_predictions_use(cli, cls_run, seg_run, synthetic_dir, tiny_runs, tmp_path, monkeypatch):
    import shutil

    import busai.calibration
    import busai.inference
    from busai.inference import predict_tensor
    from busai.runs import load_model

    monkeypatch.setattr(busai.calibration, "MIN_IMAGES", 1)  # the synthetic split has a handful of validation images
    # The tiny model's own predictions are near chance (its fit would stop at the bound): an
    # overconfident classifier instead, right on 60% of the images, which T > 1 calibrates.
    monkeypatch.setattr(busai.calibration, "predict_records", stand_in_predictions([4.0, 0.0, 0.0]))
    run = shutil.copytree(cls_run, tmp_path / "cls")
    code, out, err = cli("calibrate", run, "--data", synthetic_dir, "--splits", tiny_runs / "splits.json", "--json")
    assert code == 0, err
    result = json.loads(out)
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["temperature"] == result["temperature"] > 0 and saved["fitted_on"] == "val"
    loaded = load_model(run)
    assert loaded.temperature == pytest.approx(saved["temperature"])
    x = torch.zeros(2, 3, loaded.image_size, loaded.image_size)
    raw = predict_tensor(loaded, x, "fp32", calibrated=False)
    calibrated = predict_tensor(loaded, x, "fp32")
    expected = torch.softmax(torch.log(raw) / loaded.temperature, dim=1)
    assert torch.allclose(calibrated, expected, atol=1e-5)
    cli.fails("calibrate", run, "--data", synthetic_dir, "--splits", tiny_runs / "splits.json", expect="calibration.json: exists; pass --force")
    cli.fails("calibrate", seg_run, "--data", synthetic_dir, "--splits", tiny_runs / "splits.json", expect="is a segmentation run")
    other = tmp_path / "other.json"
    other.write_text((tiny_runs / "splits.json").read_text() + " ")
    cli.fails("calibrate", run, "--data", synthetic_dir, "--splits", other, "--force", expect="is not the split file")


# ------------------------------------------------------------------------ issue 30, item 4
def stand_in_predictions(logits: list[float]):
    """A stand-in for ``busai.evaluation.predict_records``: every image gets softmax(logits), ordered so
    the true class is the top one for the first 60% of the images and the last one for the rest."""

    def predict(loaded, records, calibrated=True):
        for i, record in enumerate(records):
            order = [record.label_index, (record.label_index + 1) % 3, (record.label_index + 2) % 3]
            if i >= 0.6 * len(records):
                order = [order[1], order[2], order[0]]
            probs = np.zeros(3)
            probs[order] = apply_temperature(np.array([logits]), 1.0)[0]
            yield record, torch.tensor(probs)

    return predict


def test_calibrate_refuses_too_few_validation_images(cli, cls_run, synthetic_dir, tiny_runs, tmp_path):
    import shutil

    run = shutil.copytree(cls_run, tmp_path / "cls")
    val = len(json.loads((tiny_runs / "splits.json").read_text())["val"])
    cli.fails(
        "calibrate", run, "--data", synthetic_dir, "--splits", tiny_runs / "splits.json", expect=f"{val} validation images; calibrating needs at least 50"
    )
    assert not (run / "calibration.json").exists()


def test_a_fit_at_the_search_bound_is_refused():
    confident = np.log(np.tile([0.98, 0.01, 0.01], (30, 1)))
    with pytest.raises(ConfigError, match="temperature 20: the fit stopped at its bound"):
        judge_temperature(confident, np.arange(30) % 3)  # sure of class 0, labels uniform: T runs to 20
    with pytest.raises(ConfigError, match="temperature 0.05: the fit stopped at its bound"):
        judge_temperature(np.log(np.tile([0.6, 0.2, 0.2], (30, 1))), np.zeros(30, int))  # always right: T runs to 0


def test_a_temperature_that_worsens_ece_is_not_stored(cli, cls_run, synthetic_dir, tiny_runs, tmp_path, monkeypatch):
    import shutil

    import busai.calibration
    import busai.inference

    # Identical logits (2, 1, 0), 6 labels of the top class and 4 of the last: the NLL optimum sets
    # E_p[z] = E_labels[z] = 1.2, i.e. e^(1/T) = a with 0.8a^2 - 0.2a - 1.2 = 0, a = 1.3561, where the
    # top probability is 0.4384: ECE |0.4384 - 0.6| = 0.1616, against |0.6652 - 0.6| = 0.0652 at T = 1.
    logits = np.tile([2.0, 1.0, 0.0], (10, 1))
    result = judge_temperature(logits, np.array([0] * 6 + [2] * 4))
    assert result["stored"] is False and result["temperature"] == pytest.approx(1 / np.log(1.3561), rel=1e-3)
    assert result["ece_before"] == pytest.approx(0.0652, abs=1e-3) and result["ece_after"] == pytest.approx(0.1616, abs=1e-3)

    # Through the command: the same shape of predictions on the run's validation images; nothing
    # written, exit 0, one line saying so.
    monkeypatch.setattr(busai.calibration, "predict_records", stand_in_predictions([2.0, 1.0, 0.0]))
    monkeypatch.setattr(busai.calibration, "MIN_IMAGES", 1)
    run = shutil.copytree(cls_run, tmp_path / "cls")
    code, out, err = cli("calibrate", run, "--data", synthetic_dir, "--splits", tiny_runs / "splits.json")
    assert code == 0 and "not calibrated: temperature" in out and "the model keeps its raw probabilities (no calibration.json written)" in out, out + err
    assert not (run / "calibration.json").exists()
