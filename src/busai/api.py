"""The Python API: ``busai.load`` any model source into one :class:`Model`, predict, save.

A :class:`Model` is a network (PyTorch or an ONNX Runtime session) with its preprocessing,
task, calibration and provenance, on one device. It wraps the loaders that already exist
(:func:`busai.runs.load_model`, :func:`busai.release.load_release`, :func:`busai.export.load_onnx`)
and the one preprocessing and forward path (:mod:`busai.inference`). ``busai predict`` and
``busai serve`` hold the same type (:func:`model_for` loads what their ``--seg`` / ``--cls`` name),
so a prediction here equals the row ``busai predict`` writes for the same scan.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from busai.errors import CheckpointError, ConfigError, DataError
from busai.pipeline import Prediction
from busai.runs import CONFIG, LoadedModel

ONNX_FILE = "model.onnx"  # what Model.save writes for an ONNX model (its metadata carries the rest)


class Model:
    """One trained model, ready to predict: use :func:`load` rather than building one by hand.

    Attributes: ``task`` ("segmentation" or "classification"), ``backend`` ("torch" or "onnx"),
    ``supports_gradients`` (autograd runs through the network: Grad-CAM, export; False for ONNX),
    ``device``, ``source`` (where it was loaded from), ``spec`` (architecture), ``preprocessing``
    (image_size, mean, std, color), ``temperature`` (classifier calibration, 1 = none),
    ``config`` (the training run's resolved config: weight source, versions, split hash ...).
    The CLI (``busai predict``, ``busai serve``) runs this same object.
    """

    def __init__(self, loaded: LoadedModel):
        # The network with its preprocessing, whatever runs it: busai.runs.LoadedModel for PyTorch,
        # busai.export.OnnxLoadedModel for ONNX Runtime; both answer the same backend interface.
        self.loaded = loaded

    task = property(lambda self: self.loaded.task)
    source = property(lambda self: self.loaded.source)
    spec = property(lambda self: self.loaded.spec)
    config = property(lambda self: self.loaded.config)
    temperature = property(lambda self: self.loaded.temperature)
    backend = property(lambda self: self.loaded.backend)
    supports_gradients = property(lambda self: self.loaded.supports_gradients)
    device = property(lambda self: self.loaded.device)

    @property
    def preprocessing(self) -> dict:
        m = self.loaded
        return {"image_size": m.image_size, "mean": list(m.mean), "std": list(m.std), "color": "gray" if m.grayscale else "rgb"}

    @property
    def network(self):
        """The ``torch.nn.Module`` (eval mode); None for an ONNX model."""
        return self.loaded.module if self.backend == "torch" else None

    def __repr__(self) -> str:
        from busai.runs import model_label

        return f"Model({self.task}, {model_label(self.spec)}, backend={self.backend}, device={self.device}, source={self.source!r})"

    def preprocess(self, image) -> torch.Tensor:
        """One scan (path, PIL image or array, as :meth:`predict` takes) -> the normalised (3, S, S) tensor the network takes."""
        from busai.inference import preprocess

        m = self.loaded
        return preprocess(to_rgb(image), m.image_size, m.mean, m.std, m.grayscale)

    def logits(self, batch: torch.Tensor, *, precision: str = "auto") -> torch.Tensor:
        """Normalised (N, 3, S, S) batch -> the network's raw output: (N, 1, S, S) lesion or (N, classes) class logits."""
        return self.loaded.logits(batch, precision)

    def probabilities(self, batch: torch.Tensor, *, tta: bool = False, precision: str = "auto", calibrated: bool = True) -> torch.Tensor:
        """Normalised (N, 3, S, S) batch -> (N, S, S) lesion or (N, classes) class probabilities on the CPU
        (calibrated by ``temperature`` unless ``calibrated=False``; ``tta``: averaged with the mirrored batch)."""
        from busai.inference import predict_tensor

        return predict_tensor(self.loaded, batch, precision, tta=tta, calibrated=calibrated)

    def gradcam(self, image, class_index: int | None = None) -> np.ndarray:
        """The scan blended with the Grad-CAM map of ``class_index`` (default: the predicted class), uint8 H x W x 3.

        Needs a classifier that ``supports_gradients`` (PyTorch, not ONNX) and the ``pytorch-grad-cam`` package.
        """
        from busai.gradcam import gradcam_heatmap

        return gradcam_heatmap(self.loaded, to_rgb(image), class_index)

    def predict(self, image, *, tta: bool = False, pixel_spacing=None, threshold: float = 0.5, precision: str = "auto"):
        """One scan (path, PIL image or array) -> :class:`Prediction`; a list of scans -> a list.

        Arrays are H x W (grey) or H x W x 3 (RGB), uint8 or float in [0, 1]. ``tta`` averages with
        the mirrored scan; ``pixel_spacing`` (mm per pixel, one value or (row, column)) adds the mm
        measurements; ``precision="fp32"`` turns off the bf16 fast path where the hardware has one.
        """
        return predict([self], image, tta=tta, pixel_spacing=pixel_spacing, threshold=threshold, precision=precision)

    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Write a model folder that :func:`load` reads back with equal outputs; returns its path.

        A PyTorch model becomes a release-style folder: ``model.safetensors`` (fp32, so nothing is
        rounded), ``config.json``, ``calibration.json`` when calibrated and ``training_data.json``
        when its training images are known (the leak guard of ``busai evaluate`` reads it). An ONNX
        model is copied as ``model.onnx``. An existing folder is replaced only with ``overwrite``.
        """
        folder = Path(folder).expanduser()
        if folder.exists() and not overwrite:
            raise CheckpointError(f"{folder}: already exists; choose a new folder or pass overwrite=True")
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            if self.backend == "onnx":
                shutil.copyfile(self.source, tmp / ONNX_FILE)
            else:
                self._write_torch(tmp)
            _replace_folder(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def _write_torch(self, out: Path) -> None:
        from safetensors.torch import save_file

        from busai.calibration import CALIBRATION
        from busai.provenance import TRAINING_DATA, training_data
        from busai.release import WEIGHTS
        from busai.runs import write_json

        state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous() for k, v in self.loaded.module.state_dict().items()}
        save_file(state, str(out / WEIGHTS))
        write_json(out / CONFIG, self.config)
        if self.temperature != 1.0:
            write_json(out / CALIBRATION, {"temperature": self.temperature, "source": self.source})
        source = Path(self.source)
        datasets = training_data(source) if source.is_dir() else None
        if datasets is not None:
            write_json(out / TRAINING_DATA, {"source": self.source, "datasets": datasets})

    def export(self, path: str | Path, **options):
        """Export to an ONNX file checked against PyTorch (the ``export`` extra); see :func:`busai.export.export_onnx`."""
        from busai.export import export_onnx

        if self.backend != "torch":
            raise CheckpointError(f"{self.source}: is already an ONNX file; export from a run folder or a release")
        return export_onnx(self.loaded, path, **options)


def load(source: str | Path = "release", *, task: str | None = None, device: str = "auto") -> Model:
    """A :class:`Model` from ``source``: ``"release"`` (the packaged model; needs ``task``), a run
    folder (its best checkpoint), a folder written by :meth:`Model.save` or ``busai release``, or
    an ``.onnx`` file from ``busai export``.

    ``task`` ("seg"/"segmentation" or "cls"/"classification") is checked against what the source
    holds; ``device`` is "auto" (a CUDA GPU when visible), "cpu", "cuda" or "cuda:N" (ONNX: CPU only).
    """
    from busai.models.registry import resolve_task

    wanted = resolve_task(task) if task is not None else None
    if source is None or str(source) == "release":
        if wanted is None:
            raise ConfigError('load("release"): say which packaged model, task="seg" or task="cls"')
        from busai.release import load_release

        loaded = load_release(wanted)
    else:
        loaded, _ = load_path(Path(source).expanduser(), str(source), task=wanted)
    if wanted is not None and loaded.task != wanted:
        raise ConfigError(f"{source}: is a {loaded.task} model, not {wanted}; pass a {wanted} model or leave task out")
    loaded.module.to(_resolve_device(device, loaded.backend, loaded.source))  # an ONNX model stays on the CPU (checked there)
    return Model(loaded)


def model_for(source, task: str, *, device: str = "cpu", backend: str = "torch", workdir: str | Path | None = None) -> Model:
    """The :class:`Model` a ``--seg`` / ``--cls`` option names (``busai predict``, ``busai serve``); errors name the option.

    ``source`` is what :func:`load` takes (``"release"`` or None for the packaged model of ``task``),
    or a model already loaded. ``device`` is auto, cpu or cuda (an ONNX file runs with ONNX Runtime's
    CUDA provider there: :func:`busai.export.onnx_providers`). ``backend="onnx"`` exports a PyTorch
    model into ``workdir`` (a new temporary folder when None) and runs that file in ONNX Runtime.
    """
    import tempfile

    from busai.models.registry import resolve_task
    from busai.release import TASK_FLAGS, resolve_model

    task = resolve_task(task)
    if isinstance(source, (Model, LoadedModel)):
        loaded = source.loaded if isinstance(source, Model) else source
        if loaded.task != task:
            raise ConfigError(f"{TASK_FLAGS[task]}: got a {loaded.task} model; pass a {task} model")
    else:
        loaded = resolve_model(source, task, device=device)
    if backend == "onnx":
        from busai.export import to_onnx_backend

        loaded = to_onnx_backend(loaded, workdir or tempfile.mkdtemp(prefix="busai-onnx-"), device)
    return Model(loaded)


def load_path(path: Path, given: str | None = None, *, device: str = "cpu", task: str | None = None) -> tuple[LoadedModel, str]:
    """A run folder, saved or release folder, or .onnx file -> (LoadedModel on ``device``, backend);
    ``task`` picks what a multitask network answers (other models ignore it)."""
    given = str(path) if given is None else given
    from busai.engine import BEST_CHECKPOINT
    from busai.export import load_onnx
    from busai.release import WEIGHTS
    from busai.runs import load_model, model_tasks, read_run_config

    if path.suffix.lower() == ".onnx" and not path.is_dir():
        return load_onnx(path, device), "onnx"
    if not path.is_dir():
        raise CheckpointError(f"{given}: not found; pass 'release', a run folder, a saved model folder or an exported .onnx file")
    if (path / ONNX_FILE).is_file() and not (path / CONFIG).exists():
        return load_onnx(path / ONNX_FILE, device), "onnx"
    spec = read_run_config(path).get("model_spec") or {}  # one clear error for a folder that holds no model
    if "task" not in spec or len(model_tasks(spec)) == 1:
        task = None  # a single-task model answers its own task; each caller checks it against the one it wants, in its own words
    if (path / WEIGHTS).is_file() and not (path / BEST_CHECKPOINT).is_file():
        return load_model(path, checkpoint=WEIGHTS, device=device, task=task), "torch"
    return load_model(path, device=device, task=task), "torch"


def predict(models: Model | Iterable[Model], images, *, tta: bool = False, pixel_spacing=None, threshold: float = 0.5, precision: str = "auto"):
    """Run a segmenter and / or a classifier (at most one of each) on one scan or a list of scans.

    One scan (a path, a PIL image or an array) gives one :class:`Prediction` holding every model's
    answer and the review note; a list or tuple of scans gives a list. See :meth:`Model.predict`.
    """
    from busai.measure import spacing_mm

    by_task = models_by_task(models)
    spacing_mm(pixel_spacing)  # a bad value fails before any image is read
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold={threshold}: must be between 0 and 1 (exclusive)")
    if isinstance(images, (list, tuple)):
        return _predict_many(by_task, [to_rgb(x) for x in images], tta, pixel_spacing, threshold, precision)
    return _predict_many(by_task, [to_rgb(images)], tta, pixel_spacing, threshold, precision)[0]


def models_by_task(models: Model | Iterable[Model]) -> dict[str, Model]:
    """{task: model} for a model or a list of them; at most one per task, at least one in all."""
    models = [models] if isinstance(models, Model) else list(models)
    by_task: dict[str, Model] = {}
    for model in models:
        if not isinstance(model, Model):
            raise ConfigError(f"predict: got a {type(model).__name__} where a model belongs; load one with busai.load(...)")
        if model.task in by_task:
            raise ConfigError(f"predict: two {model.task} models given; pass at most one segmenter and one classifier")
        by_task[model.task] = model
    if not by_task:
        raise ConfigError("predict: no model given; load one with busai.load(...)")
    return by_task


def _predict_many(by_task: dict[str, Model], images: list, tta: bool, pixel_spacing, threshold: float, precision: str) -> list[Prediction]:
    from busai.pipeline import predict_scans

    return predict_scans(list(by_task.values()), images, tta=tta, pixel_spacing=pixel_spacing, threshold=threshold, keep_probability=True, precision=precision)


def evaluate(model: Model | str | Path, data, **options) -> dict[str, dict[str, dict]]:
    """Score ``model`` (a :class:`Model`, or what ``busai evaluate`` takes: a run folder, ``"release"``,
    a release or saved folder, an .onnx file) on ``data``; the options and the result are those of
    :func:`busai.evaluation.evaluate_model`. A :class:`Model` is scored from its source, on its device."""
    from busai.evaluation import evaluate_model

    if isinstance(model, Model):
        options.setdefault("device", model.device.type)
        model = model.source
    return evaluate_model(model, data, **options)


def to_rgb(image) -> np.ndarray:
    """A path, PIL image or array -> uint8 (H, W, 3), or one clear error saying what to pass instead."""
    if isinstance(image, (str, Path)):
        from busai.data.discover import read_image

        try:
            return read_image(image, mode="RGB")
        except Image.DecompressionBombError as exc:  # Pillow's guard against absurd pixel counts
            raise DataError(f"{image}: {exc}") from None
    if isinstance(image, Image.Image):
        from busai.data.discover import pil_to_array

        return pil_to_array(image)
    if not isinstance(image, np.ndarray):
        raise DataError(f"image of type {type(image).__name__}: pass a file path, a PIL image or a numpy array (H x W or H x W x 3)")
    array = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3) or 0 in array.shape:
        raise DataError(f"image array of shape {image.shape}: pass H x W (grey) or H x W x 3 (RGB); drop an alpha channel with x[..., :3]")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise DataError("float image array with values outside [0, 1] (or not finite): scale it into [0, 1], e.g. x / 255 for 0-255 values")
        array = (array * 255.0).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise DataError(f"image array of dtype {array.dtype}: pass uint8 (0-255) or float in [0, 1], e.g. x.astype(np.float32) / x.max()")
    return np.ascontiguousarray(np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array)


def _resolve_device(device: str, backend: str, source: str):
    import re

    import torch

    from busai.engine import resolve_device

    name = str(device)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ConfigError(f"device '{device}': unknown; choose auto, cpu, cuda or cuda:N")
    if backend == "onnx":
        if name not in ("auto", "cpu"):
            raise ConfigError(f"{source}: ONNX models run on the CPU here; pass device='cpu' (or load the run folder to use {name})")
        return torch.device("cpu")
    if name.startswith("cuda:") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}': no CUDA GPU is visible; use device='cpu' or 'auto'")
    return resolve_device(name)


def _replace_folder(tmp: Path, folder: Path) -> None:
    """Move the finished ``tmp`` into place; an old folder is kept until the new one is there."""
    if not folder.exists():
        tmp.replace(folder)
        return
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    folder.replace(old)
    tmp.replace(folder)
    shutil.rmtree(old, ignore_errors=True)
