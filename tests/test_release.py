"""Release models: fp16 packaging from a run folder, loading, and the error when none is packaged."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from busai.errors import CheckpointError, ConfigError
from busai.inference import predict_image
from busai.release import MAX_RELEASE_MB, load_release, make_release, resolve_model


def test_make_and_load_release(seg_run, synthetic_dir, tiny_runs, tmp_path):
    from busai.evaluation import evaluate_run

    evaluate_run(seg_run, synthetic_dir, tiny_runs / "splits.json", "val", n_boot=10, figures=False)
    folder = make_release(seg_run, "seg", root=tmp_path)
    assert folder == tmp_path / "segmentation"
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "scores.json", "training_data.json"}
    trained_on = json.loads((folder / "training_data.json").read_text())["datasets"]
    assert trained_on[0]["train"] == json.loads((tiny_runs / "splits.json").read_text())["train"]
    weights = load_file(str(folder / "model.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["weights_mb"] <= MAX_RELEASE_MB and scores["model"]["encoder"] == "efficientnet-lite0"
    assert scores["splits"]["val"]["dice"]["mean"] is not None

    released, original = load_release("seg", root=tmp_path), resolve_model(seg_run, "seg")
    image = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)
    difference = (predict_image(released, image, precision="fp32") - predict_image(original, image, precision="fp32")).abs().max()
    assert difference < 1e-2  # fp16 storage rounds the weights, nothing more

    (folder / "model.onnx").write_bytes(b"exported from the previous weights")
    fusion = tmp_path / "classification" / "diagnosis.json"
    fusion.parent.mkdir()
    fusion.write_text('{"coef": [1, 1, -1], "intercept": 0, "segmenter": "../segmentation"}')
    make_release(seg_run, "seg", root=tmp_path)
    assert not (folder / "model.onnx").exists()  # a stale export would be what the torch-free install runs
    assert not fusion.exists()  # fitted on the replaced segmenter's outputs: its coefficients would mislead


def test_release_errors(seg_run, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="is a segmentation model, not a classification one; pass a classification model"):
        make_release(seg_run, "cls", root=tmp_path)
    monkeypatch.setattr("busai.runs.RELEASE_DIR", tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"no released classification model.*--cls RUN_DIR"):
        resolve_model("release", "cls")
    with pytest.raises(CheckpointError, match=r"no released segmentation model.*--seg RUN_DIR"):
        resolve_model(None, "seg")


def _fake_val(run, dice, splits_sha256="s1"):
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"splits_sha256": splits_sha256}))
    (run / "metrics.json").write_text(
        json.dumps(
            {"val": {"task": "segmentation", "dice": {"mean": {"value": dice}}}, "test": {"task": "segmentation", "dice": {"mean": {"value": 1 - dice}}}}
        )
    )
    return run


def test_release_picks_by_validation_never_test(tmp_path):
    from busai.release import pick_by_validation

    a, b = _fake_val(tmp_path / "a", 0.80), _fake_val(tmp_path / "b", 0.70)  # b has the better *test* score
    best, scores = pick_by_validation([a, b], "segmentation")
    assert best == a and scores == {str(a): 0.80, str(b): 0.70}


def test_release_refuses_runs_from_different_split_files(tmp_path):
    from busai.release import pick_by_validation

    a, b = _fake_val(tmp_path / "a", 0.80), _fake_val(tmp_path / "b", 0.90, splits_sha256="leaky")
    with pytest.raises(ConfigError, match=r"b: trained on another split file than .*a \(splits_sha256 leaky vs s1\)"):
        pick_by_validation([a, b], "segmentation")


def test_release_needs_validation_metrics(cli, tmp_path):
    (tmp_path / "r").mkdir()
    cli.fails("release", tmp_path / "r", "--task", "seg", expect="no validation metrics; run `busai evaluate")


def test_release_refuses_a_file_given_as_a_run(cli, tmp_path):
    log = tmp_path / "run.log"  # e.g. a shell glob runs/busi/cls-* that also matches a log file
    log.write_text("x")
    cli.fails("release", log, "--task", "cls", expect="not a run folder; pass folders written by `busai train`")
