"""The segmentation recipe's options: framing crops, best epoch by lesion Dice, weight EMA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from busai.config import TrainConfig
from busai.data.dataset import build_augmentations
from busai.errors import ConfigError
from busai.tasks import segmentation_adapter


def test_framing_crops_keep_size_and_move_the_mask_with_the_image():
    augment = build_augmentations("framing", seed=0, size=64)
    image = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    image[20:40, 20:40] = 200
    mask[20:40, 20:40] = 1
    zoomed = 0
    for seed in range(20):
        augment.set_random_seed(seed)
        out = augment(image=image, mask=mask)
        assert out["image"].shape == (64, 64, 3) and out["mask"].shape == (64, 64)
        lesion = out["mask"].astype(bool)
        # The lesion's pixels stay bright wherever the crop puts them (geometry shared, gain aside).
        if lesion.sum() > 20:
            assert out["image"][lesion].mean() > 3 * max(out["image"][~lesion].mean(), 1)
        zoomed += lesion.sum() > mask.sum() * 1.1
    assert zoomed > 0  # crops under the full frame enlarge the lesion


def test_lesion_dice_scores_only_scans_with_a_lesion():
    adapter = segmentation_adapter(TrainConfig(task="seg"))
    masks = torch.zeros(2, 1, 4, 4)
    masks[0, 0, :2, :2] = 1  # a lesion of 4 pixels; image 1 is normal
    logits = torch.full((2, 1, 4, 4), -10.0)
    logits[0, 0, :2, :1] = 10  # 2 of its 4 pixels found: Dice 2*2/(2+4) = 2/3
    logits[1, 0, 0, 0] = 10  # a false outline on the normal scan: Dice 0
    scores = adapter.score(logits, masks)
    assert scores["lesion_dice"] == pytest.approx(2 / 3)
    assert scores["dice"] == pytest.approx(1 / 3)
    assert "lesion_dice" not in adapter.score(logits[1:], masks[1:])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"select": "auc"}, "select 'auc': unknown"),
        ({"task": "cls", "select": "lesion_dice"}, "segmentation and multitask only"),
        ({"ema": 1.5}, "ema=1.5: must be a decay between 0 and 1"),
    ],
)
def test_recipe_options_refused_in_one_line(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


@pytest.mark.slow  # trains or starts processes
def test_ema_and_lesion_dice_selection_train_save_and_resume(synthetic_dir, tmp_path):
    from busai.data.discover import discover_records
    from busai.data.splits import make_splits, write_splits
    from busai.engine import BEST_CHECKPOINT, load_checkpoint
    from safetensors.torch import load_file

    from busai.training import resume, train

    splits = tmp_path / "splits.json"
    write_splits(splits, make_splits(discover_records(synthetic_dir), [], val=0.25, test=0.1, seed=0))
    cfg = TrainConfig(
        task="seg",
        model="unet",
        encoder="efficientnet-lite0",
        weights="none",
        image_size=64,
        epochs=1,
        lr=1e-2,
        batch_size=2,
        augment="framing",
        select="lesion_dice",
        ema=0.9,
        data=str(synthetic_dir),
        splits=str(splits),
    )
    run = tmp_path / "run"
    train(cfg, run, quiet=True)
    state = load_checkpoint(run / "checkpoint_last.pt")
    # The saved best weights are the moving average's, not the last raw weights.
    ema_weights = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    raw = state["model"]
    assert state["ema"]["n_averaged"] > 1  # several steps averaged
    history = state["history"]
    best = max(history, key=lambda row: row["val_lesion_dice"])
    assert state["best_epoch"] == best["epoch"]
    loaded = load_file(str(run / BEST_CHECKPOINT))
    names = [k for k in raw if raw[k].dtype.is_floating_point]
    # One epoch: the best is the last, so the saved weights are exactly the average's, and differ from the raw ones.
    assert all(torch.equal(loaded[k], ema_weights[k].to(loaded[k].dtype)) for k in names)
    assert max((loaded[k] - raw[k].to(loaded[k].dtype)).abs().max().item() for k in names) > 1e-4
    assert (run / BEST_CHECKPOINT).exists()
    # Resume continues the average (a second epoch) rather than restarting it.
    resume(run, epochs=2, quiet=True)
    assert len(load_checkpoint(run / "checkpoint_last.pt")["history"]) == 2


def test_component_features_of_a_constructed_map():
    from busai.presence import component_features

    prob = np.zeros((10, 10), np.float32)
    prob[0:4, 0:5] = 0.8  # the largest component: 20 of 100 pixels
    prob[2, 2] = 0.95
    prob[8, 8] = 0.99  # a one-pixel speck with the map's peak
    features = component_features(prob)
    assert features == {"max_prob": pytest.approx(0.99), "largest_area": 0.2, "largest_peak": pytest.approx(0.95), "components": 2}
    assert component_features(np.full((4, 4), 0.3))["largest_area"] == 0.0


def test_presence_rule_empties_weak_outlines_and_keeps_sure_ones():
    from busai.presence import PresenceRule

    rule = PresenceRule(min_peak=0.9, min_area=0.05)
    sure = np.zeros((10, 10), np.float32)
    sure[0:4, 0:5] = 0.95
    weak = np.zeros((10, 10), np.float32)
    weak[0:4, 0:5] = 0.7  # large but unsure: a false outline
    speck = np.zeros((10, 10), np.float32)
    speck[5, 5] = 0.99  # sure but 1% of the image
    assert rule.apply(sure).sum() == 20
    assert rule.apply(weak).sum() == 0
    assert rule.apply(speck).sum() == 0


def test_presence_rule_fit_separates_normals_from_lesions():
    from busai.presence import PresenceRule

    # Lesion scans found with peaks >= 0.9; normals outlined with peaks <= 0.7.
    lesions = [{"largest_peak": p, "largest_area": 0.1, "dice": 0.8, "lesion": True, "tp": 10} for p in (0.9, 0.95, 0.99)]
    normals = [{"largest_peak": p, "largest_area": 0.1, "dice": 0.0, "lesion": False, "tp": 0} for p in (0.55, 0.6, 0.7)]
    rule = PresenceRule.fit(lesions + normals)
    assert 0.7 < rule.min_peak <= 0.9
    assert all(rule.keeps(r) for r in lesions) and not any(rule.keeps(r) for r in normals)
    assert PresenceRule.from_dict(rule.to_dict()) == rule
    with pytest.raises(ConfigError, match="must lie between 0 and 1"):
        PresenceRule.from_dict({"min_peak": 2, "min_area": 0})
