"""Running a loaded model on images: the one preprocessing and forward path used by evaluate, predict and serve.

Batches are torch tensors where torch is installed. Without it (the ``onnx`` install, ONNX Runtime
only) they are numpy arrays and the same functions compute with numpy: this module imports torch
only inside the functions that need it.
"""

from __future__ import annotations

import contextlib

import numpy as np

from busai.backends import LoadedModel
from busai.errors import ConfigError
from busai.extras import has_torch
from busai.preprocessing import Preprocessing

# inference.* names kept for callers; they live in busai.device (imported on first use: it needs torch).
_DEVICE_NAMES = ("autocast_dtype", "cpu_path", "fast_context", "fold_batch_norm", "inference_network", "torch_logits")


def __getattr__(name: str):
    if name in _DEVICE_NAMES:
        from busai import device

        return getattr(device, name)
    raise AttributeError(f"module 'busai.inference' has no attribute {name!r}")


def preprocess(image_rgb: np.ndarray, size: int, mean, std, grayscale: bool = False):
    """uint8 (H, W, 3) -> normalised float (3, size, size): :meth:`busai.preprocessing.Preprocessing.tensor`."""
    return Preprocessing(int(size), tuple(mean), tuple(std), "gray" if grayscale else "rgb").tensor(image_rgb)


def path_name(loaded: LoadedModel, precision: str = "auto") -> str:
    """The inference path ``loaded`` takes at ``precision``, in words (recorded in predict_options.json)."""
    if getattr(loaded, "members", None):  # busai.ensemble: each member's own path
        return " | ".join(path_name(member, precision) for member in loaded.members)
    if loaded.backend != "torch":
        return f"{loaded.backend} fp32"
    if precision == "fp32":
        return "eager fp32"
    from busai.device import autocast_dtype, cpu_path, inference_network

    if precision == "auto" and loaded.device.type == "cpu":
        path = cpu_path(inference_network(loaded.module), loaded.image_size)
        return {"bf16": "channels_last + bf16 autocast", "channels_last": "channels_last + fp32", "contiguous": "contiguous + fp32"}[path] + ", folded BN"
    dtype = autocast_dtype(loaded.device, precision)
    name = "channels_last + fp32" if dtype is None else f"channels_last + {str(dtype).removeprefix('torch.')} autocast"
    return name + ", folded BN"


def predict_tensor(loaded: LoadedModel, batch, precision: str = "auto", *, tta: bool = False, calibrated: bool = True):
    """Normalised (N, 3, S, S) batch -> probabilities: (N, S, S) lesion map or (N, classes).

    ``tta`` averages each prediction with that of the horizontally flipped image (flipped back),
    a mirror image being an equally plausible scan; both run as one batch.
    A model exported to ONNX (see :mod:`busai.export`) runs in ONNX Runtime in fp32, whatever ``precision`` says.
    A classifier's logits are divided by its stored temperature (busai.calibration) unless
    ``calibrated=False``. A numpy batch (no torch installed) gives numpy probabilities.
    """
    temperature = loaded.temperature if calibrated and loaded.task == "classification" else 1.0
    if tta:
        n = len(batch)
        probs = _probabilities(loaded, _concat([batch, _mirror(batch)]), precision, temperature)
        mirrored = _mirror(probs[n:]) if loaded.task == "segmentation" else probs[n:]
        return (probs[:n] + mirrored) / 2
    return _probabilities(loaded, batch, precision, temperature)


def _probabilities(loaded: LoadedModel, batch, precision: str, temperature: float = 1.0):
    logits = loaded.logits(batch, precision)  # the backend's own forward: PyTorch here, ONNX Runtime for an exported file
    if isinstance(logits, np.ndarray):
        return _numpy_probabilities(loaded.task, logits.astype(np.float32) / np.float32(temperature))
    from busai.tasks import probabilities

    return probabilities(loaded.task, logits.float() / temperature).cpu()


def _numpy_probabilities(task: str, logits: np.ndarray) -> np.ndarray:
    """:func:`busai.tasks.probabilities` in numpy (scipy's sigmoid and softmax), for the torch-free install."""
    from scipy.special import expit, softmax

    return expit(logits[:, 0]) if task == "segmentation" else softmax(logits, axis=1)


def _concat(batches: list):
    if isinstance(batches[0], np.ndarray):
        return np.concatenate(batches)
    import torch

    return torch.cat(batches)


def _mirror(batch):
    """``batch`` flipped left-right (its last axis)."""
    return np.ascontiguousarray(batch[..., ::-1]) if isinstance(batch, np.ndarray) else batch.flip(-1)


def model_input(loaded: LoadedModel, image_rgb: np.ndarray, *, as_array: bool | None = None, mask: np.ndarray | None = None):
    """One uint8 (H, W, 3) image -> the normalised (3, S, S) input ``loaded`` takes (its own size, mean, std,
    colour and view: a lesion-view classifier's needs the lesion ``mask``, any size, covering the same
    scan): a tensor, or a numpy array where torch is not installed or ``as_array`` (the predict
    pipeline's choice for ONNX Runtime, so an ONNX-only prediction never imports torch)."""
    if as_array is None:
        as_array = not has_torch()
    pre = loaded.preprocessing
    if pre.lesion_view:
        if mask is None:
            raise ConfigError(f"{loaded.source}: a lesion-view classifier sees the lesion, not the scan; predict it together with a segmenter (--seg)")
        array = pre.lesion_array(image_rgb, mask)
    else:
        array = pre.array(image_rgb)
    if as_array:
        return array
    import torch

    return torch.from_numpy(array)


def stack_inputs(inputs: list):
    """(3, S, S) model inputs -> one (N, 3, S, S) batch, tensors or arrays as :func:`model_input` made them."""
    if isinstance(inputs[0], np.ndarray):
        return np.stack(inputs)
    import torch

    return torch.stack(inputs)


def predict_image(loaded: LoadedModel, image_rgb: np.ndarray, *, tta: bool = False, precision: str = "auto"):
    """One uint8 (H, W, 3) image -> (S, S) lesion probability or (classes,) class probabilities (``tta``: see predict_tensor)."""
    x = model_input(loaded, image_rgb)[None]
    return predict_tensor(loaded, x, precision, tta=tta)[0]


def upsample_probability(prob, shape: tuple[int, int]) -> np.ndarray:
    """A (S, S) lesion probability map resized to an image's own (H, W): bilinear, pixel centres aligned
    (torch's ``align_corners=False``; OpenCV's INTER_LINEAR computes the same for a numpy map)."""
    if isinstance(prob, np.ndarray):
        import cv2

        return cv2.resize(np.ascontiguousarray(prob, dtype=np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    import torch.nn.functional as F

    return F.interpolate(prob[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def predict_records(
    loaded: LoadedModel, records, *, tta: bool = False, batch_size: int = 16, calibrated: bool = True, progress: str | None = None, precision: str = "auto"
):
    """Yield (record, probability) for every record, in order, through the training dataset's preprocessing.

    ``progress``: a description to show a progress bar under (on stderr, only when it is a terminal);
    ``precision``: as :func:`predict_tensor` (``"fp32"``: the reference every machine reproduces)."""
    from torch.utils.data import DataLoader

    from busai.data.dataset import BusDataset, ImageCache

    dataset = BusDataset.for_model(records, loaded, cache=ImageCache())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    i = 0
    with progress_bar(progress, len(records)) as advance:
        for batch in loader:
            probs = predict_tensor(loaded, batch["image"], precision, tta=tta, calibrated=calibrated)
            for p in probs:
                yield records[i], p
                i += 1
            advance(len(probs))


@contextlib.contextmanager
def progress_bar(description: str | None, total: int):
    """A rich progress bar on stderr, yielding its advance(n); a no-op without a description or a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if description is None or not console.is_terminal:
        yield lambda n: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
