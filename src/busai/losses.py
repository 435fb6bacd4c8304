"""Losses: focal loss for classification (paper eq. 11) and Dice / Dice+BCE for segmentation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss, LovaszLoss
from torch import nn

from busai.config import SEGMENTATION_LOSSES
from busai.errors import ConfigError

REDUCTIONS = ("mean", "sum", "none")


class FocalLoss(nn.Module):
    """Multi-class focal loss, the paper's equation 11 with one-hot ``y``:

        FL = -sum_c alpha_c * (1 - p_c)^gamma * y_c * log(p_c)  =  -alpha_t * (1 - p_t)^gamma * log(p_t)

    where ``t`` is the sample's true class and ``p = softmax(logits)``. ``alpha`` is one float (the
    same weight for every class) or one float per class. ``reduction="mean"`` averages over samples
    (it does not divide by the summed alphas, unlike ``F.cross_entropy(weight=...)``).
    With ``gamma=0`` and ``alpha=1`` it equals cross-entropy.

    Written by hand because torchvision's ``sigmoid_focal_loss`` is the binary/sigmoid form, not
    the softmax form of eq. 11.
    """

    def __init__(self, alpha: float | Sequence[float] = 1.0, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ConfigError(f"focal loss reduction '{reduction}': unknown; choose one of: {', '.join(REDUCTIONS)}")
        if gamma < 0:
            raise ConfigError(f"focal_gamma {gamma}: must be >= 0")
        alpha_tensor = torch.as_tensor(alpha, dtype=torch.float32)
        if alpha_tensor.ndim > 1 or (alpha_tensor < 0).any():
            raise ConfigError(f"focal_alpha {alpha}: must be one non-negative number or one per class")
        self.register_buffer("alpha", alpha_tensor)
        self.gamma = float(gamma)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` (N, C) and integer ``target`` (N,) -> loss (scalar, or (N,) with reduction="none")."""
        log_p = F.log_softmax(logits.float(), dim=1)  # stable log(p) even for large logits
        log_pt = log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)
        one_minus_pt = -torch.expm1(log_pt)  # 1 - p_t without cancellation when p_t is close to 1
        loss = -self._alpha_of(target, logits.shape[1]) * one_minus_pt.pow(self.gamma) * log_pt
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def _alpha_of(self, target: torch.Tensor, num_classes: int) -> torch.Tensor:
        if self.alpha.ndim == 0:
            return self.alpha
        if self.alpha.numel() != num_classes:
            raise ConfigError(f"focal_alpha has {self.alpha.numel()} values but the model has {num_classes} classes; give one per class")
        return self.alpha[target.long()]


class DiceBCELoss(nn.Module):
    """Dice loss + binary cross-entropy, both on logits (sum of the two, unweighted)."""

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(mode="binary", from_logits=True)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, mask) + self.bce(logits, mask.to(logits.dtype))


class ImageDiceBCELoss(nn.Module):
    """Soft Dice of each image that holds a lesion, averaged over the batch, + binary cross-entropy.

    The paper's Dice pools the pixels of a whole batch, so a missed small lesion barely moves it
    next to a large one: on BUSI a model trained that way returned an empty mask for a quarter of
    the benign validation images. Scored per image (as busai's mean Dice is), a missed lesion costs
    a full 1.0 whatever its size. Images without a lesion have no Dice; BCE teaches them empty masks.
    smp's multilabel Dice gives the per-image score once images are laid out as channels.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(mode="multilabel", from_logits=True)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.to(logits.dtype)
        has_lesion = mask.flatten(1).amax(1) > 0
        # smp zeroes the Dice of lesion-free channels and averages over all: rescale to a mean over lesion images.
        share = has_lesion.float().mean().clamp_min(1.0 / len(has_lesion))
        dice = self.dice(logits.transpose(0, 1), mask.transpose(0, 1)) / share
        return dice + self.bce(logits, mask)


class DicePresenceLoss(nn.Module):
    """The paper's batch Dice + a per-image "is there a lesion" cross-entropy on the same output.

    ``pool="mean_exp"``: the image's presence logit is the log-mean-exp of its pixel logits, a smooth
    maximum that also grows with the suspicious area. Where the batch-Dice models miss a lesion
    outright, every pixel sits at the same low probability; this term costs such an image as much
    as a wrong image label, whatever the lesion's size, and its gradient goes to the pixels the model
    finds most suspicious. A small false blob on a lesion-free image raises the mean little, so it is
    hardly penalised. On BUSI the model then marked something in nearly every image and still missed
    the lesions it missed before (docs/study-log.md, ``seg-lite0-unet-presence``): kept as an option.

    ``pool="top_k"``: the presence logit is the mean of the image's ``top_fraction`` highest pixel
    logits. Any confident blob of that size on a lesion-free image costs as much as a wrong image
    label, which is what a false outline on a normal scan is; on a lesion image those pixels lie in
    the lesion, where the Dice term pushes them anyway.
    Written by hand: smp's losses score pixels, none a pooled output.
    """

    POOLS = ("mean_exp", "top_k")

    def __init__(self, pool: str = "mean_exp", top_fraction: float = 1 / 256) -> None:
        super().__init__()
        if pool not in self.POOLS:
            raise ConfigError(f"unknown presence pool '{pool}'; choose one of: {', '.join(self.POOLS)}")
        self.pool, self.top_fraction = pool, top_fraction
        self.dice = DiceLoss(mode="binary", from_logits=True)

    def presence_logits(self, logits: torch.Tensor) -> torch.Tensor:
        flat = logits.float().flatten(1)
        if self.pool == "top_k":
            k = max(1, math.ceil(self.top_fraction * flat.shape[1]))
            return flat.topk(k, dim=1).values.mean(1)
        return torch.logsumexp(flat, 1) - math.log(flat.shape[1])

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        has_lesion = (mask.flatten(1).amax(1) > 0).float()
        return self.dice(logits, mask) + F.binary_cross_entropy_with_logits(self.presence_logits(logits), has_lesion)


_SEGMENTATION_LOSSES = {
    "dice": lambda: DiceLoss(mode="binary", from_logits=True),
    "dice_bce": DiceBCELoss,
    "image_dice_bce": ImageDiceBCELoss,
    "dice_presence": DicePresenceLoss,
    "dice_topk": lambda: DicePresenceLoss(pool="top_k"),
    "lovasz": lambda: LovaszLoss(mode="binary", per_image=True, from_logits=True),
}


def build_segmentation_loss(name: str = "dice") -> nn.Module:
    """``"dice"`` (smp ``DiceLoss(mode="binary", from_logits=True)``, the paper's: one Dice over the
    batch's pixels), ``"dice_bce"`` (that + BCE), ``"image_dice_bce"`` (:class:`ImageDiceBCELoss`),
    ``"dice_presence"`` / ``"dice_topk"`` (:class:`DicePresenceLoss`, log-mean-exp / top-k pooled) or ``"lovasz"`` (smp's Lovász hinge per image, a
    convex surrogate of each image's IoU, usually used to refine a Dice-trained model's borders).

    Each takes logits (N, 1, H, W) and a {0, 1} mask of the same shape.
    """
    if name not in _SEGMENTATION_LOSSES:
        raise ConfigError(f"unknown segmentation loss '{name}'; choose one of: {', '.join(SEGMENTATION_LOSSES)}")
    return _SEGMENTATION_LOSSES[name]()
