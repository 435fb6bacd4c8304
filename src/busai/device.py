"""Devices, precision and threads: the one place busai decides where and how a network computes.

A leaf module (it imports only torch, inside its functions, and :mod:`busai.errors`), so training (:mod:`busai.engine`),
distributed set-up, model loading and prediction all ask it without importing each other.
"""

from __future__ import annotations

import contextlib
import os
import re
import weakref
from typing import TYPE_CHECKING

from busai.errors import ConfigError

if TYPE_CHECKING:  # annotations only: torch is imported inside the functions, so the onnx install loads this module
    import torch

ALL_CORES_ENV = "BUSAI_ALL_CORES"  # "1": raise torch's thread count to every core (the busai command sets it)


def resolve_device(name: str) -> torch.device:
    """``auto`` (a CUDA GPU when one is visible, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` -> a device."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda': no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_device(device: str, backend: str, source: str) -> torch.device | str:
    """Where :func:`busai.load` puts a model: ``device`` checked by name first (auto, cpu, cuda,
    cuda:N); an ONNX model runs on the CPU here ("cpu", without importing torch)."""
    name = str(device)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ConfigError(f"device '{device}': unknown; choose auto, cpu, cuda or cuda:N")
    if backend == "onnx":
        if name not in ("auto", "cpu"):
            raise ConfigError(f"{source}: ONNX models run on the CPU here; pass device='cpu' (or load the run folder to use {name})")
        return "cpu"
    import torch

    if name.startswith("cuda:") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}': no CUDA GPU is visible; use device='cpu' or 'auto'")
    return resolve_device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX).

    Elsewhere (AVX2-only CPUs, many AMD EPYC among them) oneDNN emulates bf16 and a training step
    is several times slower in bf16 than in fp32, while on a CPU with AMX it is faster (measured in
    docs/results.md, "Speed"). torch exposes the check only as private helpers, so a torch without
    them counts as "no" (fp32 is never the slow choice). Linux reads the CPU's flags (:mod:`busai.machine`),
    so a process capped with ``ONEDNN_MAX_CPU_ISA=AVX2`` takes an AVX2 machine's path.
    """
    from busai.machine import flags_known, isa_cap, native_bf16

    if flags_known() or isa_cap() is not None:  # the flags the inference path is chosen from, with oneDNN's cap applied
        return native_bf16()
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype ``precision`` ("auto", "bf16" or "fp32") resolves to on ``device``; None: fp32."""
    import torch

    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16" or cpu_has_native_bf16():
        return torch.bfloat16
    return None


def default_path_name(device: torch.device | None = None, *, training: bool = False) -> str:
    """What ``precision="auto"`` runs on ``device`` (default the CPU), in words (benchmarks and tables print it)."""
    import torch

    device = device if device is not None else torch.device("cpu")
    dtype = autocast_dtype(device, "auto")
    name = "channels_last + fp32" if dtype is None else f"channels_last + {str(dtype).removeprefix('torch.')} autocast"
    return name + " + fused optimizer" if training else name


def fast_context(model: torch.nn.Module, precision: str = "auto"):
    """channels_last, with bf16 autocast where the hardware computes bf16 natively (faster inference
    on a CPU with AMX: docs/results.md, "Speed"; see :func:`autocast_dtype`); plain fp32 with ``precision="fp32"``."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    model.to(memory_format=torch.channels_last)
    device = next(model.parameters()).device
    dtype = autocast_dtype(device, precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def fold_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of ``model`` with every batch norm that directly follows a convolution folded
    into that convolution's weights and bias (equal outputs within float rounding; tested). timm's
    BatchNormAct2d keeps its activation. A network torch.fx cannot trace comes back unchanged (a deep copy).

    The copy of an eval-mode ``model`` has its own modules and Parameter objects but shares the storage
    of the weights folding leaves alone, so converting or moving it leaves ``model`` as it was; a change
    to ``model``'s weights in place calls for a new fold (:func:`inference_network` makes one).

    Hand-written on torch.fx because ``torch.fx.experimental.optimization.fuse`` only knows plain
    BatchNorm2d modules and would drop the activation of timm's fused norm-activation layers.
    """
    import copy

    from torch import fx, nn
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    original = model
    if any(m.training for m in model.modules()):  # traced in eval mode: a forward may branch on self.training
        model = copy.deepcopy(model).eval()
    norm_act = _timm_norm_act()

    class Tracer(fx.Tracer):
        def is_leaf_module(self, module: nn.Module, name: str) -> bool:  # keep convolutions (timm's Conv2dSame) and norms whole
            return isinstance(module, (nn.Conv2d, *norm_act)) or super().is_leaf_module(module, name)

    try:
        graph = Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any network fx cannot trace runs unfolded: folding is only a speed-up
        return model if model is not original else copy.deepcopy(model)
    traced = fx.GraphModule(model, graph)  # holds model's leaf modules and parameters themselves
    if model is original:
        _unshare(traced, original)
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        norm = modules.get(node.target) if node.op == "call_module" else None
        source = node.args[0] if norm is not None and node.args else None
        conv = modules.get(source.target) if isinstance(source, fx.Node) and source.op == "call_module" else None
        if not (type(norm) is nn.BatchNorm2d or isinstance(norm, norm_act)) or type(conv) not in (nn.Conv2d, *_timm_same_conv()):
            continue
        if len(source.users) != 1 or norm.running_mean is None or conv.out_channels != norm.num_features:
            continue
        # Reassigned on the copy's own convolution (fuse_conv_bn_eval would copy it again).
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias)
        if isinstance(norm, norm_act):  # the activation (and drop, an identity in eval) stays
            _set_module(traced, node.target, nn.Sequential(norm.drop, norm.act))
        else:
            node.replace_all_uses_with(source)
            traced.graph.erase_node(node)
    traced.graph.lint()
    traced.recompile()
    traced.delete_all_unused_submodules()
    return traced


def _unshare(network: torch.nn.Module, original: torch.nn.Module) -> None:
    """Give ``network`` its own module objects (flags, hooks, submodules) and Parameter objects wherever
    it holds ``original``'s, keeping the tensors' storage. Written here because ``copy.deepcopy`` also
    clones every tensor and walks every attribute, which costs about as much as the folding itself."""
    from torch import nn

    modules = {id(m) for m in original.modules()}
    parameters = {id(p) for p in original.parameters()}

    def own(module: nn.Module) -> nn.Module:
        clone = object.__new__(type(module))
        # Own containers (_parameters, _buffers, _modules, hooks), the same values.
        clone.__dict__.update({key: value.copy() if isinstance(value, (dict, set)) else value for key, value in module.__dict__.items()})
        return clone

    def visit(module: nn.Module) -> None:
        for name, child in module._modules.items():
            if child is not None and id(child) in modules:
                child = module._modules[name] = own(child)
            if child is not None:
                visit(child)
        for name, parameter in module._parameters.items():
            if parameter is not None and id(parameter) in parameters:
                module._parameters[name] = nn.Parameter(parameter.detach(), requires_grad=parameter.requires_grad)

    visit(network)


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
    import torch

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
    """Seconds per forward of each path on one image (busai.machine.interleaved_best)."""
    import torch

    from busai.machine import interleaved_best

    x = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    return interleaved_best({path: (lambda p=path: _forward(model, x, p)) for path in candidates}, rounds)


def _forward(model: torch.nn.Module, x: torch.Tensor, path: str) -> torch.Tensor:
    import torch

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
    import torch

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


def cores() -> int:
    """The cores this process may run on (its affinity mask in a container, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def best_threads() -> None:
    """Use every core for intra-op work (torch's default can undercount in containers; shared among
    the processes torchrun starts on this machine) when the process asked for it with
    ``BUSAI_ALL_CORES=1``, as the ``busai`` command does; a library call otherwise leaves the
    caller's thread count alone. It never imports torch itself (2-3 s that a prediction through ONNX
    Runtime does not need, whose sessions take :func:`cores` threads themselves): before torch is
    imported there is nothing to set, and loading a PyTorch model calls it again."""
    from busai.extras import torch_imported

    if os.environ.get(ALL_CORES_ENV) != "1" or not torch_imported():
        return
    import torch

    torch.set_num_threads(max(1, cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
