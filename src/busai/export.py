"""ONNX export with a parity check against PyTorch, and loading an exported file into ONNX Runtime.

An exported file describes itself: its metadata (key ``busai``) holds the task, model spec and
preprocessing, so ``busai predict --seg model.onnx`` needs nothing else. The graph takes
``image`` (N, 3, H, W), normalised as in training, and returns ``logits``; the batch axis is
always dynamic, height and width too when the architecture allows (checked by running the file
at a second size; otherwise the file is re-exported at the model's fixed size).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from busai.errors import CheckpointError, ConfigError
from busai.extras import require
from busai.outputs import atomic_path, output_file
from busai.runs import LoadedModel

METADATA_KEY = "busai"
OPSET = 18
INPUT, OUTPUT = "image", "logits"
# fp32 graph vs fp32 eager: differences come from kernel order only; anything above this is a bug.
PARITY_TOLERANCE = 1e-3


@dataclass
class ExportResult:
    path: str
    task: str
    opset: int
    dynamic_size: bool
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind a module's call: normalised (N, 3, H, W) batch -> logits (fp32, CPU)."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        super().__init__()
        require("export")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = _cores()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=onnx_providers(device))
        except Exception as exc:  # ORT raises its own, unexported exception types for every kind of bad file
            raise CheckpointError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]}); re-export with `busai export`") from None
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.path = str(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: array})[0])


@dataclass
class OnnxLoadedModel(LoadedModel):
    """An exported file loaded for prediction: the backend interface of :class:`~busai.runs.LoadedModel`
    answered by ONNX Runtime (fp32 whatever the precision asked; no autograd, so no Grad-CAM or re-export)."""

    module: OnnxModule

    backend: ClassVar[str] = "onnx"
    supports_gradients: ClassVar[bool] = False

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if self.module.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu")

    def logits(self, batch: torch.Tensor, precision: str = "auto") -> torch.Tensor:
        return self.module(batch)


def onnx_providers(device: str = "cpu") -> list[str]:
    """ONNX Runtime execution providers for ``device``: CUDA first (CPU for the operators it lacks)
    when the GPU is wanted and this onnxruntime build has the CUDA provider, else the CPU alone.

    ``cuda`` asked for explicitly without that provider is an error; ``auto`` falls back to the CPU.
    """
    import onnxruntime as ort

    from busai.engine import resolve_device

    if resolve_device(device).type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise ConfigError("--device cuda: this onnxruntime has no CUDA provider; pip install onnxruntime-gpu, or use --device cpu")
    return ["CPUExecutionProvider"]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
    spec, image_size, mean, std = _checked_metadata(meta, module, path)
    temperature = meta.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise CheckpointError(f"{path}: metadata temperature {temperature!r} is not a positive number; re-export the model with `busai export`")
    return OnnxLoadedModel(
        module=module,
        task=spec["task"],
        spec=spec,
        image_size=image_size,
        mean=mean,
        std=std,
        config=meta.get("config", {}) if isinstance(meta.get("config"), dict) else {},
        source=str(path),
        grayscale=meta["preprocessing"].get("color") == "gray",
        temperature=float(temperature),
    )


def _checked_metadata(meta, module: OnnxModule, path: Path):
    """The spec and preprocessing from an exported file's metadata, checked against its graph.

    The metadata is plain JSON anyone can edit; a wrong size or normalisation would give wrong
    answers without an error, so every value the predictions depend on is checked here.
    """
    fix = "re-export the model with `busai export`"
    try:
        spec, pre = meta["spec"], meta["preprocessing"]
        task, image_size = spec["task"], pre["image_size"]
        mean, std = tuple(float(v) for v in pre["mean"]), tuple(float(v) for v in pre["std"])
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
    return spec, image_size, mean, std


def _export_graph(module: nn.Module, task: str, size: int, path: Path, opset: int, dynamic_size: bool) -> None:
    batch_axes = {0: "batch"}
    image_axes = {**batch_axes, 2: "height", 3: "width"} if dynamic_size else batch_axes
    output_axes = image_axes if task == "segmentation" else batch_axes
    example = torch.zeros(2, 3, size, size)
    # The TorchScript-based exporter, on purpose (its deprecation warning is silenced): the dynamo
    # one needs onnxscript and gains nothing for these CNNs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            opset_version=opset,
            dynamic_axes={INPUT: image_axes, OUTPUT: output_axes},
            dynamo=False,
        )


def _write_metadata(path: Path, loaded: LoadedModel, dynamic_size: bool) -> None:
    require("export")
    import onnx

    model = onnx.load(str(path))
    meta = {
        "spec": loaded.spec,
        "preprocessing": {"image_size": loaded.image_size, "mean": list(loaded.mean), "std": list(loaded.std), "color": "gray" if loaded.grayscale else "rgb"},
        "dynamic_size": dynamic_size,
        "temperature": loaded.temperature,
        "source": loaded.source,
        "config": {k: loaded.config.get(k) for k in ("train", "model_spec", "preprocessing", "weight_source")},
    }
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.save(model, str(path))


def parity(module: nn.Module, onnx_module: OnnxModule, size: int, batch: int = 2, seed: int = 0) -> float:
    """Largest absolute logit difference between PyTorch fp32 eager and ONNX Runtime on one random batch."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = module(x).float()
    return float((onnx_module(x) - expected).abs().max())


def export_onnx(loaded: LoadedModel, out: str | Path, *, opset: int = OPSET, dynamic_size: bool = True, force: bool = False) -> ExportResult:
    """Export ``loaded`` (fp32, eval mode) to ``out`` and check it against PyTorch.

    An existing ``out`` is replaced only if it is an earlier export, or with ``force``.

    With ``dynamic_size`` the file is also run at a second size (the model size + 32, a multiple
    of the segmentation stride too); if that fails or disagrees, it is exported again with a fixed size.
    """
    require("export")
    if loaded.backend != "torch":
        raise CheckpointError(f"{loaded.source}: is already an ONNX file; export from a run folder or the release model")
    highest = _highest_opset()
    if not 17 <= opset <= highest:
        raise ConfigError(f"--opset {opset}: busai exports need opset 17 to {highest} (the newest this torch's exporter writes)")
    out = output_file(out)
    if out.exists() and not force and not is_export(out):
        raise ConfigError(f"--out {out}: exists and is not a file written by `busai export`; choose another name, or pass --force to replace it")
    # Exported and checked on the CPU, wherever the model was loaded.
    module = loaded.module.float().eval().to("cpu", memory_format=torch.contiguous_format)
    size = loaded.image_size

    # Written to a temporary file beside ``out`` and renamed at the end: an interrupted export
    # leaves the earlier file whole.
    with atomic_path(out) as tmp:
        _export_graph(module, loaded.task, size, tmp, opset, dynamic_size)
        if dynamic_size:
            try:
                dynamic_size = parity(module, OnnxModule(tmp), size + 32) <= PARITY_TOLERANCE
            except Exception:  # a shape the graph cannot take surfaces as an ORT runtime error
                dynamic_size = False
            if not dynamic_size:
                _export_graph(module, loaded.task, size, tmp, opset, dynamic_size=False)
        _write_metadata(tmp, loaded, dynamic_size)
        diff = parity(module, OnnxModule(tmp), size)
    return ExportResult(str(out), loaded.task, opset, dynamic_size, diff, PARITY_TOLERANCE)


def _highest_opset() -> int:
    """The newest opset torch's TorchScript exporter writes (a private constant; the oldest one busai needs if it moves)."""
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    except ImportError:
        return OPSET
    return int(ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is an ONNX file carrying busai's metadata (an earlier export, safe to replace)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError):  # a file that is not ONNX
        return False
    return any(prop.key == METADATA_KEY for prop in model.metadata_props)


def to_onnx_backend(loaded: LoadedModel, workdir: str | Path, device: str = "cpu") -> LoadedModel:
    """``loaded`` exported into ``workdir`` and reloaded to run in ONNX Runtime (``--backend onnx``)."""
    if loaded.backend == "onnx":
        return loaded
    result = export_onnx(loaded, Path(workdir) / f"{loaded.task}.onnx", dynamic_size=False)
    if not result.ok:
        raise CheckpointError(f"{loaded.source}: the ONNX graph differs from PyTorch by {result.max_abs_diff:.2g} (> {result.tolerance}); use --backend torch")
    return load_onnx(result.path, device)
