"""Devices, precision and threads: the one place busai decides where and how a network computes.

A leaf module (it imports only torch and :mod:`busai.errors`), so training (:mod:`busai.engine`),
distributed set-up, model loading and prediction all ask it without importing each other.
"""

from __future__ import annotations

import contextlib
import os
import re

import torch

from busai.errors import ConfigError

ALL_CORES_ENV = "BUSAI_ALL_CORES"  # "1": raise torch's thread count to every core (the busai command sets it)


def resolve_device(name: str) -> torch.device:
    """``auto`` (a CUDA GPU when one is visible, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` -> a device."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda': no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_device(device: str, backend: str, source: str) -> torch.device:
    """Where :func:`busai.load` puts a model: ``device`` checked by name first (auto, cpu, cuda,
    cuda:N); an ONNX model runs on the CPU here."""
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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX).

    Elsewhere (AVX2-only CPUs, many AMD EPYC among them) oneDNN emulates bf16 and a training step
    is several times slower in bf16 than in fp32, while on a CPU with AMX it is faster (measured in
    docs/results.md, "Speed"). torch exposes the check only as private helpers, so a torch without
    them counts as "no" (fp32 is never the slow choice).
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype ``precision`` ("auto", "bf16" or "fp32") resolves to on ``device``; None: fp32."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16" or cpu_has_native_bf16():
        return torch.bfloat16
    return None


def default_path_name(device: torch.device = torch.device("cpu"), *, training: bool = False) -> str:
    """What ``precision="auto"`` runs on ``device``, in words (benchmarks and tables print it)."""
    dtype = autocast_dtype(device, "auto")
    name = "channels_last + fp32" if dtype is None else f"channels_last + {str(dtype).removeprefix('torch.')} autocast"
    return name + " + fused optimizer" if training else name


def fast_context(model: torch.nn.Module, precision: str = "auto"):
    """channels_last, with bf16 autocast where the hardware computes bf16 natively (faster inference
    on a CPU with AMX: docs/results.md, "Speed"; see :func:`autocast_dtype`); plain fp32 with ``precision="fp32"``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    model.to(memory_format=torch.channels_last)
    device = next(model.parameters()).device
    dtype = autocast_dtype(device, precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def torch_logits(model: torch.nn.Module, batch: torch.Tensor, precision: str = "auto") -> torch.Tensor:
    """A PyTorch network's forward for prediction: on the network's device, channels_last and bf16
    autocast unless ``precision="fp32"`` (see :func:`fast_context`), in inference mode."""
    device = next(model.parameters()).device
    x = batch.to(device)
    if precision != "fp32":
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
    caller's thread count alone."""
    if os.environ.get(ALL_CORES_ENV) != "1":
        return
    torch.set_num_threads(max(1, cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
