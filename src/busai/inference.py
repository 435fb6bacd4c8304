"""Running a loaded model on images: the one preprocessing and forward path used by evaluate and predict."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from busai.runs import LoadedModel
from busai.tasks import probabilities


def preprocess(image_rgb: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """uint8 (H, W, 3) -> normalised float (3, size, size), exactly as the training dataset does."""
    x = torch.from_numpy(np.ascontiguousarray(image_rgb)).permute(2, 0, 1).float().div_(255.0)
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - m) / s


def fast_context(model: torch.nn.Module, precision: str = "bf16"):
    """bf16 autocast + channels_last on CPU (3x faster inference measured here); fp32 when asked."""
    if precision == "fp32":
        return contextlib.nullcontext()
    model.to(memory_format=torch.channels_last)
    device = next(model.parameters()).device.type
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


@torch.inference_mode()
def predict_tensor(loaded: LoadedModel, batch: torch.Tensor, precision: str = "bf16") -> torch.Tensor:
    """Normalised (N, 3, S, S) batch -> probabilities: (N, S, S) lesion map or (N, classes)."""
    model = loaded.module
    device = next(model.parameters()).device
    x = batch.to(device)
    if precision != "fp32":
        x = x.contiguous(memory_format=torch.channels_last)
    with fast_context(model, precision):
        logits = model(x)
    return probabilities(loaded.task, logits.float()).cpu()


def upsample_probability(prob: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """A (S, S) lesion probability map resized to an image's own (H, W)."""
    return F.interpolate(prob[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()
