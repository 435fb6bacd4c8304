"""What a network's input must look like, and the one way an image becomes that input.

:class:`Preprocessing` (square size, per-channel mean / std, colour mode) is built with the network
(:func:`busai.models.registry.build`), written into a run's ``config.json`` and into an exported
file's ONNX metadata in the shape of :meth:`Preprocessing.to_dict`, and read back from either with
:meth:`Preprocessing.from_dict`: one object, wherever the weights travel.

Images given as arrays follow one rule (:func:`array_problem`), for the Python API and the
prediction pipeline alike: ``H x W`` (grey), ``H x W x 1`` or ``H x W x 3`` (RGB), either ``uint8``
(0-255) or float in ``[0, 1]`` (the convention of torchvision's ``to_tensor`` and scikit-image);
floats are scaled by 255 and rounded. Anything else is refused with the fix, never guessed:
a float array in 0-255 and one in 0-1 are indistinguishable for a dark scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from busai.config import VIEWS
from busai.errors import DataError


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a model: square size, per-channel normalisation, colour
    mode (``gray``: the luma copied to three channels, see ``TrainConfig.color``) and view
    (``lesion``: a classifier that sees the lesion with ``margin`` of its size as context on each
    side, cut from its mask (:meth:`lesion_array`), not the whole scan; see ``TrainConfig.view``)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color: str = "rgb"
    view: str = "scan"
    margin: float = 0.0

    @property
    def grayscale(self) -> bool:
        return self.color == "gray"

    @property
    def lesion_view(self) -> bool:
        return self.view == "lesion"

    def to_dict(self) -> dict:
        """The JSON shape stored in ``config.json`` (``"preprocessing"``) and in ONNX metadata (the
        view only for a lesion view, so every whole-scan model's files read as before)."""
        data = {"image_size": int(self.image_size), "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std], "color": self.color}
        return {**data, "view": self.view, "margin": float(self.margin)} if self.lesion_view else data

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        """The inverse of :meth:`to_dict`; files written before the colour mode existed are ``rgb``.
        Raises KeyError / TypeError / ValueError on a malformed dict (callers name the file)."""
        mean, std = tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"])
        view = data.get("view", "scan")
        if view not in VIEWS:
            raise ValueError(f"view {view!r}: this busai reads {', '.join(VIEWS)}")
        return cls(int(data["image_size"]), mean, std, "gray" if data.get("color") == "gray" else "rgb", view, float(data.get("margin", 0.0)))

    def tensor(self, image_rgb: np.ndarray):
        """uint8 (H, W, 3) -> normalised float ``torch.Tensor`` (3, S, S): :meth:`array` as a tensor."""
        import torch

        return torch.from_numpy(self.array(image_rgb))

    def array(self, image_rgb: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> normalised float32 (3, S, S) through the functions the training dataset
        uses too (busai.data.dataset), so training, evaluation, prediction and export parity share one input transform."""
        return self._normalised(resize_image(np.ascontiguousarray(image_rgb), int(self.image_size)))

    def lesion_array(self, image_rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) and its lesion mask (H, W, non-zero = lesion) -> the lesion-view input
        (3, S, S): :func:`lesion_view` at :attr:`margin` on every side, then as :meth:`array`."""
        return self._normalised(lesion_view(np.ascontiguousarray(image_rgb), mask, (self.margin,) * 4, int(self.image_size)))

    def _normalised(self, image: np.ndarray) -> np.ndarray:
        """A uint8 (S, S, 3) image at the input size -> this model's colour mode and normalisation."""
        return normalised(to_gray_rgb(image) if self.grayscale else image, self.mean, self.std)


def lesion_view(image: np.ndarray, mask: np.ndarray, margins: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The lesion with its context as a ``size`` x ``size`` uint8 image: the scan and its mask resized
    to twice ``size`` (so training, which caches that size, and prediction cut the same pixels), the
    largest component's box grown by ``margins`` (top, bottom, left, right; shares of its height /
    width), cut and resized. A mask with no lesion gives the whole scan, resized."""
    import cv2

    from busai.measure import largest_component

    work = 2 * int(size)
    image = resize_image(image, work)
    mask = cv2.resize(np.ascontiguousarray(mask, dtype=np.uint8), (work, work), interpolation=cv2.INTER_NEAREST) if mask.shape[:2] != (work, work) else mask
    region, count = largest_component(mask)
    if count == 0:
        return resize_image(image, size)
    ys, xs = np.nonzero(region)
    top, bottom, left, right = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    height, width = bottom - top, right - left
    top, bottom = max(0, top - round(height * margins[0])), min(work, bottom + round(height * margins[1]))
    left, right = max(0, left - round(width * margins[2])), min(work, right + round(width * margins[3]))
    return resize_image(image[top:bottom, left:right], size)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size: area when shrinking (no aliasing), bilinear when enlarging."""
    import cv2

    shrink = image.shape[0] * image.shape[1] >= size * size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def to_gray_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> its luma copied to three channels: the ``color="gray"`` model input."""
    import cv2

    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return np.repeat(gray[..., None], 3, axis=2)


def normalised(image: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (S, S, 3) -> float32 (3, S, S) as (x / 255 - mean) / std: the one model-input transform."""
    mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
    std = np.asarray(std, dtype=np.float32).reshape(1, 1, 3)
    scaled = (image.astype(np.float32) * np.float32(1.0 / 255.0) - mean) / std
    return np.ascontiguousarray(scaled.transpose(2, 0, 1))


def array_problem(array: np.ndarray) -> str | None:
    """Why ``array`` is not an image busai takes (the rule in the module docstring), with the fix; None when it is."""
    array = np.asarray(array)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)) or 0 in array.shape:
        return f"image array of shape {array.shape}: pass H x W (grey) or H x W x 3 (RGB); drop an alpha channel with x[..., :3]"
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            return "float image array with values outside [0, 1] (or not finite): scale it into [0, 1], e.g. x / 255 for 0-255 values"
    elif array.dtype != np.uint8:
        return f"image array of dtype {array.dtype}: pass uint8 (0-255) or float in [0, 1], e.g. x.astype(np.float32) / x.max()"
    return None


def rgb_array(array: np.ndarray) -> np.ndarray:
    """An array :func:`array_problem` accepts -> uint8 (H, W, 3); raises DataError with the fix otherwise."""
    array = np.asarray(array)
    problem = array_problem(array)
    if problem is not None:
        raise DataError(problem)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.dtype.kind == "f":
        array = (array * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array)


def to_rgb(image) -> np.ndarray:
    """A path, PIL image or array -> uint8 (H, W, 3), or one clear error saying what to pass instead."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        from busai.data.discover import read_image

        try:
            return read_image(image, mode="RGB")
        except Image.DecompressionBombError as exc:  # Pillow's guard against absurd pixel counts
            raise DataError(f"{image}: {exc}") from None
    if isinstance(image, Image.Image):
        from busai.data.discover import pil_to_array

        return pil_to_array(image)
    if not isinstance(image, np.ndarray):
        raise DataError(f"image of type {type(image).__name__}: pass a file path, a PIL image or a numpy array (H x W or H x W x 3)")
    return rgb_array(image)
