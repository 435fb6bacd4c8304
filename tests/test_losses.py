"""Focal loss against hand-computed values (paper eq. 11) and the segmentation losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from busai.errors import ConfigError
from busai.losses import DiceBCELoss, DicePresenceLoss, FocalLoss, build_segmentation_loss

LOGITS = [[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]]
TARGET = [0, 2]


def _softmax_row(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _hand_focal(alpha_of_sample: list[float], gamma: float) -> list[float]:
    """-alpha_t (1 - p_t)^gamma log p_t for each sample, from the paper's equation 11."""
    losses = []
    for row, t, a in zip(LOGITS, TARGET, alpha_of_sample):
        p_t = _softmax_row(row)[t]
        losses.append(-a * (1 - p_t) ** gamma * math.log(p_t))
    return losses


def test_focal_loss_matches_hand_computation_scalar_alpha():
    # Sample 0: p_0 = e^2 / (e^2 + e^1 + e^0.1) ~ 0.659; sample 1: p_2 = e^-1 / (e^0.5 + e^2.5 + e^-1) ~ 0.0273
    expected = _hand_focal([0.25, 0.25], gamma=2.0)
    loss = FocalLoss(alpha=0.25, gamma=2.0, reduction="none")(torch.tensor(LOGITS), torch.tensor(TARGET))
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)
    mean = FocalLoss(alpha=0.25, gamma=2.0)(torch.tensor(LOGITS), torch.tensor(TARGET))
    assert mean.item() == pytest.approx(sum(expected) / 2, rel=1e-5)
    total = FocalLoss(alpha=0.25, gamma=2.0, reduction="sum")(torch.tensor(LOGITS), torch.tensor(TARGET))
    assert total.item() == pytest.approx(sum(expected), rel=1e-5)


def test_focal_loss_per_class_alpha_uses_true_class_weight():
    alpha = [0.2, 0.3, 0.5]
    expected = _hand_focal([alpha[0], alpha[2]], gamma=1.5)  # true classes 0 and 2
    loss = FocalLoss(alpha=alpha, gamma=1.5, reduction="none")(torch.tensor(LOGITS), torch.tensor(TARGET))
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_is_cross_entropy_at_gamma_0_alpha_1():
    torch.manual_seed(0)
    logits = torch.randn(8, 3) * 3
    target = torch.randint(0, 3, (8,))
    for reduction in ("mean", "sum", "none"):
        focal = FocalLoss(alpha=1.0, gamma=0.0, reduction=reduction)(logits, target)
        assert torch.allclose(focal, F.cross_entropy(logits, target, reduction=reduction), atol=1e-6)


def test_focal_loss_down_weights_easy_samples_and_has_gradients():
    logits = torch.tensor(LOGITS, requires_grad=True)
    FocalLoss(gamma=2.0)(logits, torch.tensor(TARGET)).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    easy = torch.tensor([[10.0, 0.0, 0.0]])
    assert FocalLoss(gamma=2.0)(easy, torch.tensor([0])) < 1e-3 * F.cross_entropy(easy, torch.tensor([0]))


def test_focal_loss_errors():
    with pytest.raises(ConfigError, match="focal_alpha has 2 values but the model has 3 classes"):
        FocalLoss(alpha=[0.5, 0.5])(torch.tensor(LOGITS), torch.tensor(TARGET))
    with pytest.raises(ConfigError, match="focal_gamma -1"):
        FocalLoss(gamma=-1)
    with pytest.raises(ConfigError, match="reduction 'avg'"):
        FocalLoss(reduction="avg")


def test_segmentation_losses():
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1
    perfect = (mask * 2 - 1) * 20  # logits far on the right side
    dice = build_segmentation_loss("dice")
    assert dice(perfect, mask).item() == pytest.approx(0.0, abs=1e-4)
    assert dice(-perfect, mask).item() > 0.9

    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    combined = build_segmentation_loss("dice_bce")
    assert isinstance(combined, DiceBCELoss)
    value = combined(logits, mask)
    assert value.item() == pytest.approx((dice(logits, mask) + F.binary_cross_entropy_with_logits(logits, mask)).item(), rel=1e-5)
    value.backward()
    assert logits.grad is not None
    with pytest.raises(ConfigError, match="unknown segmentation loss 'focal'; choose one of: dice, dice_bce, image_dice_bce, dice_presence, dice_topk, lovasz"):
        build_segmentation_loss("focal")


def test_image_dice_scores_each_lesion_image_alone():
    """Hand-computed: a batch of a small lesion (4 px), a large one (36 px) and a lesion-free image."""
    mask = torch.zeros(3, 1, 8, 8)
    mask[0, 0, :2, :2] = 1
    mask[1, 0, 2:8, 2:8] = 1
    right = (mask * 2 - 1) * 30  # every pixel right, with certainty
    loss = build_segmentation_loss("image_dice_bce")
    assert loss(right, mask).item() == pytest.approx(0.0, abs=1e-6)

    missed_small = right.clone()
    missed_small[0] = -30
    # Dice: (1 + 0) / 2 lesion images; BCE: 4 of 192 pixels wrong by 30 nats.
    expected = 0.5 + 4 * 30 / 192
    assert loss(missed_small, mask).item() == pytest.approx(expected, rel=1e-4)
    # The paper's batch Dice hardly notices the same miss: 1 - 2*36/(36+40).
    assert build_segmentation_loss("dice")(missed_small, mask).item() == pytest.approx(1 - 72 / 76, rel=1e-4)

    false_alarm = right.clone()
    false_alarm[2, 0, :1, :3] = 30  # 3 lesion pixels on the lesion-free image: BCE only
    assert loss(false_alarm, mask).item() == pytest.approx(3 * 30 / 192, rel=1e-4)

    empty = torch.zeros(2, 1, 8, 8)
    assert loss(torch.full_like(empty, -30.0), empty).item() == pytest.approx(0.0, abs=1e-6)


def test_presence_term_costs_a_missed_lesion_whatever_its_size():
    """Hand-computed on the same batch: a small lesion (4 px), a large one (36 px), a lesion-free image."""
    mask = torch.zeros(3, 1, 8, 8)
    mask[0, 0, :2, :2] = 1
    mask[1, 0, 2:8, 2:8] = 1
    right = (mask * 2 - 1) * 30
    loss = build_segmentation_loss("dice_presence")
    batch_dice = build_segmentation_loss("dice")
    # Presence logits: log-mean-exp of the pixels, about 30 + log(4/64) and 30 + log(36/64) for the
    # lesion images and -30 for the empty one: all right with certainty.
    assert loss(right, mask).item() == pytest.approx(0.0, abs=1e-6)

    missed_small = right.clone()
    missed_small[0] = -30  # presence logit -30 for a lesion image: 30 nats, averaged over 3 images
    assert loss(missed_small, mask).item() == pytest.approx(1 - 72 / 76 + 30 / 3, rel=1e-4)
    assert loss(missed_small, mask).item() - batch_dice(missed_small, mask).item() == pytest.approx(10, rel=1e-4)

    # A constant output c has presence logit c: BCE(c=0) = log 2 for every image.
    flat = torch.zeros(3, 1, 8, 8)
    assert loss(flat, mask).item() == pytest.approx(batch_dice(flat, mask).item() + math.log(2), rel=1e-5)

    false_alarm = right.clone()
    false_alarm[2, 0, 0, 0] = 30  # one lesion pixel on the empty image: presence 30 + log(1/64)
    expected = F.softplus(torch.tensor(30 - math.log(64))).item() / 3 + batch_dice(false_alarm, mask).item()
    assert loss(false_alarm, mask).item() == pytest.approx(expected, rel=1e-4)


def test_lovasz_scores_each_image_by_its_worst_hinge_errors():
    """Hand-computed Lovász hinge: a 4-px lesion image and an empty one, logits of +-3 when right."""
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, :2, :2] = 1
    right = (mask * 2 - 1) * 3
    loss = build_segmentation_loss("lovasz")
    assert loss(right, mask).item() == pytest.approx(0.0, abs=1e-6)
    missed = right.clone()
    missed[0] = -3  # hinge error 1 + 3 on each lesion pixel, IoU steps of 1/4: 4 * 4 * 0.25, over 2 images
    assert loss(missed, mask).item() == pytest.approx(2.0, rel=1e-5)
    false_alarm = right.clone()
    false_alarm[1, 0, 0, 0] = 1.0  # empty image: only its worst pixel counts, error 1 + 1
    assert loss(false_alarm, mask).item() == pytest.approx(1.0, rel=1e-5)


def test_config_names_every_segmentation_loss_the_module_builds():
    from busai.config import SEGMENTATION_LOSSES
    from busai.losses import _SEGMENTATION_LOSSES

    assert tuple(_SEGMENTATION_LOSSES) == SEGMENTATION_LOSSES


def test_top_k_presence_costs_a_false_blob_the_smooth_maximum_forgives():
    """Hand-computed: 8 x 8 images, top 1/16 of the pixels = 4 pixels pooled per image."""
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, 0, 2:6, 2:6] = 1  # a 16-pixel lesion; image 1 is lesion-free
    right = (mask * 2 - 1) * 30
    top_k = DicePresenceLoss(pool="top_k", top_fraction=1 / 16)
    smooth = DicePresenceLoss(pool="mean_exp")
    batch_dice = build_segmentation_loss("dice")
    assert top_k(right, mask).item() == pytest.approx(0.0, abs=1e-6)

    blob = right.clone()
    blob[1, 0, :2, :2] = 3.0  # a 4-pixel false outline at p = 0.95 on the lesion-free image
    dice = batch_dice(blob, mask).item()
    # top-k: presence logit 3, BCE softplus(3); log-mean-exp: log(4/64 * e^3) = 3 - log 16, BCE softplus(3 - log 16).
    assert top_k(blob, mask).item() == pytest.approx(dice + F.softplus(torch.tensor(3.0)).item() / 2, rel=1e-4)
    assert smooth(blob, mask).item() == pytest.approx(dice + F.softplus(torch.tensor(3 - math.log(16))).item() / 2, rel=1e-4)
    assert build_segmentation_loss("dice_topk").top_fraction == 1 / 256


def test_unknown_presence_pool_is_refused():
    with pytest.raises(ConfigError, match="unknown presence pool 'max'; choose one of: mean_exp, top_k"):
        DicePresenceLoss(pool="max")
