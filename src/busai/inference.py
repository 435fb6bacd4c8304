"""Running a loaded model on images: the one preprocessing and forward path used by evaluate, predict and serve."""

from __future__ import annotations

import contextlib
import weakref

import numpy as np
import torch
import torch.nn.functional as F

from busai.engine import autocast_dtype
from busai.runs import LoadedModel
from busai.tasks import probabilities


def preprocess(image_rgb: np.ndarray, size: int, mean, std, grayscale: bool = False) -> torch.Tensor:
    """uint8 (H, W, 3) -> normalised float (3, size, size) through the training dataset's own functions."""
    from busai.data.dataset import normalise, resize_image, to_gray_rgb

    image = resize_image(np.ascontiguousarray(image_rgb), int(size))
    return normalise(to_gray_rgb(image) if grayscale else image, mean, std)


def fast_context(model: torch.nn.Module, precision: str = "auto"):
    """channels_last, with bf16 autocast where the hardware computes bf16 natively (faster inference
    on a CPU with AMX: docs/results.md, "Speed"; see engine.autocast_dtype); plain fp32 with ``precision="fp32"``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    model.to(memory_format=torch.channels_last)
    device = next(model.parameters()).device
    dtype = autocast_dtype(device, precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def path_name(loaded: LoadedModel, precision: str = "auto") -> str:
    """The inference path ``loaded`` takes at ``precision``, in words (recorded in predict_options.json)."""
    if getattr(loaded, "members", None):  # busai.ensemble: each member's own path
        return " | ".join(path_name(member, precision) for member in loaded.members)
    if loaded.backend != "torch":
        return f"{loaded.backend} fp32"
    if precision == "fp32":
        return "eager fp32"
    if precision == "auto" and loaded.device.type == "cpu":
        path = cpu_path(inference_network(loaded.module), loaded.image_size)
        return {"bf16": "channels_last + bf16 autocast", "channels_last": "channels_last + fp32", "contiguous": "contiguous + fp32"}[path] + ", folded BN"
    dtype = autocast_dtype(loaded.device, precision)
    name = "channels_last + fp32" if dtype is None else f"channels_last + {str(dtype).removeprefix('torch.')} autocast"
    return name + ", folded BN"


def predict_tensor(loaded: LoadedModel, batch: torch.Tensor, precision: str = "auto", *, tta: bool = False, calibrated: bool = True) -> torch.Tensor:
    """Normalised (N, 3, S, S) batch -> probabilities: (N, S, S) lesion map or (N, classes).

    ``tta`` averages each prediction with that of the horizontally flipped image (flipped back),
    a mirror image being an equally plausible scan; both run as one batch.
    A model exported to ONNX (see :mod:`busai.export`) runs in ONNX Runtime in fp32, whatever ``precision`` says.
    A classifier's logits are divided by its stored temperature (busai.calibration) unless
    ``calibrated=False``.
    """
    temperature = loaded.temperature if calibrated and loaded.task == "classification" else 1.0
    if tta:
        n = len(batch)
        probs = _probabilities(loaded, torch.cat([batch, batch.flip(-1)]), precision, temperature)
        mirrored = probs[n:].flip(-1) if loaded.task == "segmentation" else probs[n:]
        return (probs[:n] + mirrored) / 2
    return _probabilities(loaded, batch, precision, temperature)


def _probabilities(loaded: LoadedModel, batch: torch.Tensor, precision: str, temperature: float = 1.0) -> torch.Tensor:
    logits = loaded.logits(batch, precision)  # the backend's own forward: PyTorch here, ONNX Runtime for an exported file
    return probabilities(loaded.task, logits.float() / temperature).cpu()


def fold_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of ``model`` with every batch norm that directly follows a convolution folded
    into that convolution's weights and bias (equal outputs within float rounding; tested). timm's
    BatchNormAct2d keeps its activation. A network torch.fx cannot trace comes back unchanged (a deep copy).

    Hand-written on torch.fx because ``torch.fx.experimental.optimization.fuse`` only knows plain
    BatchNorm2d modules and would drop the activation of timm's fused norm-activation layers.
    """
    import copy

    from torch import fx, nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    norm_act = _timm_norm_act()

    class Tracer(fx.Tracer):
        def is_leaf_module(self, module: nn.Module, name: str) -> bool:  # keep convolutions (timm's Conv2dSame) and norms whole
            return isinstance(module, (nn.Conv2d, *norm_act)) or super().is_leaf_module(module, name)

    try:
        graph = Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any network fx cannot trace runs unfolded: folding is only a speed-up
        return model
    traced = fx.GraphModule(model, graph)
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        norm = modules.get(node.target) if node.op == "call_module" else None
        source = node.args[0] if norm is not None and node.args else None
        conv = modules.get(source.target) if isinstance(source, fx.Node) and source.op == "call_module" else None
        if not (type(norm) is nn.BatchNorm2d or isinstance(norm, norm_act)) or type(conv) not in (nn.Conv2d, *_timm_same_conv()):
            continue
        if len(source.users) != 1 or norm.running_mean is None or conv.out_channels != norm.num_features:
            continue
        _set_module(traced, source.target, fuse_conv_bn_eval(conv, norm))
        if isinstance(norm, norm_act):  # the activation (and drop, an identity in eval) stays
            _set_module(traced, node.target, nn.Sequential(norm.drop, norm.act))
        else:
            node.replace_all_uses_with(source)
            traced.graph.erase_node(node)
    traced.graph.lint()
    traced.recompile()
    traced.delete_all_unused_submodules()
    return traced


def _timm_norm_act() -> tuple[type, ...]:
    try:
        from timm.layers.norm_act import BatchNormAct2d
    except ImportError:
        return ()
    return (BatchNormAct2d,)


def _timm_same_conv() -> tuple[type, ...]:
    try:
        from timm.layers import Conv2dSame
    except ImportError:
        return ()
    return (Conv2dSame,)


def _set_module(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> (fingerprint, folded copy); gone with the network


def inference_network(model: torch.nn.Module) -> torch.nn.Module:
    """The network prediction runs: an eval-mode ``model`` with batch norm folded (:func:`fold_batch_norm`),
    made once and remade when the weights change (a parameter's in-place version counter moves) or move device."""
    if model.training:
        return model
    tensors = [*model.parameters(), *model.buffers()]
    fingerprint = (sum(t._version for t in tensors), tensors[0].device if tensors else None, len(tensors))
    cached = _FOLDED.get(model)
    if cached is None or cached[0] != fingerprint:
        with torch.no_grad():
            cached = _FOLDED[model] = (fingerprint, fold_batch_norm(model))
    return cached[1]


def cpu_path(model: torch.nn.Module, size: int) -> str:
    """The path ``precision="auto"`` takes for ``model`` on the CPU at input ``size`` (busai.machine.choose_path):
    from the CPU's flags, or measured once per machine when the process asked for it (``BUSAI_PROBE=1``)."""
    from busai.machine import choose_path

    key = f"{type(model).__name__}:{sum(p.numel() for p in model.parameters())}:{size}"
    return choose_path(key, lambda candidates: _probe(model, size, candidates))


def _probe(model: torch.nn.Module, size: int, candidates, rounds: int = 3) -> dict[str, float]:
    """Seconds per forward of each path on one image: the best of ``rounds``, the paths interleaved so
    a burst of load from elsewhere falls on all of them."""
    import time

    x = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    best = dict.fromkeys(candidates, float("inf"))
    for round_ in range(rounds + 1):
        for path in candidates:
            start = time.perf_counter()
            _forward(model, x, path)
            if round_:  # the first round warms up (oneDNN builds its kernels)
                best[path] = min(best[path], time.perf_counter() - start)
    return best


def _forward(model: torch.nn.Module, x: torch.Tensor, path: str) -> torch.Tensor:
    fmt = torch.contiguous_format if path == "contiguous" else torch.channels_last
    model.to(memory_format=fmt)  # outside inference mode, or the weights would become inference tensors autograd cannot use
    context = torch.autocast("cpu", dtype=torch.bfloat16) if path == "bf16" else contextlib.nullcontext()
    with torch.inference_mode(), context:
        return model(x.contiguous(memory_format=fmt))


def torch_logits(model: torch.nn.Module, batch: torch.Tensor, precision: str = "auto") -> torch.Tensor:
    """A PyTorch network's forward for prediction, in inference mode on the network's device, with batch
    norm folded into the convolutions (:func:`inference_network`). ``precision="auto"`` on a CPU takes the
    path chosen for this machine (:func:`cpu_path`); elsewhere, and with ``"bf16"``, channels_last with
    autocast where :func:`fast_context` says; ``"fp32"`` is plain eager fp32, the reference, unfolded."""
    device = next(model.parameters()).device
    if precision == "fp32":
        with torch.inference_mode():
            return model(batch.to(device))
    model = inference_network(model)
    x = batch.to(device)
    if precision == "auto" and device.type == "cpu":
        return _forward(model, x, cpu_path(model, x.shape[-1]))
    x = x.contiguous(memory_format=torch.channels_last)
    # fast_context converts the weights to channels_last: done outside inference mode, or they would
    # become inference tensors that autograd (Grad-CAM) can no longer use.
    context = fast_context(model, precision)
    with torch.inference_mode(), context:
        return model(x)


def model_input(loaded: LoadedModel, image_rgb: np.ndarray) -> torch.Tensor:
    """One uint8 (H, W, 3) image -> the normalised (3, S, S) tensor ``loaded`` takes (its own size, mean, std and colour)."""
    return preprocess(image_rgb, loaded.image_size, loaded.mean, loaded.std, loaded.grayscale)


def predict_image(loaded: LoadedModel, image_rgb: np.ndarray, *, tta: bool = False, precision: str = "auto") -> torch.Tensor:
    """One uint8 (H, W, 3) image -> (S, S) lesion probability or (classes,) class probabilities (``tta``: see predict_tensor)."""
    x = model_input(loaded, image_rgb)[None]
    return predict_tensor(loaded, x, precision, tta=tta)[0]


def upsample_probability(prob: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """A (S, S) lesion probability map resized to an image's own (H, W)."""
    return F.interpolate(prob[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()
