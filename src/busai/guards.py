"""Checks a training run passes before it writes anything, and the state of a run folder.

They live apart from :mod:`busai.training` so that train / resume stay short: each is one call
there, made before the run folder is created or its config rewritten.
"""

from __future__ import annotations

from pathlib import Path

from busai import CLASSES
from busai.config import TrainConfig
from busai.errors import CheckpointError, ConfigError
from busai.runs import BEST_CHECKPOINT, CONFIG, FIT, HISTORY, LAST_CHECKPOINT

# Files a run folder gains once its first epoch has finished (or a finished tune trial keeps).
EPOCH_FILES = (LAST_CHECKPOINT, HISTORY, FIT)


def validate_config(cfg: TrainConfig) -> None:
    """What TrainConfig cannot check alone (the loss name belongs to the task adapter), before any write."""
    from busai.engine import build_optimizer, build_scheduler
    from busai.tasks import adapter_for

    adapter_for(cfg)
    import torch

    # A one-parameter optimizer and scheduler: catches what torch itself refuses (e.g. betas outside [0, 1)).
    try:
        optimizer = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
        build_scheduler(cfg, optimizer)
    except ValueError as exc:
        raise ConfigError(f"{cfg.optimizer} optimizer: {exc}; fix the option") from None


def check_class_coverage(cfg: TrainConfig, train_dataset, splits_file: str | None, classes=CLASSES) -> None:
    """A classifier learns the classes its training split shows: refuse one that misses any of ``classes``.

    Trained without a class, the model still outputs a probability for it, near zero and
    meaningless, and nothing in its scores says so.
    """
    if cfg.task == "segmentation":
        return
    if len(classes) < 2:
        raise ConfigError(f"{splits_file}: the training images are all {''.join(classes) or 'unlabelled'}; a classifier needs images of at least 2 classes")
    present = {int(label) for label in train_dataset.labels}
    missing = [name for i, name in enumerate(classes) if i not in present]
    if missing:
        raise ConfigError(
            f"{splits_file}: the train split has no {' and no '.join(missing)} images, but the classifier predicts "
            f"{', '.join(classes)}; add images of every class and re-run `busai data split`, or leave the class out with --classes"
        )


def has_trained(run_dir: Path) -> bool:
    """Whether any epoch of this run has finished: then it is resumed, never restarted."""
    return any((run_dir / name).exists() for name in EPOCH_FILES)


def check_new_run_folder(run_dir: Path) -> bool:
    """Refuse a folder holding a trained run; True when it holds a run that never finished an epoch (restart it)."""
    if not (run_dir / CONFIG).exists():
        return False
    if has_trained(run_dir):
        raise CheckpointError(f"{run_dir}: already holds a run; pass --resume to continue it or choose a new --out folder")
    return True


def clear_unfinished_run(run_dir: Path) -> None:
    """Remove what a run that never finished an epoch may have left (a best checkpoint saved just before a kill)."""
    (run_dir / BEST_CHECKPOINT).unlink(missing_ok=True)
    for name in (BEST_CHECKPOINT, LAST_CHECKPOINT):  # a kill between write and rename (busai.outputs.atomic_path's names)
        for tmp in run_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
