"""Train one model from a config: data, model and loaders assembled, then ``engine.fit``."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import RandomSampler, WeightedRandomSampler

from busai import distributed, guards
from busai.config import TrainConfig
from busai.engine import FitResult, fit, load_checkpoint, resolve_precision, runs_fused, seed_everything
from busai.errors import CheckpointError, ConfigError, option
from busai.models.weights import file_sha256
from busai.outputs import output_dir
from busai.runs import (  # noqa: F401  (FOLDS_SUMMARY: training.* name kept for callers)
    BEST_CHECKPOINT,
    CONFIG,
    FIT,
    FOLDS_SUMMARY,
    HASHES,
    HISTORY,
    LAST_CHECKPOINT,
    SPLITS,
    WEIGHTS,
    library_versions,
    machine_info,
    read_run_config,
    RunFolder,
    release_dir,
    write_json,
)
from busai.labels import class_names
from busai.tasks import adapter_for

log = logging.getLogger(__name__)


def _split_records(cfg: TrainConfig, classes_option=None):
    """(dataset specs, split file, train records, val records, class names, data label -> class);
    for a classifier, only images whose label is one of its classes (see :mod:`busai.labels`)."""
    from busai.data.sources import parse_data_specs
    from busai.data.splits import load_split_records, read_splits
    from busai.labels import resolve

    if not cfg.data or not cfg.splits:
        raise ConfigError(f"training needs {option('data', 'DIR')} and {option('splits', 'FILE')} (make one with `busai data split DIR --out FILE`)")
    specs = parse_data_specs(cfg.data)
    splits = read_splits(cfg.splits)
    train_records = load_split_records(specs, splits, "train", fold=cfg.fold)
    val_records = load_split_records(specs, splits, "val", fold=cfg.fold)
    classes, mapping = (), {}
    if cfg.task != "segmentation":
        asked = cfg.classes if cfg.classes is not None else classes_option
        classes, mapping = resolve(asked, (r.label for r in train_records + val_records))
        if len(classes) < 2:
            only = ", ".join(classes) or "no labelled"
            raise ConfigError(
                f"{cfg.splits}: the train split has only {only} images; a classifier needs at least two classes: add images of another class, or train seg"
            )
        train_records = [r for r in train_records if r.label in mapping]
        val_records = [r for r in val_records if r.label in mapping]
    if cfg.view == "lesion":  # the crop is cut from the image's mask: images without one cannot be shown
        maskless = [r for r in train_records + val_records if not r.segmentable]
        if maskless:
            log.info("--view lesion: %d images without a lesion mask left out (e.g. %s)", len(maskless), maskless[0].image)
        train_records = [r for r in train_records if r.segmentable]
        val_records = [r for r in val_records if r.segmentable]
    if not train_records or not val_records:
        raise ConfigError(f"{cfg.splits}: the train or val split is empty; re-run `busai data split` with more images")
    return specs, splits, train_records, val_records, classes, mapping


def _loaders(cfg: TrainConfig, image_size: int, mean, std, records):
    from busai.data.dataset import BusDataset, HardExampleSampler, ImageCache, class_balance_weights

    specs, splits, train_records, val_records, classes, mapping = records
    label_index = {label: classes.index(name) for label, name in mapping.items()} if classes else None
    if cfg.task != "classification":
        maskless = [r for r in train_records + val_records if not r.segmentable]
        if maskless:
            raise ConfigError(
                f"{maskless[0].image}: a {maskless[0].label} image without a mask ({len(maskless)} such); "
                "segmentation needs lesion masks: train `cls` on this data, or add the masks"
            )
    names = [s.name for s in specs]
    unknown = sorted(set(cfg.dataset_weights or {}) - set(names))
    if unknown:
        raise ConfigError(f"--dataset-weight {unknown[0]}=...: no --data named '{unknown[0]}'; the datasets are {', '.join(n or '(unnamed)' for n in names)}")
    cache = ImageCache()
    gray = cfg.color == "gray"
    train_ds = BusDataset(
        train_records,
        image_size,
        mean,
        std,
        augment=cfg.augment,
        cache=cache,
        seed=cfg.seed,
        lesion_paste=cfg.lesion_paste,
        grayscale=gray,
        label_index=label_index,
        lesion_margins=cfg.crop_margin if cfg.view == "lesion" else None,
    )
    lesion_margins = (cfg.view_margin,) * 2 if cfg.view == "lesion" else None  # validation: the margin prediction cuts
    val_ds = BusDataset(val_records, image_size, mean, std, cache=cache, seed=cfg.seed, grayscale=gray, label_index=label_index, lesion_margins=lesion_margins)
    class_balanced = cfg.task != "segmentation" and cfg.weighted_sampler
    base = class_balance_weights(train_ds.labels) if class_balanced else None
    if cfg.dataset_weights:
        base = _dataset_weighted(train_records, cfg.dataset_weights, base)
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.hard_examples:
        sampler = HardExampleSampler(len(train_ds), base, seed=cfg.seed)
    elif base is not None:
        sampler = WeightedRandomSampler(base, num_samples=len(train_ds), replacement=True, generator=generator)
    else:
        sampler = RandomSampler(train_ds, generator=generator)
    from busai.data.loading import train_val_loaders

    train_loader, val_loader = train_val_loaders(train_ds, val_ds, sampler, cfg.batch_size, num_workers=cfg.num_workers, device=cfg.device)
    datasets = {
        s.name: {
            "path": str(s.path),
            "train_images": sum(r.dataset == s.name for r in train_records),
            "val_images": sum(r.dataset == s.name for r in val_records),
        }
        for s in specs
    }
    return train_loader, val_loader, splits, specs, datasets


def _dataset_weighted(records, weights: dict[str, float], base: torch.Tensor | None) -> torch.Tensor:
    """Per-image draw weights giving each dataset ``weights[name]`` / sum of the draws (datasets
    without a weight count 1), keeping ``base`` (class balance) within each dataset."""
    names = [r.dataset for r in records]
    base = torch.ones(len(records), dtype=torch.double) if base is None else base.double()
    out = torch.empty_like(base)
    for name in dict.fromkeys(names):
        idx = torch.tensor([i for i, n in enumerate(names) if n == name])
        out[idx] = float(weights.get(name, 1.0)) * base[idx] / base[idx].sum()
    return out


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    quiet: bool = False,
    on_epoch: Callable[[int, dict], None] | None = None,
    command: str | None = None,
) -> FitResult:
    """Train ``cfg`` into a new ``run_dir``; a folder that already holds a trained run is refused, never
    overwritten. A run stopped before its first epoch finished (nothing to resume) is started again in place."""
    run_dir = Path(run_dir)
    distributed.init_from_env(cfg.device)  # under torchrun rank 0 alone checks and writes the run folder
    if distributed.is_main():
        guards.check_new_run_folder(run_dir)
        output_dir(run_dir, create=False)
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
    budget = {key: value for key, value in (("epochs", epochs), ("max_minutes", max_minutes), ("patience", patience)) if value is not None}
    # Re-validated with the new budget: a bad value fails here, before the config is rewritten.
    cfg = TrainConfig.from_dict({**stored.get("train", {}), **budget}, source=str(run_dir / CONFIG))
    distributed.init_from_env(cfg.device)
    output_dir(run_dir)
    commands = [*stored.get("resume_commands", []), *([command] if command is not None else [])]
    if not guards.has_trained(run_dir):
        # Stopped before its first epoch finished: nothing to resume, so it starts again in place.
        return _train(cfg, run_dir, resume=False, quiet=quiet, on_epoch=None, command=stored.get("command"), extra_config={"resume_commands": commands})
    load_checkpoint(run_dir / LAST_CHECKPOINT)  # a damaged checkpoint fails here, before the config changes

    def record() -> None:  # called once data and model are ready: a resume that fails earlier leaves no trace
        stored["train"] = cfg.to_dict()
        if command is not None:
            stored["resume_commands"] = commands
        if distributed.is_main():
            write_json(run_dir / CONFIG, stored)

    return _train(cfg, run_dir, resume=True, quiet=quiet, on_epoch=None, command=None, on_ready=record)


def resolve_weights(cfg: TrainConfig) -> Path | None:
    """``weights`` naming a model folder rather than a file: ``release`` (the packaged model for the
    task), a release folder, or a run folder (its best checkpoint). Returns the folder, and points
    ``cfg.weights`` at its weights file; None for imagenet / none / a plain file."""
    value = str(cfg.weights)
    if value.lower() in ("imagenet", "none"):
        return None
    # A multitask network starts from the released segmenter (its class head is new).
    release_task = "segmentation" if cfg.task == "multitask" else cfg.task
    folder = RunFolder(release_dir(release_task) if value == "release" else value)
    if not folder.path.is_dir():
        return Path(value).expanduser().parent if (Path(value).expanduser().parent / CONFIG).is_file() else None
    if folder.kind != "onnx" and folder.weights.is_file():  # a release's model.safetensors, a run's best checkpoint
        cfg.weights = str(folder.weights)
        return folder.path
    raise CheckpointError(f"--weights {value}: {folder.path} holds no {WEIGHTS} or {BEST_CHECKPOINT}; pass a release or finished run folder, or a weights file")


# What a model folder given as --weights decides for the run: its architecture and input.
FOLDER_OPTIONS = ("model", "encoder", "image_size", "color", "view")


def weights_folder(weights: str | None, task: str) -> Path | None:
    """The run or release folder ``weights`` names for ``task`` (``release``: the packaged model;
    the released segmenter for a multitask run), or None for imagenet / none / a weights file."""
    from busai.release import release_dir

    value = str(weights or "none")
    if value.lower() in ("imagenet", "none"):
        return None
    folder = release_dir("segmentation" if task == "multitask" else task) if value == "release" else Path(value).expanduser()
    return folder if (folder / CONFIG).is_file() else None


def folder_options(folder: Path, task: str) -> dict | None:
    """The options a run that starts from ``folder`` must share with it (:data:`FOLDER_OPTIONS`), or
    None where the folder's model is of another task (a classifier started from a segmentation
    encoder keeps its own architecture)."""
    stored = read_run_config(folder)
    spec, pre = stored.get("model_spec") or {}, stored.get("preprocessing") or {}
    same = spec.get("task") == task or (task == "multitask" and spec.get("task") == "segmentation")
    if not same or "image_size" not in pre:
        return None
    values = {"model": spec["name"], "encoder": spec.get("encoder"), "image_size": int(pre["image_size"]), "color": pre.get("color", "rgb")}
    if task == "classification":
        del values["encoder"]
        values["view"] = pre.get("view", "scan")  # a lesion-view classifier fine-tuned on whole scans would see another input
    return values


def describe_folder(folder: Path, values: dict) -> str:
    model = f"{values['model']} on {values['encoder']}" if values.get("encoder") else values["model"]
    return f"{folder} holds a {model} model at {values['image_size']} px, {values['color']} input"


def inherit_weights_folder(values: dict) -> dict:
    """Options for a run from ``values`` (a config dict of the options given) with the architecture,
    input size and colour mode of the model folder ``values["weights"]`` names filled in; a given
    option that differs from the folder's is a ConfigError naming the folder's values."""
    from busai.config import TASK_ALIASES

    task = TASK_ALIASES.get(str(values.get("task", "")).lower())
    folder = weights_folder(values.get("weights"), task) if task else None
    folder_values = folder_options(folder, task) if folder is not None else None
    if folder_values is None:
        return values
    _refuse_conflicts(values, folder_values, folder, values["weights"])
    return {**values, **folder_values}


def _same(key: str, a, b) -> bool:
    from busai.models.registry import _canonical

    if key in ("model", "encoder") and a is not None and b is not None:
        return _canonical(str(a)) == _canonical(str(b))  # names are case and -/_ insensitive
    return str(a).lower() == str(b).lower()


def _refuse_conflicts(values: dict, folder_values: dict, folder: Path, weights) -> None:
    conflicts = [key for key, value in folder_values.items() if values.get(key) is not None and not _same(key, values[key], value)]
    if conflicts:
        given = ", ".join(f"--{key.replace('_', '-')} {values[key]}" for key in conflicts)
        raise ConfigError(
            f"--weights {weights}: {describe_folder(folder, folder_values)}, but {given} was asked; "
            "drop those options (the folder's are used) or start from other weights"
        )


def check_weights_folder(cfg: TrainConfig) -> None:
    """A resolved config must match the model folder it starts from (see :func:`inherit_weights_folder`)."""
    folder = weights_folder(cfg.weights, cfg.task)
    folder_values = folder_options(folder, cfg.task) if folder is not None else None
    if folder_values is not None:
        _refuse_conflicts({key: getattr(cfg, key) for key in folder_values}, folder_values, folder, cfg.weights)
        if cfg.image_size is None:  # "the model's default" is the folder's size here
            cfg.image_size = folder_values["image_size"]


def check_weights_split(cfg: TrainConfig) -> None:
    """Refuse weights whose model trained on images that are this run's validation or test images.

    Compared by dataset fingerprint and image path (see :mod:`busai.provenance`): fine-tuning the
    release on a split file whose BUSI part is BUSI's canonical split is fine; on a split that puts
    the release's training images into validation or test it is refused. Weights with no record
    of their training data beside them are the user's responsibility. Points ``cfg.weights`` at
    the weights file when it names a model folder (see :func:`resolve_weights`).
    """
    folder = resolve_weights(cfg)
    if folder is None or not cfg.data or not cfg.splits:
        return  # imagenet / none / a bare file: nothing to compare, so no data is read here
    from busai.data.splits import load_split_records
    from busai.provenance import check_unseen, dataset_fingerprints

    roles = {"val": load_split_records(cfg.data, cfg.splits, "val", fold=cfg.fold), "test": load_split_records(cfg.data, cfg.splits, "test")}
    check_unseen(folder, roles, dataset_fingerprints(cfg.data), what=f"--weights {folder}: validating or testing on")


def _with_fingerprints(datasets: dict, splits: dict) -> dict:
    for name, entry in datasets.items():
        entry["fingerprint"] = (splits.get("datasets") or {}).get(name, {}).get("fingerprint") if name else splits.get("fingerprint")
    return datasets


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    quiet: bool,
    on_epoch,
    command: str | None,
    on_ready: Callable[[], None] | None = None,
    extra_config: dict | None = None,
) -> FitResult:
    from busai.models.registry import build
    from busai.device import best_threads

    best_threads()
    guards.validate_config(cfg)
    requested_weights = cfg.weights
    if not resume:
        check_weights_folder(cfg)
    # A resumed run keeps the classes it started with, whatever the data holds now.
    stored_classes = (read_run_config(run_dir).get("model_spec") or {}).get("classes") if resume else None
    records = _split_records(cfg, stored_classes)
    classes = records[4]
    new_head = False
    if not resume:
        folder = weights_folder(cfg.weights, cfg.task)
        check_weights_split(cfg)
        # Fine-tuning a classifier onto another label set: its class head starts new.
        new_head = cfg.task == "classification" and folder is not None and class_names(read_run_config(folder).get("model_spec")) != classes
    seed_everything(cfg.seed)  # before build: random initial weights (and heads) depend on the seed only
    # On resume the checkpoint supplies every weight: no ImageNet lookup, no warning.
    built = build(
        cfg.task,
        cfg.model,
        encoder=cfg.encoder,
        weights="none" if resume else cfg.weights,
        image_size=cfg.image_size,
        num_classes=len(classes) or 3,
        new_head=new_head,
    )
    if classes:
        built.spec["classes"] = list(classes)
    cfg.weights = requested_weights  # the config keeps what the user asked for ("release"); weight_source names the file
    image_size = built.preprocessing.image_size
    train_loader, val_loader, splits, specs, datasets = _loaders(cfg, image_size, built.preprocessing.mean, built.preprocessing.std, records)
    guards.check_class_coverage(cfg, train_loader.dataset, cfg.splits, classes)

    if resume and on_ready is not None:
        on_ready()
    if not resume and distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        guards.clear_unfinished_run(run_dir)
        precision = resolve_precision(cfg)
        resolved = {
            "command": command,
            "train": cfg.to_dict(),
            "model_spec": built.spec,
            "preprocessing": replace(built.preprocessing, color=cfg.color, view=cfg.view, margin=cfg.view_margin if cfg.view == "lesion" else 0.0).to_dict(),
            "weight_source": built.weight_source,
            "device": str(precision.device),
            "autocast": str(precision.autocast_dtype).replace("torch.", "") if precision.autocast_dtype else "none",
            "channels_last": precision.channels_last,
            "fused_optimizer": runs_fused(cfg, precision.fused_optimizer),
            "splits_sha256": file_sha256(cfg.splits),
            "data_fingerprint": splits.get("fingerprint"),
            "datasets": _with_fingerprints(datasets, splits),
            "train_images": len(train_loader.dataset),
            "val_images": len(val_loader.dataset),
            "versions": library_versions(),
            "machine": machine_info(),
            **(extra_config or {}),
        }
        write_json(run_dir / CONFIG, resolved)
        write_json(run_dir / SPLITS, splits)
        from busai.provenance import record_hashes

        # What the weights saw, by content: the guard then recognises these images in any folder.
        write_json(run_dir / HASHES, record_hashes([*train_loader.dataset.records, *val_loader.dataset.records]))
    metadata = {"busai": json.dumps({"model_spec": built.spec, "image_size": image_size})}
    return fit(
        built.module,
        adapter_for(cfg),
        train_loader,
        val_loader,
        cfg,
        run_dir,
        resume=resume,
        quiet=quiet,
        weights_metadata=metadata,
        on_epoch=on_epoch,
    )


def train_folds(cfg: TrainConfig, out_dir: str | Path, folds: int, *, quiet: bool = False, command: str | None = None) -> dict:
    """Train one run per cross-validation fold of the split file into ``OUT/fold-<i>`` and write
    ``OUT/folds.json``: each fold's best validation loss and scores, with their mean and sd.

    With ~80 validation images a single split's differences under a few points of Dice are noise;
    the spread over folds says how large that noise is. Finished folds are skipped and an
    interrupted one is resumed, so re-running the same command completes the set.
    """
    import csv
    import statistics

    from busai.data.splits import read_splits

    if not cfg.splits:
        raise ConfigError("--folds needs --splits FILE made with `busai data split ... --folds K`")
    have = len(read_splits(cfg.splits).get("folds") or [])
    if have != folds:
        raise ConfigError(
            f"--folds {folds}: {cfg.splits} has {have} folds; re-make it with `busai data split ... --folds {folds} --force` or pass --folds {have}"
        )
    if cfg.fold is not None:
        raise ConfigError("--folds trains every fold; drop --fold")
    _check_same_folds(cfg, Path(out_dir), folds)
    out_dir = output_dir(out_dir)
    rows = []
    for i in range(folds):
        run_dir = out_dir / f"fold-{i}"
        if not (run_dir / FIT).is_file():
            if (run_dir / LAST_CHECKPOINT).is_file():
                resume(run_dir, quiet=quiet, command=command)
            else:
                fold_cfg = TrainConfig.from_dict({**cfg.to_dict(), "fold": i})
                train(fold_cfg, run_dir, quiet=quiet, command=command)
        with open(run_dir / HISTORY, newline="") as handle:
            history = list(csv.DictReader(handle))
        best = min(history, key=lambda row: float(row["val_loss"]))
        rows.append({"fold": i, "run": run_dir.name, "best_epoch": int(best["epoch"]), **{k: float(v) for k, v in best.items() if k.startswith("val_")}})
    keys = [k for k in rows[0] if k.startswith("val_")]
    summary = {
        "command": command,
        "splits": cfg.splits,
        "folds": rows,
        "mean": {k: statistics.fmean(r[k] for r in rows) for k in keys},
        "sd": {k: statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0 for k in keys},
    }
    write_json(out_dir / FOLDS_SUMMARY, summary)
    return summary


def _check_same_folds(cfg: TrainConfig, out_dir: Path, folds: int) -> None:
    """Re-running ``--folds`` resumes only the same training: folds trained with other options
    would be summarised (and their command recorded) as if they were this one's."""
    for i in range(folds):
        run_dir = out_dir / f"fold-{i}"
        if not (run_dir / CONFIG).is_file():
            continue
        stored = TrainConfig.from_dict(read_run_config(run_dir).get("train", {}), source=str(run_dir / CONFIG)).to_dict()
        wanted = TrainConfig.from_dict({**cfg.to_dict(), "fold": i}).to_dict()
        differ = [key for key in wanted if wanted[key] != stored.get(key)]
        if differ:
            raise ConfigError(
                f"{out_dir}: its folds were trained with other {', '.join(differ)} ({run_dir.name}: "
                f"{', '.join(f'{k}={stored.get(k)!r}' for k in differ[:3])}); re-run the same command to resume them, or choose a new --out"
            )
