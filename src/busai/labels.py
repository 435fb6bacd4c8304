"""Label sets: which classes a classifier predicts, and how a dataset's labels map onto them.

A classifier's classes are stored in its model spec (``model_spec["classes"]``, in output order);
a model without them (the releases, runs made before label sets) predicts :data:`busai.CLASSES`.
The ``classes`` training option picks them:

- ``None``: the labels the training data has (train and val splits), in :data:`busai.CLASSES`
  order, so a benign / malignant dataset trains a two-class model;
- a list, e.g. ``["benign", "malignant"]``: those classes in that order; images with another
  label are left out;
- a mapping of data label to class, e.g. ``{"normal": "benign", "benign": "benign",
  "malignant": "malignant"}``: classes in order of first appearance among the values; images
  whose label is not a key are left out.

On the command line ``--classes benign,malignant`` or ``--classes 'normal=benign,benign=benign,malignant=malignant'``;
in a YAML ``--config``, ``classes:`` as a list or a mapping.
"""

from __future__ import annotations

from collections.abc import Iterable

from busai import CLASSES
from busai.errors import ConfigError


def parse_classes(value) -> list[str] | dict[str, str] | None:
    """The ``classes`` option in any accepted form (None, a list, a mapping, or the command-line text) -> None, a list or a mapping."""
    if value is None:
        return None
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
        if any("=" in item for item in items):
            pairs = [item.partition("=") for item in items]
            if any(not label.strip() or not name.strip() for label, _, name in pairs):
                raise ConfigError(f"--classes {value}: write LABEL=CLASS pairs, e.g. --classes 'normal=benign,benign=benign,malignant=malignant'")
            value = {label.strip().lower(): name.strip().lower() for label, _, name in pairs}
        else:
            value = items
    if isinstance(value, dict):
        mapping = {str(k).strip().lower(): str(v).strip().lower() for k, v in value.items()}
        if len(set(mapping.values())) < 2:
            raise ConfigError(f"classes {value}: maps every label to one class; a classifier needs at least 2 classes")
        return mapping
    if isinstance(value, (list, tuple)):
        names = [str(v).strip().lower() for v in value]
        if len(names) != len(set(names)):
            raise ConfigError(f"classes {','.join(names)}: names a class twice; name each once")
        if len(names) < 2:
            raise ConfigError(f"classes {','.join(names)}: a classifier needs at least 2 classes, e.g. --classes benign,malignant")
        return names
    raise ConfigError(f"classes {value!r}: give a list of class names or a mapping of data label to class (see docs/datasets.md)")


def label_map(option) -> dict[str, str] | None:
    """Data label -> class name for a ``classes`` option; None when every label is kept as it is."""
    option = parse_classes(option)
    if option is None:
        return None
    return dict(option) if isinstance(option, dict) else {name: name for name in option}


def resolve(option, labels: Iterable[str | None]) -> tuple[tuple[str, ...], dict[str, str]]:
    """(class names in output order, data label -> class name) for a ``classes`` option and the
    labels of the training data; labels outside the mapping are not trained on."""
    option = parse_classes(option)
    if option is None:
        present = {label for label in labels if label is not None}
        names = tuple(c for c in CLASSES if c in present) + tuple(sorted(present - set(CLASSES)))
        return names, {name: name for name in names}
    mapping = label_map(option)
    return tuple(dict.fromkeys(mapping.values())), mapping


def class_names(spec: dict | None) -> tuple[str, ...]:
    """The classes a stored classifier (or multitask network) predicts, in output order."""
    return tuple((spec or {}).get("classes") or CLASSES)


def scoring_map(config: dict | None, classes: Iterable[str]) -> dict[str, int]:
    """Data label -> output index for scoring a model: its class names, plus the training
    mapping stored in its config (``train.classes`` as a mapping), so data labelled as the
    model was trained scores without repeating ``--classes``."""
    index = {name: i for i, name in enumerate(classes)}
    stored = label_map(((config or {}).get("train") or {}).get("classes"))
    for label, name in (stored or {}).items():
        if name in index:
            index.setdefault(label, index[name])
    return index
