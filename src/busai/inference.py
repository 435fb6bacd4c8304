"""Running a loaded model on images: the one preprocessing and forward path used by evaluate, predict and serve."""

from __future__ import annotations

import contextlib

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
    if loaded.backend != "torch":
        return f"{loaded.backend} fp32"
    if precision == "fp32":
        return "eager fp32"
    dtype = autocast_dtype(loaded.device, precision)
    return "channels_last + fp32" if dtype is None else f"channels_last + {str(dtype).removeprefix('torch.')} autocast"


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
