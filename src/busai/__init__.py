"""busai: breast-ultrasound lesion segmentation and normal / benign / malignant classification.

The public API (see docs/python-api.md) is imported on first use, so ``import busai`` stays fast
and pulls in neither torch nor the models.
"""

__version__ = "0.1.0"

CLASSES = ("normal", "benign", "malignant")
"""Class names in label-index order, used by every model, metric and output file."""

SPLIT_NAMES = ("train", "val", "test")
"""The splits of a split file, in the order tables and figures show them."""

__all__ = ["load", "Model", "TrainConfig", "train", "resume", "evaluate", "predict", "list_models"]

_HOMES = {
    "load": ("busai.api", "load"),
    "Model": ("busai.api", "Model"),
    "TrainConfig": ("busai.config", "TrainConfig"),
    "train": ("busai.training", "train"),
    "resume": ("busai.training", "resume"),
    "list_models": ("busai.models.registry", "list_models"),
    # busai/predict.py and busai/evaluate.py share these names, and importing a submodule rebinds
    # the package attribute to it; so the modules themselves are made callable (_make_callable).
    "predict": ("busai.predict", None),
    "evaluate": ("busai.evaluate", None),
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'busai' has no attribute {name!r}")
    import importlib

    module_name, attribute = _HOMES[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _make_callable(module_name: str, target: str) -> None:
    """Make the module ``module_name`` callable as the function ``target`` ("module:function"),
    so ``busai.predict(...)`` / ``busai.evaluate(...)`` work whichever import ran first."""
    import importlib
    import sys
    import types

    home, function = target.split(":")

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module(home), function)(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule
