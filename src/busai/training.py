"""Train one model from a config: data, model and loaders assembled, then ``engine.fit``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import RandomSampler

from busai import distributed
from busai.config import TrainConfig
from busai.engine import FitResult, fit, resolve_precision, runs_fused, seed_everything
from busai.errors import CheckpointError, ConfigError, read_json
from busai.models.weights import file_sha256
from busai.runs import CONFIG, library_versions, machine_info, read_run_config, write_json
from busai.tasks import adapter_for


def _loaders(cfg: TrainConfig, image_size: int, mean, std):
    from busai.data.dataset import BusDataset, HardExampleSampler, ImageCache, class_balance_weights, make_weighted_sampler
    from busai.data.splits import load_split_records, read_splits

    if not cfg.data or not cfg.splits:
        raise ConfigError("training needs --data DIR and --splits FILE (make one with `busai data split DIR --out FILE`)")
    splits = read_splits(cfg.splits)
    train_records = load_split_records(cfg.data, splits, "train", fold=cfg.fold)
    val_records = load_split_records(cfg.data, splits, "val", fold=cfg.fold)
    if not train_records or not val_records:
        raise ConfigError(f"{cfg.splits}: the train or val split is empty; re-run `busai data split` with more images")
    cache = ImageCache()
    train_ds = BusDataset(train_records, image_size, mean, std, augment=cfg.augment, cache=cache, seed=cfg.seed, lesion_paste=cfg.lesion_paste)
    val_ds = BusDataset(val_records, image_size, mean, std, cache=cache, seed=cfg.seed)
    class_balanced = cfg.task == "classification" and cfg.weighted_sampler
    if cfg.hard_examples:
        sampler = HardExampleSampler(len(train_ds), class_balance_weights(train_ds.labels) if class_balanced else None, seed=cfg.seed)
    elif class_balanced:
        sampler = make_weighted_sampler(train_ds.labels, seed=cfg.seed)
    else:
        sampler = RandomSampler(train_ds, generator=torch.Generator().manual_seed(cfg.seed))
    from busai.data.loading import train_val_loaders

    train_loader, val_loader = train_val_loaders(train_ds, val_ds, sampler, cfg.batch_size, num_workers=cfg.num_workers, device=cfg.device)
    return train_loader, val_loader, splits


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    quiet: bool = False,
    on_epoch: Callable[[int, dict], None] | None = None,
    command: str | None = None,
) -> FitResult:
    """Train ``cfg`` into a new ``run_dir``; a folder that already holds a run is refused, never overwritten."""
    run_dir = Path(run_dir)
    distributed.init_from_env(cfg.device)  # under torchrun rank 0 alone checks and writes the run folder
    if (run_dir / CONFIG).exists() and distributed.is_main():
        raise CheckpointError(f"{run_dir}: already holds a run; pass --resume to continue it or choose a new --out folder")
    return _train(cfg, run_dir, resume=False, quiet=quiet, on_epoch=on_epoch, command=command)


def resume(
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    max_minutes: float | None = None,
    patience: int | None = None,
    quiet: bool = False,
    command: str | None = None,
) -> FitResult:
    """Continue an interrupted run from ``checkpoint_last.pt`` with its stored config.

    Only the budget (epochs, wall-clock minutes, patience) may change; the time already spent
    counts against ``max_minutes``. ``command`` is appended to the config's ``resume_commands``,
    so that the results name every command that shaped the run, not only the first.
    """
    run_dir = Path(run_dir)
    stored = read_run_config(run_dir)
    cfg = TrainConfig.from_dict(stored["train"], source=str(run_dir / CONFIG))
    for key, value in (("epochs", epochs), ("max_minutes", max_minutes), ("patience", patience)):
        if value is not None:
            setattr(cfg, key, value)
    stored["train"] = cfg.to_dict()
    if command is not None:
        stored["resume_commands"] = [*stored.get("resume_commands", []), command]
    distributed.init_from_env(cfg.device)
    if distributed.is_main():
        write_json(run_dir / CONFIG, stored)
    return _train(cfg, run_dir, resume=True, quiet=quiet, on_epoch=None, command=None)


def check_weights_split(cfg: TrainConfig) -> None:
    """Refuse ``weights=FILE`` from a run (or release) trained on another split.

    Its weights have seen that split's training images, which may be this run's validation or test
    images: scores would leak. The file's run folder (or release folder) records the split's sha256
    in ``config.json``; a file with no such record beside it is the user's responsibility.
    """
    if str(cfg.weights).lower() in ("imagenet", "none") or not cfg.splits:
        return
    beside = Path(cfg.weights).expanduser().parent / CONFIG
    if not beside.is_file():
        return
    trained_on = read_json(beside, missing="missing", fix="fix or remove it").get("splits_sha256")
    if trained_on and trained_on != file_sha256(cfg.splits):
        raise ConfigError(
            f"{cfg.weights}: was trained on another split than {cfg.splits} (splits_sha256 {trained_on[:12]} in {beside}); "
            "its weights have seen images that may be in this run's val or test split: use weights trained with the same --splits"
        )


def _train(cfg: TrainConfig, run_dir: Path, *, resume: bool, quiet: bool, on_epoch, command: str | None) -> FitResult:
    from busai.models.registry import build
    from busai.runs import best_threads

    best_threads()
    if not resume:
        check_weights_split(cfg)
    seed_everything(cfg.seed)  # before build: random initial weights (and heads) depend on the seed only
    # On resume the checkpoint supplies every weight: no ImageNet lookup, no warning.
    built = build(cfg.task, cfg.model, encoder=cfg.encoder, weights="none" if resume else cfg.weights, image_size=cfg.image_size)
    image_size = built.preprocessing.image_size
    train_loader, val_loader, splits = _loaders(cfg, image_size, built.preprocessing.mean, built.preprocessing.std)

    if not resume and distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        precision = resolve_precision(cfg)
        resolved = {
            "command": command,
            "train": cfg.to_dict(),
            "model_spec": built.spec,
            "preprocessing": {"image_size": image_size, "mean": list(built.preprocessing.mean), "std": list(built.preprocessing.std)},
            "weight_source": built.weight_source,
            "device": str(precision.device),
            "autocast": str(precision.autocast_dtype).replace("torch.", "") if precision.autocast_dtype else "none",
            "channels_last": precision.channels_last,
            "fused_optimizer": runs_fused(cfg, precision.fused_optimizer),
            "splits_sha256": file_sha256(cfg.splits),
            "data_fingerprint": splits.get("fingerprint"),
            "train_images": len(train_loader.dataset),
            "val_images": len(val_loader.dataset),
            "versions": library_versions(),
            "machine": machine_info(),
        }
        write_json(run_dir / CONFIG, resolved)
        write_json(run_dir / "splits.json", splits)
    metadata = {"busai": json.dumps({"model_spec": built.spec, "image_size": image_size})}
    return fit(
        built.module, adapter_for(cfg), train_loader, val_loader, cfg, run_dir,
        resume=resume, quiet=quiet, weights_metadata=metadata, on_epoch=on_epoch,
    )
