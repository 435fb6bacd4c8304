"""ONNX export with a parity check against PyTorch, and loading an exported file into ONNX Runtime.

An exported file describes itself: its metadata (key ``busai``) holds the task, model spec and
preprocessing, so ``busai predict --seg model.onnx`` needs nothing else. The graph takes
``image`` (N, 3, H, W), normalised as in training, and returns ``logits``; the batch axis is
always dynamic, height and width too when the architecture allows (checked by running the file
at a second size; otherwise the file is re-exported at the model's fixed size).

torch is imported inside the exporting functions only: :func:`load_backend`, which predict and
serve call, runs without it (the ``onnx`` install).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

# The runtime side (loading an exported file) lives in busai.backends; these names stay importable here.
from busai.backends import INPUT, METADATA_KEY, OUTPUT, LoadedModel, OnnxLoadedModel, OnnxModule, load_onnx, onnx_providers, resolve_backend  # noqa: F401
from busai.config import ONNX_OPSET
from busai.device import cores as _cores  # noqa: F401  (kept for callers of export._cores)
from busai.errors import CheckpointError, ConfigError
from busai.extras import require
from busai.outputs import atomic_path, output_file
from busai.runs import resolve_model

OPSET = ONNX_OPSET
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


def _export_graph(module, task: str, size: int, path: Path, opset: int, dynamic_size: bool) -> None:
    import torch

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
        "preprocessing": loaded.preprocessing.to_dict(),
        "dynamic_size": dynamic_size,
        "temperature": loaded.temperature,
        "source": loaded.source,
        "config": {k: loaded.config.get(k) for k in ("train", "model_spec", "preprocessing", "weight_source")},
    }
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.save(model, str(path))


def parity(module, onnx_module: OnnxModule, size: int, batch: int = 2, seed: int = 0) -> float:
    """Largest absolute logit difference between PyTorch fp32 eager and ONNX Runtime on one random batch."""
    import torch

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
    import torch

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


def load_backend(source, task: str, *, device: str = "cpu", backend: str = "auto", workdir: str | Path | None = None, by_speed: bool = True) -> LoadedModel:
    """The model a ``--seg`` / ``--cls`` option names, for ``task``, running in ``backend``; errors name the option.

    ``source`` is what :func:`busai.runs.resolve_model` takes, or a model already loaded (a
    :class:`~busai.backends.LoadedModel` or anything holding one as ``.loaded``, like :class:`busai.Model`).
    ``backend="auto"`` runs PyTorch where torch is installed, else the folder's ``model.onnx`` (the
    shipped releases have one); with ``by_speed`` a folder's shipped ``model.onnx`` where this machine
    measured ONNX Runtime faster (:func:`faster_on_this_cpu`). ``backend="onnx"`` runs a folder's own ``model.onnx``, or exports a
    PyTorch model into ``workdir`` (a new temporary folder when None), in ONNX Runtime (its CUDA
    provider on a GPU: :func:`busai.backends.onnx_providers`).
    """
    import tempfile

    from busai.config import resolve_task
    from busai.runs import TASK_FLAGS

    task = resolve_task(task)
    requested, backend = backend, resolve_backend(backend)
    loaded = getattr(source, "loaded", source)
    if isinstance(loaded, LoadedModel):
        if loaded.task != task:
            raise ConfigError(f"{TASK_FLAGS[task]}: got a {loaded.task} model; pass a {task} model")
    else:
        not_found = f"not found; pass a run folder, an exported .onnx file or 'release' to {TASK_FLAGS[task]}"
        loaded = resolve_model(source, task, device=device, not_found=not_found, backend=backend)
        if loaded.task != task:
            raise ConfigError(f"{TASK_FLAGS[task]} {source}: is a {loaded.task} model; pass a {task} model")
    if backend == "onnx":
        loaded = to_onnx_backend(loaded, workdir or tempfile.mkdtemp(prefix="busai-onnx-"), device)
    elif by_speed and requested == "auto" and not isinstance(getattr(source, "loaded", source), LoadedModel):
        loaded = faster_on_this_cpu(loaded, source, task, device)
    return loaded


def faster_on_this_cpu(loaded: LoadedModel, source, task: str, device: str = "cpu") -> LoadedModel:
    """``--backend auto`` on a CPU: the folder's shipped ``model.onnx`` in ONNX Runtime instead of
    ``loaded`` (PyTorch) when a probe measured on this machine finds it faster by the probe's margin
    (busai.machine.choose, cached per machine; only where the process asked for probes: ``BUSAI_PROBE=1``,
    which the busai command sets). Which runtime wins depends on the CPU (native bf16 or not), so it is
    measured, not assumed; a folder without ``model.onnx`` is never exported for it."""
    import os

    from busai.extras import missing
    from busai.machine import PROBE_ENV, choose
    from busai.runs import model_folder

    if os.environ.get(PROBE_ENV) != "1" or loaded.backend != "torch" or loaded.device.type != "cpu" or missing("onnx"):
        return loaded
    if isinstance(source, Path | str) and Path(source).suffix.lower() == ".onnx":
        return loaded
    try:
        folder = model_folder(source, task)
    except (CheckpointError, ConfigError):
        return loaded
    if folder.kind != "release" or not folder.onnx_file.is_file():
        return loaded

    def load_onnx() -> LoadedModel:  # only when measuring or chosen: a cached "torch" opens no ONNX session
        return folder.load(device=device, backend="onnx")

    key = f"backend:{loaded.task}:{sum(p.numel() for p in loaded.module.parameters())}:{loaded.image_size}"
    choice = choose(key, ("torch", "onnx"), lambda candidates: _probe_backends({"torch": loaded, "onnx": load_onnx()}, loaded.image_size))
    if choice != "onnx":
        return loaded
    onnx = load_onnx()
    return onnx if onnx.backend == "onnx" and onnx.task == loaded.task else loaded


def _probe_backends(models: dict, size: int, rounds: int = 3) -> dict[str, float]:
    """Seconds per forward of one image in each backend (busai.machine.interleaved_best)."""
    import numpy as np
    import torch

    from busai.inference import predict_tensor
    from busai.machine import interleaved_best

    inputs = {"torch": torch.zeros(1, 3, size, size), "onnx": np.zeros((1, 3, size, size), np.float32)}
    return interleaved_best({name: (lambda m=model, x=inputs[name]: predict_tensor(m, x)) for name, model in models.items()}, rounds)
