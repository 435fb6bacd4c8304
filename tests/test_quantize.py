"""INT8 export: calibrated on training images only, parity with PyTorch fp32, int8 kernels, CLI and errors."""

import json

import numpy as np
import pytest
import torch

from busai.data.splits import read_splits
from busai.errors import CheckpointError, ConfigError
from busai.export import load_onnx
from busai.inference import predict_image
from busai.quantize import (
    INT8_TOLERANCE,
    calibration_records,
    calibration_source,
    kernel_profile,
    quantize_int8,
)
from busai.release import resolve_model


@pytest.fixture(scope="module")
def seg_int8(seg_run, tmp_path_factory):
    loaded = resolve_model(seg_run, "seg")
    data, splits = calibration_source(loaded, None, None)  # the run's own data and split file
    calibration, parity = calibration_records(data, splits, count=8)
    path = tmp_path_factory.mktemp("int8") / "seg_int8.onnx"
    return loaded, quantize_int8(loaded, path, calibration, parity), splits


def test_calibration_uses_training_images_only(seg_run):
    loaded = resolve_model(seg_run, "seg")
    data, splits = calibration_source(loaded, None, None)
    train = set(read_splits(splits)["train"])
    calibration, parity = calibration_records(data, splits, count=5, seed=3)
    assert len(calibration) == 5 and {r.key for r in calibration} <= train
    assert {r.key for r in parity} <= train and not {r.key for r in parity} & {r.key for r in calibration}
    again, _ = calibration_records(data, splits, count=5, seed=3)
    assert [r.key for r in again] == [r.key for r in calibration]  # seeded
    everything, held = calibration_records(data, splits, count=10_000)
    assert len(everything) == len(train) and held == everything[: len(held)]  # no other image: checked on the calibration ones


def test_int8_file_matches_fp32_and_runs_int8_kernels(seg_int8):
    loaded, result, _ = seg_int8
    assert result.ok and result.mean_abs_probability_diff <= INT8_TOLERANCE
    assert result.calibration_images == 8 and result.settings["format"] == "QDQ"
    int8 = resolve_model(result.path, "seg")  # an ordinary busai ONNX file: predict / serve take it as it is
    assert (int8.spec, int8.image_size, int8.mean, int8.std) == (loaded.spec, loaded.image_size, loaded.mean, loaded.std)
    meta = json.loads(int8.module.metadata["busai"])["quantization"]
    assert meta["type"] == "int8" and meta["calibration_images"] == 8
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    got, expected = predict_image(int8, image), predict_image(loaded, image, precision="fp32")
    assert got.shape == expected.shape == (64, 64)
    assert float((got - expected).abs().mean()) <= INT8_TOLERANCE
    share = kernel_profile(result.path, np.zeros((1, 3, 64, 64), np.float32))
    assert share.get("QLinearConv", 0) > 0 and "Conv" not in share  # every convolution ran as an int8 kernel
    assert abs(sum(share.values()) - 1) < 0.01


def test_quantize_refuses_onnx_and_empty_calibration(seg_int8, tmp_path):
    loaded, result, _ = seg_int8
    with pytest.raises(CheckpointError, match="already an ONNX file; quantize from a run folder"):
        quantize_int8(load_onnx(result.path), tmp_path / "x.onnx", [object()], [])
    with pytest.raises(ConfigError, match="no calibration images"):
        quantize_int8(loaded, tmp_path / "x.onnx", [], [])
    assert not (tmp_path / "x.onnx").exists()


def test_cli_quantize(seg_run, cls_run, synthetic_dir, tiny_runs, tmp_path, cli):
    out = tmp_path / "seg_int8.onnx"
    code, stdout, err = cli("export", seg_run, "--quantize", "int8", "--calib-images", "4", "--fixed-size", "--out", out)
    assert code == 0, err
    assert "int8 (QDQ), calibrated on 4 training images" in stdout and "ok" in stdout
    assert load_onnx(out).task == "segmentation"
    code, stdout, err = cli(
        "export",
        cls_run,
        "--quantize",
        "int8",
        "--calib-images",
        "4",
        "--calib-data",
        synthetic_dir,
        "--calib-splits",
        tiny_runs / "splits.json",
        "--out",
        tmp_path / "cls.onnx",
        "--json",
    )
    result = json.loads(stdout)
    assert result["task"] == "classification" and result["calibration_images"] == 4
    # A one-epoch random-init classifier moves further under int8 than a trained one; the exit code says so.
    assert code == (0 if result["ok"] else 1), err
    probs = predict_image(resolve_model(tmp_path / "cls.onnx", "cls"), np.zeros((40, 40, 3), np.uint8))
    assert probs.shape == (3,) and torch.isclose(probs.sum(), torch.tensor(1.0), atol=1e-4)


def test_cli_quantize_errors(seg_run, tmp_path, cli):
    cli.fails("export", seg_run, "--calib-data", tmp_path, "--out", tmp_path / "a.onnx", expect="--calib-data / --calib-splits only apply with --quantize int8")
    cli.fails("export", seg_run, "--quantize", "int8", "--calib-images", "0", "--out", tmp_path / "a.onnx", expect="--calib-images 0: must be at least 1")
    cli.fails(
        "export",
        seg_run,
        "--quantize",
        "int8",
        "--calib-data",
        tmp_path / "nowhere",
        "--out",
        tmp_path / "a.onnx",
        expect="is not here; pass --calib-data DIR --calib-splits FILE",
    )
    assert not (tmp_path / "a.onnx").exists()
