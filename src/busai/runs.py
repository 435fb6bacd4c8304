"""Run folders: what a training writes, and loading a trained model back from one.

A run folder holds ``config.json`` (the train config under ``"train"`` plus what was resolved:
model spec, preprocessing, weight source, library versions, split and data fingerprints),
``splits.json``, ``image_hashes.json`` (what the guard in :mod:`busai.provenance` recognises
training images by), ``history.csv``, ``checkpoint_best.safetensors``, ``checkpoint_last.pt``,
``fit.json`` and, after evaluation, ``metrics.json`` and figures.

A model source is a run folder, or a released model name (see :mod:`busai.release`).
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from busai.engine import BEST_CHECKPOINT
from busai.errors import CheckpointError, ConfigError, read_json

CONFIG = "config.json"


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ["busai", "torch", "torchvision", "segmentation-models-pytorch", "timm", "albumentations", "numpy", "scikit-learn"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_info() -> dict:
    """The CPU, whether it computes bf16 natively (which decides the default path) and the thread count."""
    from busai.engine import cpu_has_native_bf16

    name = platform.processor() or platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": name, "cpu_native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads()}


def model_label(spec: dict) -> str:
    """How tables and figures name a model: ``encoder:decoder`` for segmentation, the classifier's name otherwise."""
    return f"{spec['encoder']}:{spec['name']}" if spec.get("encoder") else spec["name"]


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_run_config(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run folder not found; pass a folder written by `busai train`")
    return read_json(
        path,
        error=CheckpointError,
        missing=f"missing; {run_dir} is not a busai run folder (train one with `busai train`)",
        fix="the run folder is damaged, retrain it",
    )


def read_metrics(run_dir: str | Path) -> dict:
    """A run's ``metrics.json`` ({} before the first evaluation); a damaged one is one error line, never replaced."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return {}
    metrics = read_json(
        path,
        error=CheckpointError,
        missing="missing",
        fix=f"repair it, or move it away to let `busai evaluate` write a new one (it holds every earlier score of {run_dir})",
    )
    if not isinstance(metrics, dict):
        raise CheckpointError(
            f"{path}: holds a JSON {type(metrics).__name__}, not the object `busai evaluate` writes; move it away to let `busai evaluate` write a new one"
        )
    return metrics


@dataclass
class LoadedModel:
    """A trained network with its preprocessing, task and provenance: what :class:`busai.api.Model` wraps.

    The backend interface (``backend``, ``supports_gradients``, ``device``, :meth:`logits`) is what
    callers ask; :class:`busai.export.OnnxLoadedModel` answers it for a network run by ONNX Runtime.
    """

    module: nn.Module
    task: str
    spec: dict
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    config: dict
    source: str
    grayscale: bool = False  # preprocessing "color": "gray" (see TrainConfig.color)
    temperature: float = 1.0  # classification logits are divided by it (busai.calibration); 1 = uncalibrated

    backend: ClassVar[str] = "torch"
    supports_gradients: ClassVar[bool] = True  # autograd runs through the network (Grad-CAM, export)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def logits(self, batch: torch.Tensor, precision: str = "auto") -> torch.Tensor:
        """Normalised (N, 3, S, S) batch -> the network's raw output, in inference mode (see busai.inference.torch_logits)."""
        from busai.inference import torch_logits

        return torch_logits(self.module, batch, precision)


def load_weights_into(module: nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc}); the file is damaged or not safetensors") from None
    state = {k: v.float() for k, v in state.items()}  # release weights are stored in fp16
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        keys = (result.missing_keys or result.unexpected_keys)[:3]
        raise CheckpointError(
            f"{path}: weights do not match the {module.__class__.__name__} described by its config.json "
            f"(first mismatched keys: {', '.join(keys)}); use the config.json that came with these weights"
        )


def model_tasks(spec: dict) -> tuple[str, ...]:
    """The tasks a stored model answers: its own, or both for a multitask network."""
    return ("segmentation", "classification") if spec.get("task") == "multitask" else (spec["task"],)


def scores_dir(run_dir: str | Path, spec: dict, task: str) -> Path:
    """Where ``busai evaluate`` keeps a run's metrics.json for ``task``: the run folder, or a
    folder per task inside it for a multitask run (its two tasks score the same splits)."""
    return Path(run_dir) / task if len(model_tasks(spec)) > 1 else Path(run_dir)


def load_model(source: str | Path, *, checkpoint: str = BEST_CHECKPOINT, device: str = "cpu", task: str | None = None) -> LoadedModel:
    """Rebuild the architecture from a run folder's config and load its best weights (eval mode) onto
    ``device`` (``auto``: the GPU when one is visible; ``cuda`` without one is a ConfigError).

    ``task`` picks what a multitask network answers (``segmentation`` or ``classification``; it
    must be given for one); for any other model it may be left out or must match."""
    from busai.calibration import read_temperature
    from busai.engine import resolve_device
    from busai.models.registry import build, resolve_task

    source = Path(source)
    target = resolve_device(device)  # a bad --device fails before anything is read
    config = read_run_config(source)
    spec = config.get("model_spec")
    pre = config.get("preprocessing")
    if not spec or not pre:
        raise CheckpointError(f"{source / CONFIG}: lacks model_spec/preprocessing; it was not written by `busai train`")
    weights_path = source / checkpoint
    if not weights_path.exists():
        raise CheckpointError(f"{weights_path}: missing; the run has not finished an epoch yet (resume it with `busai train --resume {source}`)")
    answers = model_tasks(spec)
    if task is None and len(answers) > 1:
        raise ConfigError(f"{source}: is a multitask model; say which task to load it for (segmentation or classification)")
    task = resolve_task(task) if task is not None else answers[0]
    if task not in answers:
        raise ConfigError(f"{source}: is a {spec['task']} model, not a {task} one; pass a {task} model")
    built = build(spec["task"], spec["name"], encoder=spec.get("encoder"), weights="none", num_classes=spec.get("num_classes", 3), image_size=pre["image_size"])
    load_weights_into(built.module, weights_path)
    if len(answers) > 1:
        built.module.task = task  # one output, so callers see a plain segmenter or classifier
    built.module.eval().to(target)
    return LoadedModel(
        module=built.module,
        task=task,
        spec=spec,
        image_size=int(pre["image_size"]),
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
        config=config,
        source=str(source),
        grayscale=pre.get("color") == "gray",
        temperature=read_temperature(source) if task == "classification" else 1.0,
    )


ALL_CORES_ENV = "BUSAI_ALL_CORES"  # "1": raise torch's thread count to every core (the busai command sets it)


def best_threads() -> None:
    """Use every core for intra-op work (torch's default can undercount in containers; shared among
    the processes torchrun starts on this machine) when the process asked for it with
    ``BUSAI_ALL_CORES=1``, as the ``busai`` command does; a library call otherwise leaves the
    caller's thread count alone."""
    import os

    if os.environ.get(ALL_CORES_ENV) != "1":
        return
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
