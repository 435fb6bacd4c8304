"""Model registry and weight loading: ``build(task, name, encoder=, weights=)`` is the way in."""

from busai.models.registry import BuiltModel, Preprocessing, build, list_models

__all__ = ["BuiltModel", "Preprocessing", "build", "list_models"]
