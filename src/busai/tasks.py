"""The task-specific pieces the engine needs: loss, validation target and validation score."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from busai.config import MASK_THRESHOLD, TrainConfig
from busai.engine import TaskAdapter
from busai.errors import ConfigError


def dice_per_image(logits: torch.Tensor, masks: torch.Tensor, threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """Hard Dice per image at a probability threshold; 1.0 when prediction and truth are both empty."""
    pred = (torch.sigmoid(logits) >= threshold).flatten(1).float()  # same rule as busai.metrics
    truth = (masks > 0.5).flatten(1).float()
    inter = (pred * truth).sum(1)
    total = pred.sum(1) + truth.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1e-9), torch.ones_like(total))


def segmentation_adapter(cfg: TrainConfig) -> TaskAdapter:
    from busai.losses import SEGMENTATION_LOSSES, build_segmentation_loss

    if cfg.loss not in SEGMENTATION_LOSSES:
        raise ConfigError(f"loss '{cfg.loss}': not a segmentation loss; use {', '.join(SEGMENTATION_LOSSES)}")
    criterion = build_segmentation_loss(cfg.loss)

    def loss(out: torch.Tensor, batch: dict) -> torch.Tensor:
        return criterion(out, batch["mask"])

    def score(out: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
        dice = dice_per_image(out, masks)
        lesion = (masks > 0.5).flatten(1).any(1)
        # Dice over lesion scans: what --select lesion_dice keeps; normals (empty truth) score apart.
        scores = {"dice": dice.mean().item()}
        if lesion.any():
            scores["lesion_dice"] = dice[lesion].mean().item()
        return scores

    def difficulty(out: torch.Tensor, batch: dict) -> torch.Tensor:
        # Hard Dice, not soft: a lesion-free image predicted empty is solved (1 − 1 = 0), while its
        # soft Dice would stay near 0 from thousands of tiny probabilities.
        return 1.0 - dice_per_image(out, batch["mask"])

    return TaskAdapter(loss=loss, target_key="mask", score=score, difficulty=difficulty)


def classification_adapter(cfg: TrainConfig, loss_name: str | None = None) -> TaskAdapter:
    from sklearn.metrics import f1_score

    from busai.losses import FocalLoss

    loss_name = loss_name or cfg.loss
    if loss_name == "focal":
        criterion = FocalLoss(alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    elif loss_name == "ce":
        criterion = torch.nn.CrossEntropyLoss()
    else:
        raise ConfigError(f"loss '{loss_name}': not a classification loss; use focal or ce")

    def loss(out: torch.Tensor, batch: dict) -> torch.Tensor:
        return criterion(out, batch["label"])

    def score(out: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        pred = out.argmax(1).numpy()
        truth = labels.numpy()
        return {
            "accuracy": float((pred == truth).mean()),
            # Over the classes the validation images have, as busai evaluate averages (busai.metrics).
            "macro_f1": float(f1_score(truth, pred, average="macro", labels=sorted(set(truth.tolist())), zero_division=0)),
        }

    def difficulty(out: torch.Tensor, batch: dict) -> torch.Tensor:
        return 1.0 - F.softmax(out, dim=1).gather(1, batch["label"][:, None])[:, 0]

    return TaskAdapter(loss=loss, target_key="label", score=score, difficulty=difficulty)


def multitask_adapter(cfg: TrainConfig) -> TaskAdapter:
    """One network, two outputs: the mask loss (``cfg.loss``) plus ``cfg.class_loss_weight`` times
    the focal loss of the class head; validation logs both tasks' scores."""
    masks = segmentation_adapter(cfg)
    labels = classification_adapter(cfg, loss_name="focal")
    weight = cfg.class_loss_weight

    def loss(out: tuple[torch.Tensor, torch.Tensor], batch: dict) -> torch.Tensor:
        return masks.loss(out[0], batch) + weight * labels.loss(out[1], batch)

    def score(out: tuple[torch.Tensor, torch.Tensor], targets: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        return masks.score(out[0], targets[0]) | labels.score(out[1], targets[1])

    def difficulty(out: tuple[torch.Tensor, torch.Tensor], batch: dict) -> torch.Tensor:
        return (masks.difficulty(out[0], batch) + labels.difficulty(out[1], batch)) / 2

    return TaskAdapter(loss=loss, target_key=("mask", "label"), score=score, difficulty=difficulty)


def adapter_for(cfg: TrainConfig) -> TaskAdapter:
    adapters = {"segmentation": segmentation_adapter, "classification": classification_adapter, "multitask": multitask_adapter}
    return adapters[cfg.task](cfg)


def probabilities(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Model output to probabilities: sigmoid of the lesion channel, or softmax over classes."""
    return torch.sigmoid(logits[:, 0]) if task == "segmentation" else F.softmax(logits, dim=1)
