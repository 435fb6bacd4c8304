"""What runs a loaded network: PyTorch (:class:`LoadedModel`) or ONNX Runtime (:class:`OnnxLoadedModel`).

Both answer one backend interface (``backend``, ``supports_gradients``, ``device``,
:meth:`LoadedModel.logits`) and carry the network's task, spec, :class:`~busai.preprocessing.Preprocessing`,
calibration and provenance. Which folder or file a model comes from, and how it is found, is
:mod:`busai.runs`' business; this module only holds the two backends and reads what an exported
file says about itself.

Nothing here imports torch at module level: the ONNX backend runs without it (the ``onnx`` extra,
no ``torch``), taking and returning numpy arrays there; PyTorch's backend imports it when used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from busai.errors import CheckpointError, ConfigError
from busai.extras import has_torch, require, torch_imported
from busai.preprocessing import Preprocessing

METADATA_KEY = "busai"  # the ONNX metadata property holding spec, preprocessing and calibration
INPUT, OUTPUT = "image", "logits"


@dataclass
class LoadedModel:
    """A trained network with its preprocessing, task and provenance: what :class:`busai.api.Model` wraps.

    The backend interface (``backend``, ``supports_gradients``, ``device``, :meth:`logits`) is what
    callers ask; :class:`OnnxLoadedModel` answers it for a network run by ONNX Runtime.
    """

    module: object  # torch.nn.Module
    task: str
    spec: dict
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    config: dict
    source: str
    grayscale: bool = False  # preprocessing "color": "gray" (see TrainConfig.color)
    temperature: float = 1.0  # classification logits are divided by it (busai.calibration); 1 = uncalibrated
    view: str = "scan"  # preprocessing "view": "lesion" for a classifier of lesion crops (see TrainConfig.view)
    margin: float = 0.0  # its context around the lesion's box

    backend: ClassVar[str] = "torch"
    supports_gradients: ClassVar[bool] = True  # autograd runs through the network (Grad-CAM, export)

    @classmethod
    def with_preprocessing(cls, module, task: str, spec: dict, pre: Preprocessing, config: dict, source: str, temperature: float = 1.0):
        return cls(module, task, spec, int(pre.image_size), tuple(pre.mean), tuple(pre.std), config, source, pre.grayscale, temperature, pre.view, pre.margin)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.image_size, tuple(self.mean), tuple(self.std), "gray" if self.grayscale else "rgb", self.view, self.margin)

    @property
    def device(self):
        """The ``torch.device`` the network's weights are on."""
        return next(self.module.parameters()).device

    def logits(self, batch, precision: str = "auto"):
        """Normalised (N, 3, S, S) batch -> the network's raw output, in inference mode (see busai.device.torch_logits)."""
        from busai.device import torch_logits

        return torch_logits(self.module, batch, precision)


class OnnxModule:
    """An ONNX Runtime session behind a module's call: normalised (N, 3, H, W) batch -> logits (fp32, CPU).

    A torch tensor in gives a torch tensor out; a numpy array in (the torch-free install) gives an array.
    Not a ``torch.nn.Module``, so it loads without torch; ``to`` / ``eval`` / ``float`` are no-ops, as
    for a module without weights.
    """

    def __init__(self, path: str | Path, device: str = "cpu"):
        require("onnx")
        import onnxruntime as ort

        from busai.device import cores

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = cores()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=onnx_providers(device))
        except Exception as exc:  # ORT raises its own, unexported exception types for every kind of bad file
            raise CheckpointError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]}); re-export with `busai export`") from None
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.path = str(path)

    def __call__(self, x):
        if isinstance(x, np.ndarray):
            return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]
        import torch

        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: array})[0])

    forward = __call__

    def to(self, *args, **kwargs) -> OnnxModule:
        return self

    def eval(self) -> OnnxModule:
        return self

    def float(self) -> OnnxModule:
        return self

    def parameters(self):
        return iter(())


@dataclass
class OnnxLoadedModel(LoadedModel):
    """An exported file loaded for prediction: the backend interface of :class:`LoadedModel`
    answered by ONNX Runtime (fp32 whatever the precision asked; no autograd, so no Grad-CAM or re-export)."""

    module: OnnxModule

    backend: ClassVar[str] = "onnx"
    supports_gradients: ClassVar[bool] = False

    @property
    def device(self):
        """A ``torch.device`` (cuda when the session runs on ONNX Runtime's CUDA provider); its name without torch."""
        name = "cuda" if self.module.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        if not has_torch():
            return OnnxDevice(name)
        import torch

        return torch.device(name)

    def logits(self, batch, precision: str = "auto"):
        return self.module(batch)


@dataclass(frozen=True)
class OnnxDevice:
    """Where an ONNX session runs, without torch: what ``torch.device`` answers (``type``, ``str``)."""

    type: str

    def __str__(self) -> str:
        return self.type


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"torch"`` where torch imports, else ``"onnx"``; ``"torch"`` / ``"onnx"`` as given."""
    if backend == "auto":
        return "torch" if has_torch() else "onnx"
    return backend


def onnx_providers(device: str = "cpu") -> list[str]:
    """ONNX Runtime execution providers for ``device``: CUDA first (CPU for the operators it lacks)
    when the GPU is wanted and this onnxruntime build has the CUDA provider, else the CPU alone.

    ``cuda`` asked for explicitly without that provider is an error; ``auto`` falls back to the CPU.
    """
    import onnxruntime as ort

    if not _wants_cuda(device):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise ConfigError("--device cuda: this onnxruntime has no CUDA provider; pip install onnxruntime-gpu, or use --device cpu")
    return ["CPUExecutionProvider"]


def _wants_cuda(device: str) -> bool:
    """Whether ``device`` (auto, cpu, cuda, cuda:N) means the GPU: ``auto`` asks torch whether one is
    visible where torch is already imported, or else whether this onnxruntime has the CUDA provider
    (importing torch only to ask would cost an ONNX-only prediction seconds of start-up)."""
    if not torch_imported():
        if device == "auto":
            import onnxruntime as ort

            return "CUDAExecutionProvider" in ort.get_available_providers()
        return str(device).startswith("cuda")
    from busai.device import resolve_device

    return resolve_device(device).type == "cuda"


def load_onnx(path: str | Path, device: str = "cpu") -> OnnxLoadedModel:
    """An exported file as a model whose network runs in ONNX Runtime (on the GPU: see :func:`onnx_providers`)."""
    path = Path(path)
    onnx_providers(device)  # a bad --device fails before the file is read
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found; pass a .onnx file written by `busai export`")
    module = OnnxModule(path, device)
    try:
        meta = json.loads(module.metadata[METADATA_KEY])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: has no busai metadata, so its preprocessing is unknown; export it with `busai export`") from None
    spec, pre = _checked_metadata(meta, module, path)
    temperature = meta.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise CheckpointError(f"{path}: metadata temperature {temperature!r} is not a positive number; re-export the model with `busai export`")
    config = meta.get("config", {}) if isinstance(meta.get("config"), dict) else {}
    return OnnxLoadedModel.with_preprocessing(module, spec["task"], spec, pre, config, str(path), float(temperature))


def _checked_metadata(meta, module: OnnxModule, path: Path) -> tuple[dict, Preprocessing]:
    """The spec and preprocessing from an exported file's metadata, checked against its graph.

    The metadata is plain JSON anyone can edit; a wrong size or normalisation would give wrong
    answers without an error, so every value the predictions depend on is checked here.
    """
    fix = "re-export the model with `busai export`"
    try:
        spec, raw = meta["spec"], meta["preprocessing"]
        task, image_size = spec["task"], raw["image_size"]
        mean, std = tuple(float(v) for v in raw["mean"]), tuple(float(v) for v in raw["std"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: its busai metadata lacks the task or preprocessing (image_size, mean, std); {fix}") from None
    if task not in ("segmentation", "classification"):
        raise CheckpointError(f"{path}: metadata task {task!r} is neither segmentation nor classification; {fix}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 16 <= image_size <= 4096:
        raise CheckpointError(f"{path}: metadata image_size {image_size!r} is not a size in pixels (16 to 4096); {fix}")
    if len(mean) != 3 or len(std) != 3 or not all(np.isfinite(mean)) or not all(np.isfinite(v) and v > 0 for v in std):
        raise CheckpointError(f"{path}: metadata mean / std must be three finite numbers each (std positive); {fix}")
    inputs = module.session.get_inputs()
    if [i.name for i in inputs] != [INPUT] or [o.name for o in module.session.get_outputs()] != [OUTPUT]:
        raise CheckpointError(
            f"{path}: the graph takes {[i.name for i in inputs]} and returns "
            f"{[o.name for o in module.session.get_outputs()]}, not ['{INPUT}'] -> ['{OUTPUT}']; {fix}"
        )
    shape = inputs[0].shape  # fixed axes are ints, dynamic ones names
    if len(shape) != 4 or shape[1] not in (3, "channels") or any(isinstance(n, int) and n != image_size for n in shape[2:]):
        raise CheckpointError(f"{path}: the graph's input shape {shape} does not take (N, 3, {image_size}, {image_size}) images as its metadata says; {fix}")
    if task == "classification":
        from busai.labels import class_names

        outputs, classes = module.session.get_outputs()[0].shape, class_names(spec)
        if len(outputs) == 2 and isinstance(outputs[1], int) and outputs[1] != len(classes):
            raise CheckpointError(f"{path}: the graph has {outputs[1]} class outputs but its metadata names {len(classes)} classes; {fix}")
    return spec, Preprocessing.from_dict(raw)


@dataclass
class EnsembleLoaded:
    """The backend interface of :class:`busai.runs.LoadedModel` over several members."""

    members: list
    source: str
    temperature: float = 1.0

    backend: ClassVar[str] = "ensemble"
    supports_gradients: ClassVar[bool] = False  # Grad-CAM and ONNX export run on one network: use a member

    def __post_init__(self) -> None:
        if not self.members:
            raise CheckpointError(f"{self.source}: an ensemble needs at least one member")
        first = self.members[0]
        for member in self.members[1:]:
            if member.task != first.task:
                raise CheckpointError(f"{member.source}: a {member.task} model in a {first.task} ensemble; members must share one task")
            mine, theirs = member.preprocessing.to_dict(), first.preprocessing.to_dict()
            if mine != theirs:
                raise CheckpointError(f"{member.source}: preprocessing {mine} differs from {first.source}'s {theirs}; ensemble models trained alike")

    task = property(lambda self: self.members[0].task)
    image_size = property(lambda self: self.members[0].image_size)
    mean = property(lambda self: self.members[0].mean)
    std = property(lambda self: self.members[0].std)
    grayscale = property(lambda self: self.members[0].grayscale)
    view = property(lambda self: self.members[0].view)
    margin = property(lambda self: self.members[0].margin)
    preprocessing = property(lambda self: self.members[0].preprocessing)
    device = property(lambda self: self.members[0].device)

    @property
    def module(self):
        """The members' PyTorch networks in one ``nn.ModuleList``, so moving the ensemble (``.to(device)``)
        moves them all (an ONNX member stays where its session runs)."""
        from torch import nn

        return nn.ModuleList([m.module for m in self.members if isinstance(m.module, nn.Module)])

    @property
    def spec(self) -> dict:
        return {**self.members[0].spec, "ensemble": len(self.members)}

    @property
    def config(self) -> dict:
        return {**self.members[0].config, "ensemble": {"members": [m.source for m in self.members]}}

    def logits(self, batch, precision: str = "auto"):
        """The members' mean probability, as logits that give it back (sigmoid or softmax)."""
        import torch

        outputs = [m.logits(batch, precision).float().cpu() for m in self.members]
        if self.task == "segmentation":
            mean = torch.stack([torch.sigmoid(o) for o in outputs]).mean(0)
            return torch.logit(mean.clamp(1e-6, 1 - 1e-6))
        mean = torch.stack([torch.softmax(o / m.temperature, dim=1) for o, m in zip(outputs, self.members)]).mean(0)
        return torch.log(mean.clamp_min(1e-12))
