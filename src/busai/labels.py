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

A dataset's labels need not be those three: a table or a class folder may give any simple name
(:func:`label_name`), e.g. BI-RADS categories ``2``, ``3``, ``4a``, ``5``. Only ``normal`` keeps a
meaning of its own (a lesion-free scan, whose empty mask segmentation trains on). Labels are listed
in one order everywhere (:func:`label_key`): normal, benign, malignant, then the others in natural
order (``2 < 3 < 4a < 4b < 5 < 10``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from busai import CLASSES
from busai.errors import ConfigError, DataError

# A label becomes a class name: a p_<class> column, a --classes item, a file-name part. Hence one
# plain ASCII word, which no CSV, command line or file system mangles.
_LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
LABEL_RULE = "letters, digits, '-', '_' or '.', e.g. 4a or birads-4"


def label_name(value: str, where: str, fix: str = "fix the row") -> str | None:
    """A label as a table cell or folder name gives it, stripped and lower-cased; None for an empty
    cell (an unlabelled scan). Anything but a simple name is one :class:`DataError` naming ``where``."""
    label = str(value).strip().lower()
    if not label:
        return None
    if not _LABEL_RE.match(label):
        raise DataError(f"{where}: label '{value}' is not a simple name ({LABEL_RULE}); {fix}")
    return label


def label_key(label: str) -> tuple:
    """Sort key of a label: normal, benign, malignant first, then the others in natural order
    (digits compared as numbers: BI-RADS ``2 < 3 < 4a < 4b < 5``)."""
    if label in CLASSES:
        return (0, CLASSES.index(label))
    # re.split with a group alternates text and digits, so the parts compare position by position.
    return (1, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label)])


def ordered(labels: Iterable[str | None]) -> tuple[str, ...]:
    """The distinct labels given (None left out), in :func:`label_key` order."""
    return tuple(sorted({label for label in labels if label is not None}, key=label_key))


def count_names(labels: Iterable[str | None]) -> tuple[str, ...]:
    """The labels a count table lists: data labelled with the standard classes lists all three (a
    class it lacks shows 0); data with other labels lists the labels it has."""
    present = ordered(labels)
    return CLASSES if set(present) <= set(CLASSES) else present


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
        _check_names([*mapping, *mapping.values()], value)
        if len(set(mapping.values())) < 2:
            raise ConfigError(f"classes {value}: maps every label to one class; a classifier needs at least 2 classes")
        return mapping
    if isinstance(value, (list, tuple)):
        names = [str(v).strip().lower() for v in value]
        _check_names(names, ",".join(names))
        if len(names) != len(set(names)):
            raise ConfigError(f"classes {','.join(names)}: names a class twice; name each once")
        if len(names) < 2:
            raise ConfigError(f"classes {','.join(names)}: a classifier needs at least 2 classes, e.g. --classes benign,malignant")
        return names
    raise ConfigError(f"classes {value!r}: give a list of class names or a mapping of data label to class (see docs/datasets.md)")


def _check_names(names: list[str], value) -> None:
    bad = [name for name in names if not _LABEL_RE.match(name)]
    if bad:
        raise ConfigError(f"classes {value}: '{bad[0]}' is not a simple name ({LABEL_RULE}); fix the class names")


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
        names = ordered(labels)
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
