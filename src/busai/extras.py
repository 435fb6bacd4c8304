"""Optional parts of busai and the packages each needs: ``pip install 'busai[NAME]'``.

The core (train, evaluate, predict in PyTorch, report) installs without them. A feature that needs
one calls :func:`require` first, so a missing package is one clear error line naming the extra to
install, not an ImportError from deep inside a library.
"""

from __future__ import annotations

from importlib.util import find_spec

from busai.errors import BusaiError

# extra -> (feature, importable modules); keep in step with [project.optional-dependencies].
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "serve": ("the web page (`busai serve`)", ("fastapi", "uvicorn", "multipart", "pytorch_grad_cam")),
    "tune": ("hyper-parameter search (`busai tune`)", ("optuna",)),
    "export": ("ONNX export and the ONNX Runtime backend", ("onnx", "onnxruntime")),
}


class MissingExtraError(BusaiError):
    """A feature's optional dependencies are not installed."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    return [name for name in EXTRAS[extra][1] if find_spec(name) is None]


def require(extra: str) -> None:
    """Raise :class:`MissingExtraError` naming the pip command when ``extra`` is not installed."""
    absent = missing(extra)
    if absent:
        feature = EXTRAS[extra][0]
        raise MissingExtraError(f"{feature} needs the '{extra}' extra ({', '.join(absent)} not installed); run: pip install 'busai[{extra}]'")
