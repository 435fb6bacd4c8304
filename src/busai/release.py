"""Released models shipped inside the package: making one, and choosing the run to release.

A release lives in ``busai/release/<task>/``: ``model.safetensors`` (fp16 weights, the package
stays small), ``config.json`` (the run's own), ``scores.json`` (its evaluation) and ``model.onnx``
(the same network for the torch-free install, written by ``scripts/release_onnx.py``). Its file
names and how it loads belong to :class:`busai.runs.RunFolder`; any model source resolves through
:func:`busai.runs.resolve_model`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from busai.errors import CheckpointError, ConfigError
from busai.export import load_backend
from busai.models.weights import file_sha256
from busai.outputs import atomic_path, atomic_write
from busai.report import compact_classification, compact_segmentation
from busai.runs import (  # noqa: F401  (RELEASE_DIR, TASK_FLAGS, release_dir: release.* names kept for callers)
    DIAGNOSIS_TASK,
    CALIBRATION,
    CONFIG,
    DIAGNOSIS,
    METRICS,
    ONNX_FILE,
    RELEASE_DIR,
    SCORES,
    SPLITS,
    TASK_FLAGS,
    TRAINING_DATA,
    WEIGHTS,
    LoadedModel,
    RunFolder,
    load_model,
    packaged_release,
    read_run_config,
    release_dir,
    scores_dir,
    write_json,
)

MAX_RELEASE_MB = 20


def portable_weight_source(source: str | None) -> str | None:
    """A weight source without the absolute path of the machine that wrote it (what a release ships
    and what tables show): ``file: /home/me/runs/x/best.safetensors (sha256 ...)`` becomes
    ``file: x/best.safetensors (sha256 ...)``, the packaged release's own file
    ``file: release/<task>/model.safetensors (...)``; the checksum says which file it was."""
    if not source or not source.startswith("file: "):
        return source
    text, sep, rest = source.removeprefix("file: ").partition(" (")
    path = Path(text)
    if not path.is_absolute():
        return source
    short = f"{path.parent.parent.name}/{path.parent.name}/{path.name}" if path.parent.parent.name == "release" else f"{path.parent.name}/{path.name}"
    return f"file: {short}{sep}{rest}"


def make_release(run_dir: str | Path, task: str, root: str | Path | None = None) -> Path:
    """Write the run's best weights (as fp16), config and scores as the release model for ``task``."""
    run_dir = Path(run_dir)
    out = release_dir(task, root)
    loaded = load_model(run_dir, task=out.name)  # refuses a run of the other task
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in loaded.module.state_dict().items()}
    overflow = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if overflow:
        raise CheckpointError(f"{run_dir}: weight {overflow[0]} overflows fp16; this run cannot be released as fp16")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(state, str(tmp))
        size_mb = tmp.stat().st_size / 2**20
        if size_mb > MAX_RELEASE_MB:
            raise CheckpointError(f"{run_dir}: fp16 weights are {size_mb:.1f} MB, over the {MAX_RELEASE_MB} MB package limit; release a smaller model")
    config = read_run_config(run_dir)
    config["weight_source"] = portable_weight_source(config.get("weight_source"))
    write_json(out / CONFIG, config)
    if (run_dir / CALIBRATION).is_file():
        atomic_write(out / CALIBRATION, lambda tmp: shutil.copyfile(run_dir / CALIBRATION, tmp))
    elif (out / CALIBRATION).exists():
        (out / CALIBRATION).unlink()  # a temperature belongs to the weights it was fitted for
    # A fusion was fitted on the outputs of the pair it was stored with: replacing either model
    # makes its coefficients mean something else (re-fit: benchmarks/diagnosis_fusion.py --write).
    stale_fusion = out.parent / "classification" / DIAGNOSIS
    if stale_fusion.exists():
        stale_fusion.unlink()
        logging.getLogger(__name__).info(f"{stale_fusion}: removed (fitted with the models just replaced)")
    if (out / ONNX_FILE).exists():  # exported from the weights just replaced: the torch-free install would run the old model
        (out / ONNX_FILE).unlink()
        logging.getLogger(__name__).info(f"{out / ONNX_FILE}: removed (it held the previous weights); write the new one with `python scripts/release_onnx.py`")

    from busai.provenance import training_data_with_content

    # What the model saw, by path and content, so scoring or fine-tuning the release can refuse images it trained on.
    write_json(out / TRAINING_DATA, {"source": f"{run_dir.name}/{SPLITS}", "datasets": training_data_with_content(run_dir)})

    metrics_path = scores_dir(run_dir, loaded.spec, loaded.task) / METRICS
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


def rescore_release(evaluation: str | Path, root: str | Path | None = None) -> list[Path]:
    """Replace the scores in each packaged model's ``scores.json`` by those of the packaged model
    itself, read from what ``busai evaluate release --out EVALUATION`` wrote: the shipped fp16
    weights with their stored temperature are what users get, so the README, the model card and
    ``busai evaluate release`` all show those numbers (the run's own scores, which make_release
    copies, are of its fp32 weights and may be of an earlier calibration)."""
    from busai.report import compact_classification, compact_segmentation

    written = []
    for task in ("segmentation", "classification"):
        metrics_path = Path(evaluation) / task / METRICS
        if not metrics_path.is_file():
            continue
        metrics = json.loads(metrics_path.read_text())
        folder = release_dir(task, root)
        scores = json.loads((folder / SCORES).read_text())
        sources = {str(m.get("model_source")) for m in metrics.values() if isinstance(m, dict)}
        if any(Path(source).resolve() != folder.resolve() for source in sources):
            raise CheckpointError(
                f"{metrics_path}: not scores of the packaged model (model {', '.join(map(str, sources))}); run `busai evaluate release ... --out DIR`"
            )
        compact = compact_segmentation if task == "segmentation" else compact_classification
        scores["splits"] = {key: {"images": m.get("images"), **compact(m)} for key, m in metrics.items() if isinstance(m, dict)}
        scores["scored_by"] = sorted({m.get("command") for m in metrics.values() if isinstance(m, dict) and m.get("command")})
        diagnosis_path = Path(evaluation) / DIAGNOSIS_TASK / METRICS
        if task == "classification" and diagnosis_path.is_file():  # the fused answer predict gives, beside the classifier's
            fused = json.loads(diagnosis_path.read_text())
            scores[DIAGNOSIS_TASK] = {key: {"images": m.get("images"), **compact(m)} for key, m in fused.items() if isinstance(m, dict)}
        write_json(folder / SCORES, scores)
        written.append(folder / SCORES)
    if not written:
        raise CheckpointError(f"{evaluation}: holds no segmentation/ or classification/ metrics.json; pass the --out folder of `busai evaluate release`")
    return written


def load_release(task: str, root: str | Path | None = None, *, device: str = "cpu") -> LoadedModel:
    """The packaged model for ``task``; a clear error when none has been released yet."""
    folder = packaged_release(task, root)
    return folder.load(task=folder.path.name, device=device)


def resolve_model(source: str | Path | None, task: str, *, device: str = "cpu") -> LoadedModel:
    """``None``/``"release"``, a run folder or an exported ``.onnx`` file -> a model for ``task`` (eval
    mode) on ``device``; errors name ``--seg`` / ``--cls`` (:func:`busai.export.load_backend`)."""
    return load_backend(source, task, device=device)


def validation_score(run_dir: str | Path, task: str) -> float:
    """The release criterion for ``task``: validation Dice (mean over images) or validation macro-F1. Never test."""
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"{run_dir}: not a run folder; pass folders written by `busai train` and scored by `busai evaluate`")
    spec = read_run_config(run_dir).get("model_spec") if (Path(run_dir) / CONFIG).is_file() else None
    path = scores_dir(run_dir, spec or {"task": task}, task) / METRICS
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
