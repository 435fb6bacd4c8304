"""busai: breast-ultrasound lesion segmentation and normal / benign / malignant classification.

The public API (see docs/python-api.md) is imported on first use, so ``import busai`` stays fast
and pulls in neither torch nor the models.
"""

import logging

__version__ = "0.1.0"

# The library never prints: notes (INFO) and warnings go to the "busai" logger. The CLI shows them
# on stderr (busai.cli.user_messages); a program using the library configures logging as it likes.
logging.getLogger(__name__).addHandler(logging.NullHandler())

CLASSES = ("normal", "benign", "malignant")
"""Class names in label-index order, used by every model, metric and output file."""

SPLIT_NAMES = ("train", "val", "test")
"""The splits of a split file, in the order tables and figures show them."""

__all__ = ["load", "Model", "TrainConfig", "train", "resume", "evaluate", "predict", "list_models"]

# Where each public name lives. No submodule may share one of these names: importing busai.NAME
# would bind the package attribute NAME to that module (hence busai.prediction, busai.evaluation).
_HOMES = {
    "load": ("busai.api", "load"),
    "Model": ("busai.api", "Model"),
    "TrainConfig": ("busai.config", "TrainConfig"),
    "train": ("busai.training", "train"),
    "resume": ("busai.training", "resume"),
    "list_models": ("busai.models.registry", "list_models"),
    "predict": ("busai.api", "predict"),
    "evaluate": ("busai.api", "evaluate"),
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'busai' has no attribute {name!r}")
    import importlib

    module_name, attribute = _HOMES[name]
    module = importlib.import_module(module_name)
    return getattr(module, attribute)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
