"""Model folders: the kinds busai writes, their file names, and resolving any model source to a loaded model.

:class:`RunFolder` is the one owner of both. The kinds:

- a **training run** (``busai train``): ``config.json`` (the train config under ``"train"`` plus what
  was resolved: model spec, preprocessing, weight source, library versions, split and data
  fingerprints), ``splits.json``, ``history.csv``, ``progress.png``, ``checkpoint_best.safetensors``,
  ``checkpoint_last.pt``, ``fit.json`` and, after evaluation, ``metrics.json`` and figures; a
  **multitask run** is a training run whose network answers both tasks (its scores go into one
  folder per task);
- a **release** (``busai release``, packaged in ``busai/release/<task>/``) or **saved model**
  (:meth:`busai.Model.save`): ``model.safetensors``, ``config.json``, and optionally
  ``calibration.json``, ``training_data.json`` and ``scores.json``;
- an **ONNX** model (``busai export``): a ``.onnx`` file, or a folder holding ``model.onnx`` and no
  ``config.json`` (what :meth:`busai.Model.save` writes for one); its metadata carries the rest.

:func:`resolve_model` is the one resolver: ``"release"`` / None, a folder of any kind or a ``.onnx``
file -> a :class:`~busai.backends.LoadedModel`. :func:`busai.load`, ``--seg`` / ``--cls``,
``busai evaluate``, ``busai calibrate``, ``busai release`` and ``busai export`` all go through it.
A release may also hold ``model.onnx`` (the shipped ones do: ``scripts/release_onnx.py``): without
torch (the ``onnx`` install), or with ``backend="onnx"``, that file is what loads, with the folder's calibration.
This module imports torch only inside the functions that load PyTorch weights.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from busai.backends import LoadedModel, load_onnx
from busai.config import resolve_task
from busai.device import ALL_CORES_ENV, best_threads, cpu_has_native_bf16, resolve_device  # noqa: F401  (runs.* names kept for callers)
from busai.errors import CheckpointError, ConfigError, read_json
from busai.extras import has_torch, missing_error
from busai.outputs import atomic_write_text
from busai.preprocessing import Preprocessing

# Every file name of a model folder, in one place.
CONFIG = "config.json"
SPLITS = "splits.json"
HISTORY = "history.csv"
PROGRESS = "progress.png"
FIT = "fit.json"
METRICS = "metrics.json"
BEST_CHECKPOINT = "checkpoint_best.safetensors"
LAST_CHECKPOINT = "checkpoint_last.pt"
WEIGHTS = "model.safetensors"  # a release's or saved model's weights
SCORES = "scores.json"
CALIBRATION = "calibration.json"
DIAGNOSIS = "diagnosis.json"  # a classifier's fusion with its segmenter (busai.diagnosis)
DIAGNOSIS_TASK = "diagnosis"  # evaluate's scores of the fused answer, beside segmentation/ and classification/
TRAINING_DATA = "training_data.json"
HASHES = "image_hashes.json"  # in a run folder: record key -> [sha256, phash hex] of its train and val images (busai.provenance)
ONNX_FILE = "model.onnx"  # what Model.save writes for an ONNX model
FOLDS_SUMMARY = "folds.json"
ENSEMBLE = "ensemble.json"  # an ensemble folder: task and member folder names (busai.ensemble)

RELEASE_DIR = Path(__file__).with_name("release")
TASK_FLAGS = {"segmentation": "--seg", "classification": "--cls"}
TASKS = ("segmentation", "classification")


def release_dir(task: str, root: str | Path | None = None) -> Path:
    """``busai/release/<task>`` (or under ``root``, for tests and for staging a release elsewhere)."""
    return Path(root if root is not None else RELEASE_DIR) / resolve_task(task)


def packaged_release(task: str, root: str | Path | None = None) -> RunFolder:
    """The release folder of ``task`` (see :func:`release_dir`); a clear error when none has been released yet."""
    folder = RunFolder(release_dir(task, root))
    if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
        raise CheckpointError(
            f"{folder.path}: no released {folder.path.name} model is packaged yet; train one with `busai train` "
            f"and pass its run folder instead (e.g. {TASK_FLAGS[folder.path.name]} RUN_DIR)"
        )
    return folder


class RunFolder:
    """A folder (or ``.onnx`` file) holding a model: which kind it is, where its files are, how it loads.

    ``kind`` is ``"run"`` (a training run, multitask or not), ``"release"`` (a release or saved
    model: the same files) or ``"onnx"``. Nothing is read until asked.
    """

    KINDS = ("run", "release", "onnx")

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._config: dict | None = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def exists(self) -> bool:
        return self.path.is_dir() or (self.path.suffix.lower() == ".onnx" and self.path.exists())

    @property
    def kind(self) -> str:
        if self.path.suffix.lower() == ".onnx" and not self.path.is_dir():
            return "onnx"
        if (self.path / ONNX_FILE).is_file() and not (self.path / CONFIG).exists():
            return "onnx"
        if (self.path / WEIGHTS).is_file() and not (self.path / BEST_CHECKPOINT).is_file():
            return "release"
        return "run"

    @property
    def onnx_file(self) -> Path:
        return self.path if self.path.suffix.lower() == ".onnx" and not self.path.is_dir() else self.path / ONNX_FILE

    @property
    def weights(self) -> Path:
        """The weights :meth:`load` reads: a release's ``model.safetensors``, a run's best checkpoint."""
        return self.path / (WEIGHTS if self.kind == "release" else BEST_CHECKPOINT)

    def config(self) -> dict:
        """``config.json``; one error line when the folder or the file is missing or damaged."""
        if self._config is None:
            self._config = read_run_config(self.path)
        return self._config

    def spec(self) -> dict:
        return self.config().get("model_spec") or {}

    def tasks(self) -> tuple[str, ...]:
        """The tasks the model answers: its own, or both for a multitask network."""
        return model_tasks(self.spec() or {"task": None})

    @property
    def multitask(self) -> bool:
        return len(self.tasks()) > 1

    def scores_dir(self, task: str, spec: dict | None = None) -> Path:
        """Where ``busai evaluate`` keeps this run's metrics.json for ``task``."""
        return scores_dir(self.path, spec if spec is not None else self.spec(), task)

    def metrics(self, task: str | None = None) -> dict:
        return read_metrics(self.scores_dir(task) if task is not None else self.path)

    def temperature(self) -> float:
        """The stored temperature (``calibration.json``); 1.0 (uncalibrated) when none is stored."""
        path = self.path / CALIBRATION
        if not path.is_file():
            return 1.0
        value = read_json(path, error=CheckpointError, missing="missing", fix="delete it and re-run `busai calibrate`").get("temperature")
        if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise CheckpointError(f"{path}: temperature {value!r} is not a positive number; delete it and re-run `busai calibrate`")
        return float(value)

    def load(self, *, task: str | None = None, device: str = "cpu", checkpoint: str | None = None, backend: str | None = None) -> LoadedModel:
        """The model on ``device`` (eval mode): an ONNX file in ONNX Runtime, else the architecture rebuilt
        from ``config.json`` with its weights (``checkpoint`` overrides which file). ``task`` picks what a
        multitask network answers and must be given for one; for any other model it may be left out or must match.

        ``backend``: ``"onnx"`` loads the folder's own ``model.onnx`` when it has one (its calibration.json
        applies), ``"torch"`` the PyTorch weights; None: PyTorch where torch imports, else ``model.onnx``."""
        if self.kind == "onnx":
            return load_onnx(self.onnx_file, device)
        wants_onnx = backend == "onnx" or (backend is None and not has_torch())
        if wants_onnx and checkpoint is None and self.kind == "release" and self.onnx_file.is_file():
            loaded = load_onnx(self.onnx_file, device)
            if loaded.task == "classification":  # the folder's calibration, as its PyTorch weights would have
                loaded.temperature = self.temperature()
            return loaded
        if not has_torch():
            what = f"running {self.path} in PyTorch" if backend == "torch" else f"{self.path} (PyTorch weights only, no {ONNX_FILE})"
            raise missing_error("torch", ["torch"], what)
        return _load_torch(self, checkpoint or self.weights.name, device, task)


def _load_torch(folder: RunFolder, checkpoint: str, device: str, task: str | None) -> LoadedModel:
    from busai.models.registry import build

    best_threads()  # torch is imported now: the busai command's thread count applies to it

    source = folder.path
    target = resolve_device(device)  # a bad --device fails before anything is read
    config = folder.config()
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
    preprocessing = Preprocessing.from_dict(pre)
    import torch

    # A skeleton on the meta device: the checkpoint supplies every tensor, so the random initialisation
    # a normal build does (most of a small model's load time) would only be thrown away.
    with torch.device("meta"):
        built = build(
            spec["task"], spec["name"], encoder=spec.get("encoder"), weights="none", num_classes=spec.get("num_classes", 3), image_size=preprocessing.image_size
        )
    load_weights_into(built.module, weights_path)
    if len(answers) > 1:
        built.module.task = task  # one output, so callers see a plain segmenter or classifier
    built.module.eval().to(target)
    temperature = folder.temperature() if task == "classification" else 1.0
    return LoadedModel.with_preprocessing(built.module, task, spec, preprocessing, config, str(source), temperature)


def model_folder(source: str | Path | None, task: str | None = None, *, not_found: str | None = None) -> RunFolder:
    """The folder a model source names: ``"release"`` / None (the packaged model of ``task``, which
    must then be given), or a path to a folder of any kind or a ``.onnx`` file.

    A path that is neither raises CheckpointError ``"{source}: {not_found}"`` (the caller's words,
    naming what it accepts)."""
    if source is None or str(source) == "release":
        if task is None:
            raise ConfigError("release: say which packaged model (task segmentation or classification)")
        return packaged_release(task)
    folder = RunFolder(source)
    if folder.kind != "onnx" and not folder.path.is_dir():
        raise CheckpointError(f"{source}: {not_found or 'not found; pass a run folder, a release or saved model folder, an exported .onnx file or release'}")
    return folder


def resolve_model(
    source: str | Path | None, task: str | None = None, *, device: str = "cpu", not_found: str | None = None, backend: str | None = None
) -> LoadedModel:
    """The one model resolver: ``"release"`` / None (needs ``task``), a run folder, a release or
    saved folder, or an ONNX file or folder -> the model on ``device``.

    ``task`` picks what a multitask network answers; a single-task model is loaded whatever ``task``
    says, so each caller compares ``loaded.task`` with the task it wants and says so in its own words.
    ``backend`` picks between a release's PyTorch weights and its ``model.onnx`` (:meth:`RunFolder.load`);
    with ``"onnx"`` a folder without that file still loads in PyTorch (the caller exports it)."""
    task = resolve_task(task) if task is not None else None
    if source not in (None, "release") and (Path(source) / ENSEMBLE).is_file():
        return _load_ensemble(Path(source), task, device, backend)
    folder = model_folder(source, task, not_found=not_found)
    if folder.kind == "onnx":
        return folder.load(device=device)
    folder.config()  # one clear error for a folder that holds no model
    return folder.load(task=task if folder.multitask else None, device=device, backend=backend)


def _load_ensemble(folder: Path, task: str | None, device: str, backend: str | None = None):
    """An ensemble folder's members, each resolved as any model folder, as one backend."""
    from busai.backends import EnsembleLoaded

    info = read_json(folder / ENSEMBLE, missing="not an ensemble folder", fix="write it with busai.ensemble.save_ensemble")
    names = info.get("members") if isinstance(info, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and "/" not in n and n not in (".", "..") for n in names):
        raise CheckpointError(f"{folder / ENSEMBLE}: 'members' must list the member folder names; write it again with busai.ensemble.save_ensemble")
    # The ensemble's task, so a multitask member answers for it (a saved multitask run holds both heads).
    task = task or info.get("task")
    return EnsembleLoaded([resolve_model(folder / name, task, device=device, backend=backend) for name in names], source=str(folder))


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
    """The CPU, its relevant instruction-set flags (:mod:`busai.machine`; a oneDNN ISA cap is recorded
    and applied), whether it computes bf16 natively (which decides the default path) and the thread count."""
    import torch

    from busai.machine import cpu_flags, cpu_model, isa_cap

    info = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cpu_native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads()}
    return info | ({"isa_cap": isa_cap()} if isa_cap() else {})


def model_label(spec: dict) -> str:
    """How tables and figures name a model: ``encoder:decoder`` for segmentation, the classifier's name otherwise."""
    return f"{spec['encoder']}:{spec['name']}" if spec.get("encoder") else spec["name"]


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically (:func:`busai.outputs.atomic_write`)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


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
    path = Path(run_dir) / METRICS
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


def load_weights_into(module, path: Path) -> None:
    """``path``'s safetensors into the ``torch.nn.Module`` ``module``; one error line when they do not match.

    A module built on the meta device (no storage) takes the file's tensors as its own, each in the
    dtype the module declares; it must then come out with no meta tensor left."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc}); the file is damaged or not safetensors") from None
    own = module.state_dict()
    # Release weights are stored in fp16; each tensor takes the module's dtype (float32; integer counters stay integers).
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    on_meta = any(t.is_meta for t in own.values())
    result = module.load_state_dict(state, strict=False, assign=on_meta)
    if result.missing_keys or result.unexpected_keys:
        keys = (result.missing_keys or result.unexpected_keys)[:3]
        raise CheckpointError(
            f"{path}: weights do not match the {module.__class__.__name__} described by its config.json "
            f"(first mismatched keys: {', '.join(keys)}); use the config.json that came with these weights"
        )
    if on_meta:
        import itertools

        left = [name for name, t in itertools.chain(module.named_parameters(), module.named_buffers()) if t.is_meta]
        if left:  # a tensor the architecture keeps outside its state dict: a bug in busai, not in the file
            raise RuntimeError(f"{module.__class__.__name__}: {', '.join(left[:3])} not in its state dict; it cannot be loaded from a skeleton")


def model_tasks(spec: dict) -> tuple[str, ...]:
    """The tasks a stored model answers: its own, or both for a multitask network."""
    return TASKS if spec.get("task") == "multitask" else (spec["task"],)


def scores_dir(run_dir: str | Path, spec: dict, task: str) -> Path:
    """Where ``busai evaluate`` keeps a run's metrics.json for ``task``: the run folder, or a
    folder per task inside it for a multitask run (its two tasks score the same splits)."""
    return Path(run_dir) / task if len(model_tasks(spec)) > 1 else Path(run_dir)


def load_model(source: str | Path, *, checkpoint: str = BEST_CHECKPOINT, device: str = "cpu", task: str | None = None) -> LoadedModel:
    """A run folder's model rebuilt from its config with ``checkpoint`` (default: its best weights), eval
    mode, on ``device`` (``auto``: the GPU when one is visible; ``cuda`` without one is a ConfigError).
    See :meth:`RunFolder.load`."""
    return _load_torch(RunFolder(source), checkpoint, device, task)
