"""Released models shipped inside the package, and resolving any model source to a loaded model.

A release lives in ``busai/release/<task>/``: ``model.safetensors`` (fp16 weights, the package
stays small), ``config.json`` (the run's own) and ``scores.json`` (its evaluation). A model
source is ``None`` / ``"release"`` (the packaged model), a run folder, or a ``.onnx`` file from
``busai export``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from busai.errors import CheckpointError, ConfigError
from busai.models.weights import file_sha256
from busai.runs import CONFIG, LoadedModel, load_model, read_run_config, scores_dir, write_json

RELEASE_DIR = Path(__file__).with_name("release")
WEIGHTS = "model.safetensors"
SCORES = "scores.json"
MAX_RELEASE_MB = 20
TASK_FLAGS = {"segmentation": "--seg", "classification": "--cls"}


def release_dir(task: str, root: str | Path | None = None) -> Path:
    """``busai/release/<task>`` (or under ``root``, for tests and for staging a release elsewhere)."""
    from busai.models.registry import resolve_task

    return Path(root if root is not None else RELEASE_DIR) / resolve_task(task)


def make_release(run_dir: str | Path, task: str, root: str | Path | None = None) -> Path:
    """Write the run's best weights (as fp16), config and scores as the release model for ``task``."""
    from busai.report import compact_classification, compact_segmentation

    run_dir = Path(run_dir)
    out = release_dir(task, root)
    loaded = load_model(run_dir, task=out.name)  # refuses a run of the other task
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in loaded.module.state_dict().items()}
    overflow = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if overflow:
        raise CheckpointError(f"{run_dir}: weight {overflow[0]} overflows fp16; this run cannot be released as fp16")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    size_mb = tmp.stat().st_size / 2**20
    if size_mb > MAX_RELEASE_MB:
        tmp.unlink()
        raise CheckpointError(f"{run_dir}: fp16 weights are {size_mb:.1f} MB, over the {MAX_RELEASE_MB} MB package limit; release a smaller model")
    tmp.replace(out / WEIGHTS)
    shutil.copyfile(run_dir / CONFIG, out / CONFIG)
    from busai.calibration import CALIBRATION

    if (run_dir / CALIBRATION).is_file():
        shutil.copyfile(run_dir / CALIBRATION, out / CALIBRATION)
    elif (out / CALIBRATION).exists():
        (out / CALIBRATION).unlink()  # a temperature belongs to the weights it was fitted for
    from busai.provenance import TRAINING_DATA, training_data_with_content

    # What the model saw, by path and content, so scoring or fine-tuning the release can refuse images it trained on.
    write_json(out / TRAINING_DATA, {"source": f"{run_dir.name}/splits.json", "datasets": training_data_with_content(run_dir)})

    metrics_path = scores_dir(run_dir, loaded.spec, loaded.task) / "metrics.json"
    compact = compact_segmentation if loaded.task == "segmentation" else compact_classification
    try:
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{metrics_path}: not valid JSON ({exc.msg}); re-run `busai evaluate` on {run_dir}") from None
    write_json(
        out / SCORES,
        {
            "run": run_dir.name,
            "model": loaded.spec,
            "image_size": loaded.image_size,
            "weights_sha256": file_sha256(out / WEIGHTS),
            "weights_mb": round(size_mb, 2),
            "splits": {split: {"images": m.get("images"), **compact(m)} for split, m in metrics.items() if isinstance(m, dict)},
        },
    )
    return out


def load_release(task: str, root: str | Path | None = None, *, device: str = "cpu") -> LoadedModel:
    """The packaged model for ``task``; a clear error when none has been released yet."""
    folder = release_dir(task, root)
    if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
        raise CheckpointError(
            f"{folder}: no released {folder.name} model is packaged yet; train one with `busai train` "
            f"and pass its run folder instead (e.g. {TASK_FLAGS[folder.name]} RUN_DIR)"
        )
    return load_model(folder, checkpoint=WEIGHTS, device=device, task=folder.name)


def resolve_model(source: str | Path | None, task: str, *, device: str = "cpu") -> LoadedModel:
    """``None``/``"release"``, a run folder or an exported ``.onnx`` file -> a model for ``task`` (eval
    mode) on ``device`` (``auto``, ``cpu`` or ``cuda``; an ONNX file runs with ONNX Runtime's CUDA provider there)."""
    from busai.models.registry import resolve_task

    task = resolve_task(task)
    if source is None or str(source) == "release":
        return load_release(task, device=device)
    path = Path(source).expanduser()
    if path.suffix.lower() == ".onnx" or path.is_dir():
        from busai.api import load_path

        loaded = load_path(path, device=device, task=task)[0]  # also a folder from Model.save or `busai release`
    else:
        raise CheckpointError(f"{source}: not found; pass a run folder, an exported .onnx file or 'release' to {TASK_FLAGS[task]}")
    if loaded.task != task:
        raise ConfigError(f"{TASK_FLAGS[task]} {source}: is a {loaded.task} model; pass a {task} model")
    return loaded


def validation_score(run_dir: str | Path, task: str) -> float:
    """The release criterion for ``task``: validation Dice (mean over images) or validation macro-F1. Never test."""
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"{run_dir}: not a run folder; pass folders written by `busai train` and scored by `busai evaluate`")
    spec = read_run_config(run_dir).get("model_spec") if (Path(run_dir) / CONFIG).is_file() else None
    path = scores_dir(run_dir, spec or {"task": task}, task) / "metrics.json"
    try:
        val = json.loads(path.read_text())["val"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: no validation metrics; run `busai evaluate {run_dir} --split val` first") from None
    entry = val["dice"]["mean"] if val["task"] == "segmentation" else val["macro_f1"]
    return float(entry["value"])


def pick_by_validation(run_dirs: list[str | Path], task: str) -> tuple[Path, dict[str, float]]:
    """The run with the best validation score for ``task`` among ``run_dirs``, and every run's score."""
    scores = {str(r): validation_score(r, task) for r in run_dirs}
    _check_one_split(run_dirs)
    best = max(scores, key=scores.get)
    return Path(best), scores


def _check_one_split(run_dirs: list[str | Path]) -> None:
    """Validation scores compare only on the same validation images: refuse runs whose configs
    record different split files (e.g. the leaky control beside the canonical runs)."""
    first = None
    for run_dir in run_dirs:
        sha = read_run_config(run_dir).get("splits_sha256")
        if sha is None:
            continue  # a run from before split hashes were recorded: nothing to compare
        if first is None:
            first = (run_dir, sha)
        elif sha != first[1]:
            raise ConfigError(
                f"{run_dir}: trained on another split file than {first[0]} (splits_sha256 {sha[:12]} vs {first[1][:12]}); "
                "their validation scores are on different images, so pass runs made with one split file"
            )
