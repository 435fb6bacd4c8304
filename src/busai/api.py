"""The Python API: ``busai.load`` any model source into one :class:`Model`, predict, save.

A :class:`Model` is a network (PyTorch or an ONNX Runtime session) with its preprocessing,
task, calibration and provenance, on one device: the one object with ``predict``, ``evaluate``,
``calibrate``, ``export`` and ``save``, each a thin call of the library function that does the
work. Any model source resolves through :func:`busai.runs.resolve_model`; prediction runs the one
preprocessing and forward path (:mod:`busai.inference`) through the per-scan pipeline of
:mod:`busai.prediction`, so a prediction here equals the row ``busai predict`` writes for the same scan.

This module sits at the top of the library: nothing below it imports it. It imports torch only
where a PyTorch model needs it: without torch (the ``onnx`` install), :func:`load` gives a release's
``model.onnx`` run by ONNX Runtime, and tensors are numpy arrays.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from busai.config import MASK_THRESHOLD
from busai.backends import LoadedModel
from busai.device import model_device
from busai.errors import CheckpointError, ConfigError
from busai.outputs import atomic_folder
from busai.pipeline import Prediction, models_by_task  # noqa: F401  (api.models_by_task kept for callers)
from busai.preprocessing import to_rgb  # noqa: F401  (api.to_rgb kept for callers: the one array-to-RGB rule)
from busai.runs import CALIBRATION, CONFIG, ONNX_FILE, TRAINING_DATA, WEIGHTS, resolve_model, write_json


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
    def classes(self) -> tuple[str, ...] | None:
        """A classifier's class names in output order (see :mod:`busai.labels`); None for a segmenter."""
        from busai.labels import class_names

        return class_names(self.spec) if self.task == "classification" else None

    @property
    def preprocessing(self) -> dict:
        """:class:`busai.preprocessing.Preprocessing` as stored in config.json and ONNX metadata."""
        return self.loaded.preprocessing.to_dict()

    @property
    def network(self):
        """The ``torch.nn.Module`` (eval mode); None for an ONNX model."""
        return self.loaded.module if self.backend == "torch" else None

    def __repr__(self) -> str:
        from busai.runs import model_label

        return f"Model({self.task}, {model_label(self.spec)}, backend={self.backend}, device={self.device}, source={self.source!r})"

    def preprocess(self, image):
        """One scan (path, PIL image or array, as :meth:`predict` takes) -> the normalised (3, S, S) tensor the
        network takes (a numpy array where torch is not installed)."""
        from busai.inference import model_input

        return model_input(self.loaded, to_rgb(image))

    def logits(self, batch, *, precision: str = "auto"):
        """Normalised (N, 3, S, S) batch -> the network's raw output: (N, 1, S, S) lesion or (N, classes) class logits."""
        return self.loaded.logits(batch, precision)

    def probabilities(self, batch, *, tta: bool = False, precision: str = "auto", calibrated: bool = True):
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

    def predict(self, image, *, tta: bool = False, pixel_spacing=None, threshold: float = MASK_THRESHOLD, precision: str = "auto"):
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
        with atomic_folder(folder) as tmp:
            if self.backend == "onnx":
                shutil.copyfile(self.source, tmp / ONNX_FILE)
            else:
                self._write_torch(tmp)
        return folder

    def _write_torch(self, out: Path) -> None:
        from safetensors.torch import save_file

        from busai.provenance import training_data

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

    def evaluate(self, data, **options) -> dict[str, dict[str, dict]]:
        """Score this model on ``data``: :func:`busai.evaluate` (options and result of :func:`busai.evaluation.evaluate_model`)."""
        return evaluate(self, data, **options)

    def calibrate(self, data, splits_file: str | Path, *, force: bool = False) -> dict:
        """Fit a classifier's temperature on its run's validation split and store it beside the run
        (:func:`busai.calibration.fit_calibration`); this model then predicts with it. Needs a model
        loaded from a classification (or multitask) run folder."""
        from busai.calibration import fit_calibration

        result = fit_calibration(self.source, data, splits_file, force=force)
        if self.task == "classification":
            self.loaded.temperature = float(result["temperature"])
        return result


def load(source: str | Path = "release", *, task: str | None = None, device: str = "auto") -> Model:
    """A :class:`Model` from ``source``: ``"release"`` (the packaged model; needs ``task``), a run
    folder (its best checkpoint), a folder written by :meth:`Model.save` or ``busai release``, or
    an ``.onnx`` file from ``busai export``.

    ``task`` ("seg"/"segmentation" or "cls"/"classification") is checked against what the source
    holds; ``device`` is "auto" (a CUDA GPU when visible), "cpu", "cuda" or "cuda:N" (ONNX: CPU only).
    """
    from busai.config import resolve_task

    wanted = resolve_task(task) if task is not None else None
    if (source is None or str(source) == "release") and wanted is None:
        raise ConfigError('load("release"): say which packaged model, task="seg" or task="cls"')
    not_found = "not found; pass 'release', a run folder, a saved model folder or an exported .onnx file"
    loaded = resolve_model(source, wanted, not_found=not_found)
    if wanted is not None and loaded.task != wanted:
        raise ConfigError(f"{source}: is a {loaded.task} model, not {wanted}; pass a {wanted} model or leave task out")
    loaded.module.to(model_device(device, loaded.backend, loaded.source))  # an ONNX model stays on the CPU (checked there)
    return Model(loaded)


def model_for(source, task: str, *, device: str = "cpu", backend: str = "auto", workdir: str | Path | None = None) -> Model:
    """The :class:`Model` a ``--seg`` / ``--cls`` option names (``busai predict``, ``busai serve``); errors name the option.

    ``source`` is what :func:`load` takes (``"release"`` or None for the packaged model of ``task``),
    or a model already loaded. ``device`` is auto, cpu or cuda (an ONNX file runs with ONNX Runtime's
    CUDA provider there: :func:`busai.backends.onnx_providers`). ``backend="onnx"`` exports a PyTorch
    model into ``workdir`` (a new temporary folder when None) and runs that file in ONNX Runtime.
    """
    from busai.export import load_backend

    return Model(load_backend(source, task, device=device, backend=backend, workdir=workdir))


def predict(models: Model | Iterable[Model], images, *, tta: bool = False, pixel_spacing=None, threshold: float = MASK_THRESHOLD, precision: str = "auto"):
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
