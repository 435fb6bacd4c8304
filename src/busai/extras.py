"""Optional parts of busai and the packages each needs: ``pip install 'busai[NAME]'``.

The core installs without them and predicts with neither PyTorch nor ONNX Runtime: a backend is an
extra. ``torch`` (PyTorch: training, evaluation, calibration, export, Grad-CAM, the PyTorch backend)
and ``onnx`` (ONNX Runtime: ``busai predict`` / ``serve`` / ``busai.load`` on the shipped
``model.onnx`` files) each make prediction work. A feature that needs an extra calls :func:`require`
first, so a missing package is one clear error line naming the extra to install, not an ImportError
from deep inside a library; the ``busai`` command turns an ImportError of the torch stack into the
same line (:func:`torch_missing`).
"""

from __future__ import annotations

import functools
from importlib.util import find_spec

from busai.errors import BusaiError

# extra -> (feature, importable modules); keep in step with [project.optional-dependencies].
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "torch": (
        "training, evaluation, export and Grad-CAM (PyTorch)",
        ("torch", "torchvision", "segmentation_models_pytorch", "timm", "albumentations", "safetensors", "sklearn", "matplotlib", "pytorch_grad_cam"),
    ),
    "onnx": ("the ONNX Runtime backend", ("onnxruntime",)),
    "serve": ("the web page (`busai serve`)", ("fastapi", "uvicorn", "multipart")),
    "tune": ("hyper-parameter search (`busai tune`)", ("optuna",)),
    "export": ("ONNX export", ("onnx", "onnxruntime")),
}
# The packages only the torch extra brings: an ImportError of one of them means that extra is missing.
TORCH_MODULES = frozenset(EXTRAS["torch"][1])


class MissingExtraError(BusaiError):
    """A feature's optional dependencies are not installed."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    return [name for name in EXTRAS[extra][1] if not _findable(name)]


def _findable(name: str) -> bool:
    try:
        return find_spec(name) is not None
    except ImportError:  # an import hook that refuses the package
        return False


def require(extra: str, feature: str | None = None) -> None:
    """Raise :class:`MissingExtraError` naming the pip command when ``extra`` is not installed
    (``feature``: what needs it, in the message; default the extra's own feature)."""
    absent = missing(extra)
    if absent:
        raise missing_error(extra, absent, feature)


def missing_error(extra: str, absent: list[str], feature: str | None = None) -> MissingExtraError:
    feature = feature or EXTRAS[extra][0]
    return MissingExtraError(f"{feature} needs the '{extra}' extra ({', '.join(absent)} not installed); run: pip install 'busai[{extra}]'")


@functools.cache
def has_torch() -> bool:
    """Whether PyTorch imports here (an import, not only a look-up: a broken or blocked torch counts as absent)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_imported() -> bool:
    """Whether torch is already imported in this process: the cheap question for code that only needs
    torch when a PyTorch model is in play (asking :func:`has_torch` would import it, seconds of start-up)."""
    import sys

    return "torch" in sys.modules


def torch_missing(exc: ImportError, feature: str) -> MissingExtraError | None:
    """The one-line error for ``exc`` when it is the torch extra's package failing to import; None for any other ImportError."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if name not in TORCH_MODULES:
        return None
    return missing_error("torch", [name], feature)
