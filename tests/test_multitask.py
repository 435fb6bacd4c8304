"""The multitask network (issue 19): one encoder feeding a mask decoder and a class head. Forward
shapes and per-task outputs, the combined loss against its parts, training from a segmentation run,
and a trained run loaded, scored and saved for each task."""

from __future__ import annotations

import json

import pytest
import torch

from busai.config import TrainConfig
from busai.errors import ConfigError
from busai.models.registry import build


def test_forward_gives_both_outputs_and_each_task_alone():
    torch.manual_seed(0)
    net = build("mt", "unet", encoder="efficientnet-lite0", weights="none").module.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        masks, labels = net(x)
        assert masks.shape == (2, 1, 64, 64) and labels.shape == (2, 3)
        net.task = "segmentation"
        assert torch.equal(net(x), masks)
        net.task = "classification"  # the encoder alone, no decoder pass
        assert torch.equal(net(x), labels)


def test_multitask_loss_is_mask_loss_plus_weighted_class_loss():
    from busai.tasks import classification_adapter, multitask_adapter, segmentation_adapter

    torch.manual_seed(0)
    cfg = TrainConfig(task="mt", loss="dice", focal_alpha=0.5, focal_gamma=2.0, class_loss_weight=0.3)
    masks, labels = torch.randn(4, 1, 8, 8), torch.randn(4, 3)
    batch = {"mask": (torch.rand(4, 1, 8, 8) > 0.5).float(), "label": torch.tensor([0, 1, 2, 1])}
    seg = segmentation_adapter(TrainConfig(task="seg", loss="dice"))
    cls = classification_adapter(TrainConfig(task="cls", loss="focal", focal_alpha=0.5, focal_gamma=2.0))
    expected = seg.loss(masks, batch) + 0.3 * cls.loss(labels, batch)
    adapter = multitask_adapter(cfg)
    assert adapter.loss((masks, labels), batch).item() == pytest.approx(expected.item())
    scores = adapter.score((masks, labels), (batch["mask"], batch["label"]))
    assert set(scores) == {"dice", "lesion_dice", "accuracy", "macro_f1"}  # random masks: every image has a lesion
    assert scores["accuracy"] == pytest.approx(float((labels.argmax(1) == batch["label"]).float().mean()))


def test_config_defaults_and_checks():
    cfg = TrainConfig(task="multitask")
    assert (cfg.task, cfg.model, cfg.loss, cfg.encoder) == ("multitask", "unet", "dice", "resnet18")
    with pytest.raises(ConfigError, match="class_loss_weight=-1: must be zero or positive"):
        TrainConfig(task="mt", class_loss_weight=-1)
    with pytest.raises(ConfigError, match="lesion_paste: segmentation only"):
        TrainConfig(task="mt", lesion_paste=0.5)


def test_segmentation_weights_start_a_multitask_network(seg_run):
    from busai.runs import load_model

    seg = load_model(seg_run).module
    built = build("mt", "unet", encoder="efficientnet-lite0", weights=str(seg_run / "checkpoint_best.safetensors"), image_size=64)
    assert "new class head" in built.weight_source
    mine, theirs = built.module.state_dict(), seg.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in theirs.items())
    assert any(k.startswith("classification_head.") for k in mine)


def test_trained_run_logs_both_scores_and_loads_per_task(mt_run):
    from busai.runs import load_model

    header = (mt_run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_dice", "val_accuracy", "val_macro_f1"} <= set(header)
    with pytest.raises(ConfigError, match="is a multitask model; say which task"):
        load_model(mt_run)
    seg, cls = load_model(mt_run, task="seg"), load_model(mt_run, task="cls")
    assert (seg.task, cls.task) == ("segmentation", "classification")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        mask_only, class_only = seg.module(x), cls.module(x)
        seg.module.task = None  # training mode's view: both outputs of one pass
        masks, labels = seg.module(x)
    assert mask_only.shape == (1, 1, 64, 64) and class_only.shape == (1, 3)
    assert torch.allclose(mask_only, masks) and torch.allclose(class_only, labels, atol=1e-6)


def test_evaluate_scores_both_tasks_into_their_own_folders(cli, mt_run, synthetic_dir, tiny_runs):
    code, out, err = cli("evaluate", mt_run, "--data", synthetic_dir, "--splits", tiny_runs / "splits.json", "--split", "val", "--no-figures")
    assert code == 0, err
    seg = json.loads((mt_run / "segmentation" / "metrics.json").read_text())["val"]
    cls = json.loads((mt_run / "classification" / "metrics.json").read_text())["val"]
    assert seg["task"] == "segmentation" and "dice" in seg
    assert cls["task"] == "classification" and "macro_f1" in cls
    assert not (mt_run / "metrics.json").exists()


def test_python_api_save_and_reload_keep_outputs(mt_run, tmp_path):
    import numpy as np

    import busai

    image = (np.random.default_rng(0).random((80, 96)) * 255).astype(np.uint8)
    for task in ("seg", "cls"):
        model = busai.load(mt_run, task=task, device="cpu")
        first = model.predict(image)
        again = busai.load(model.save(tmp_path / task), task=task, device="cpu").predict(image)
        if task == "seg":
            assert np.array_equal(first.mask, again.mask)
        else:
            assert first.probabilities == pytest.approx(again.probabilities, abs=1e-6)


def test_predict_and_calibrate_take_a_multitask_run(cli, mt_run, synthetic_dir, tiny_runs, tmp_path, monkeypatch):
    import shutil

    import busai.calibration
    import busai.evaluation
    from test_calibration import stand_in_predictions

    run = shutil.copytree(mt_run, tmp_path / "mt")
    image = next(synthetic_dir.glob("benign/*).png"))
    code, out, err = cli("predict", image, "--seg", run, "--cls", run, "--out", tmp_path / "preds", "--json")
    assert code == 0, err
    row = json.loads((tmp_path / "preds" / "predictions.json").read_text())[0]
    assert row["label"] in ("normal", "benign", "malignant") and "area_px" in row
    # A handful of validation images, and a tiny model near chance: an overconfident stand-in's predictions.
    monkeypatch.setattr(busai.calibration, "MIN_IMAGES", 1)
    monkeypatch.setattr(busai.evaluation, "predict_records", stand_in_predictions([4.0, 0.0, 0.0]))
    code, out, err = cli("calibrate", run, "--data", synthetic_dir, "--splits", tiny_runs / "splits.json", "--json")
    assert code == 0, err
    monkeypatch.undo()
    from busai.runs import load_model

    assert load_model(run, task="cls").temperature == pytest.approx(json.loads((run / "calibration.json").read_text())["temperature"])
    assert load_model(run, task="seg").temperature == 1.0
