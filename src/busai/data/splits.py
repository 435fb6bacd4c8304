"""Train / val / test splits as data: made once, written as JSON, reused by every run.

Splits are stratified by class and keep each duplicate group (from :func:`busai.data.audit.audit_dataset`)
inside one split, so a re-cropped copy of a test image can never sit in train. With
``duplicates="exclude"`` every image of a duplicate group is left out instead and listed under
``excluded``. ``duplicates="ignore"`` splits image by image as the paper did (a control that measures
what the leak is worth); the groups are still written, and ``leaked`` counts the val / test images
whose duplicate sits in train.

The hold-out split is a greedy allocation, not ``sklearn``: ``StratifiedGroupKFold`` only makes
1/K-sized parts, while ``--val 0.15`` or ``--test 0.2`` must be honoured per class. Units
(duplicate groups, then single images, largest first, ties in seeded random order) go one by one
to the split whose per-class quota is least filled, which lands every split within about one
image (plus the size of a group) of ``fraction * class count``. Cross-validation folds over
train + val use ``sklearn.model_selection.StratifiedGroupKFold``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from busai import CLASSES, SPLIT_NAMES
from busai.data.discover import Record, discover_records
from busai.errors import ConfigError, DataError, read_json

FORMAT = "busai-splits/1"
DUPLICATE_POLICIES = ("group", "exclude", "ignore")
_SEVERITY = {name: i for i, name in enumerate(CLASSES)}  # ties in a conflict go to the more severe class


def dataset_fingerprint(records: list[Record]) -> str:
    """sha256 over sorted keys, labels and image + mask file sizes: changes when the folder does."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.key):
        sizes = " ".join(str(p.stat().st_size) for p in (record.image, *record.masks))
        digest.update(f"{record.key}\t{record.label}\t{sizes}\n".encode())
    return digest.hexdigest()


def make_splits(
    records: list[Record],
    groups: list[list[str]],
    *,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    folds: int | None = None,
    duplicates: str = "group",
) -> dict:
    """Stratified, duplicate-aware train / val / test split (paper: 80:10:10) as a JSON-ready dict.

    ``groups`` are lists of record keys that must stay together (the audit's ``duplicate_groups``);
    keys not in ``records`` are ignored. A group's class for stratification is its majority class,
    ties going to the more severe one. Conflict groups (several classes) are kept in train. ``folds=K`` adds K grouped, stratified folds over train + val
    (the test set stays fixed).
    """
    _check_options(val, test, folds, duplicates)
    if not records:
        raise DataError("no images to split; point `busai data split` at a folder with benign/, malignant/ and normal/ images")
    label_of = {r.key: r.label for r in records}
    order = {r.key: i for i, r in enumerate(records)}
    merged = _merge_groups([[k for k in g if k in label_of] for g in groups])
    grouped = {k for g in merged for k in g}
    excluded: list[str] = []
    if duplicates == "exclude":
        excluded = sorted(grouped, key=order.get)
        units = [[r.key] for r in records if r.key not in grouped]
    elif duplicates == "ignore":
        units = [[r.key] for r in records]
    else:
        units = merged + [[r.key] for r in records if r.key not in grouped]
    if not units:
        raise DataError("every image is in a duplicate group, nothing is left to split; use --duplicates group")

    rng = np.random.default_rng(seed)
    fractions = {"train": 1.0 - val - test, "val": val, "test": test}
    assigned = _allocate(units, label_of, fractions, rng)
    result: dict = {
        "format": FORMAT,
        "seed": seed,
        "fractions": {"val": val, "test": test},
        "duplicates": duplicates,
        "fingerprint": dataset_fingerprint(records),
        "counts": {},
        **{name: sorted((k for u in assigned[name] for k in u), key=order.get) for name in SPLIT_NAMES},
        "excluded": excluded,
        "groups": [sorted(g, key=order.get) for g in sorted(merged, key=lambda g: min(order[k] for k in g))],
    }
    result["counts"] = {name: _class_counts(result[name], label_of) for name in (*SPLIT_NAMES, "excluded")}
    result["leaked"] = leaked_keys(result)
    if folds:
        result["folds"] = _grouped_folds(assigned["train"] + assigned["val"], label_of, order, folds, seed)
    return result


def duplicate_groups(splits: dict, keys: list[str]) -> list[str]:
    """Each key's duplicate group from a splits file (the key itself where it has none), for CIs
    that resample groups: near-duplicate frames of one lesion are not independent observations."""
    group_of = {key: f"group {i}" for i, group in enumerate(splits.get("groups", [])) for key in group}
    return [group_of.get(key, key) for key in keys]


def leaked_keys(splits: dict) -> dict[str, list[str]]:
    """Per held-out split, its images that have a duplicate-group partner in train (empty unless
    the split was made with ``duplicates="ignore"``)."""
    train = set(splits["train"])
    partnered = {k for g in splits["groups"] if train.intersection(g) for k in g}
    return {name: [k for k in splits[name] if k in partnered] for name in ("val", "test")}


def _check_options(val: float, test: float, folds: int | None, duplicates: str) -> None:
    for name, value in (("--val", val), ("--test", test)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} {value}: must be a fraction in [0, 1), e.g. 0.1")
    if val + test >= 1.0:
        raise ConfigError(f"--val {val} + --test {test}: leave some images for training (their sum must be below 1)")
    if folds is not None and folds < 2:
        raise ConfigError(f"--folds {folds}: need at least 2 folds (or leave --folds out for one train/val split)")
    if duplicates not in DUPLICATE_POLICIES:
        raise ConfigError(f"duplicates '{duplicates}': unknown policy; choose {', '.join(DUPLICATE_POLICIES)}")


def _merge_groups(groups: list[list[str]]) -> list[list[str]]:
    """Union overlapping groups so that every key is in at most one (the audit's are already disjoint)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    keys = sorted({k for g in groups if len(g) > 1 for k in g})
    if not keys:
        return []
    index = {k: i for i, k in enumerate(keys)}
    pairs = np.array([(index[g[0]], index[k]) for g in groups if len(g) > 1 for k in g], dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(keys), len(keys)))
    _, component = connected_components(graph, directed=False)
    merged: dict[int, list[str]] = {}
    for key, c in zip(keys, component):
        merged.setdefault(int(c), []).append(key)
    return list(merged.values())


def unit_label(keys: list[str], label_of: dict[str, str]) -> str:
    """Majority class of a group; a tie goes to the more severe class (malignant > benign > normal)."""
    votes = Counter(label_of[k] for k in keys)
    return max(votes, key=lambda c: (votes[c], _SEVERITY[c]))


def _allocate(units: list[list[str]], label_of: dict[str, str], fractions: dict[str, float], rng: np.random.Generator) -> dict[str, list[list[str]]]:
    """Greedy stratified allocation (see module docstring): each unit goes where its classes are most wanted."""
    class_totals = Counter(label_of[k] for u in units for k in u)
    quota = {s: {c: f * class_totals[c] for c in CLASSES} for s, f in fractions.items()}
    filled = {s: Counter() for s in fractions}
    assigned: dict[str, list[list[str]]] = {s: [] for s in fractions}
    shuffled = [units[i] for i in rng.permutation(len(units))]
    # A conflict group (one scan filed under two classes) always goes to train: in val or test one of
    # its labels would be scored wrong whatever the model predicts.
    for unit in [u for u in shuffled if len({label_of[k] for k in u}) > 1]:
        assigned["train"].append(unit)
        filled["train"].update(Counter(label_of[k] for k in unit))
    shuffled = [u for u in shuffled if len({label_of[k] for k in u}) == 1]
    for unit in sorted(shuffled, key=len, reverse=True):  # stable: big groups first, ties stay shuffled
        composition = Counter(label_of[k] for k in unit)

        def want(split: str) -> float:
            # Fraction of this split's per-class quota still open, weighted by the unit's classes.
            return sum(
                n * ((quota[split][c] - filled[split][c]) / quota[split][c] if quota[split][c] > 0 else -1e9)
                for c, n in composition.items()
            )

        best = max(fractions, key=want)  # ties: first in train, val, test order
        assigned[best].append(unit)
        filled[best].update(composition)
    return assigned


def _grouped_folds(units: list[list[str]], label_of: dict[str, str], order: dict[str, int], k: int, seed: int) -> list[dict]:
    from sklearn.model_selection import StratifiedGroupKFold

    keys = [key for u in units for key in u]
    y = [unit_label(u, label_of) for u in units for _ in u]  # a group is stratified by its majority class
    group_ids = [i for i, u in enumerate(units) for _ in u]
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class has only n members": fine for tiny sets
            parts = list(splitter.split(np.zeros(len(keys)), y, group_ids))
    except ValueError as exc:
        raise DataError(f"--folds {k}: cannot make {k} folds from {len(units)} train+val units ({exc}); use fewer folds") from None
    folds = []
    for train_idx, val_idx in parts:
        fold = {name: sorted((keys[i] for i in idx), key=order.get) for name, idx in (("train", train_idx), ("val", val_idx))}
        fold["counts"] = {name: _class_counts(fold[name], label_of) for name in ("train", "val")}
        folds.append(fold)
    return folds


def _class_counts(keys: list[str], label_of: dict[str, str]) -> dict[str, int]:
    counts = Counter(label_of[k] for k in keys)
    return {c: counts[c] for c in CLASSES}


def write_splits(path: str | Path, splits: dict, *, overwrite: bool = False) -> Path:
    """Write ``splits`` as JSON atomically; refuse to replace a file that holds different splits.

    Files that differ only in their ``command`` field, or in ``leaked`` (derived from the rest, and
    absent from files written before it existed), count as the same splits.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; pass a file name for the splits, e.g. {path / 'splits.json'}")
    if path.exists() and not overwrite and _same_splits(path, splits):
        return path  # left byte for byte as it is: runs record its sha256 (see training's --weights check)
    if path.exists() and not overwrite:
        raise DataError(f"{path}: already holds different splits; pass --force to overwrite it (runs made with the old file will no longer match)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(splits, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    return path


def _same_splits(path: Path, splits: dict) -> bool:
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(old, dict):
        return False
    strip = lambda d: {k: v for k, v in d.items() if k not in ("command", "leaked")}  # noqa: E731
    return strip(old) == strip(json.loads(json.dumps(splits)))


def read_splits(path: str | Path) -> dict:
    """Load and validate a split file written by :func:`write_splits` (or by hand in its format)."""
    path = Path(path)
    remake = f"re-create it with `busai data split DATA_DIR --out {path} --force`"
    splits = read_json(path, error=DataError, missing=f"split file not found; create it with `busai data split DATA_DIR --out {path}`", fix=remake)
    found = splits.get("format") if isinstance(splits, dict) else None
    if found != FORMAT:
        raise DataError(f"{path}: not a busai split file (format {found!r}, expected '{FORMAT}'); {remake}")
    for name in SPLIT_NAMES:
        if not isinstance(splits.get(name), list):
            raise DataError(f"{path}: the '{name}' list is missing; {remake}")
        bad = [entry for entry in splits[name] if not isinstance(entry, str)]
        if bad:
            raise DataError(f"{path}: the '{name}' list holds {json.dumps(bad[0])[:60]}, not an image path like 'benign/benign (1).png'; {remake}")
    return splits


def load_split_records(data_dir: str | Path, splits: dict | str | Path, split: str, fold: int | None = None) -> list[Record]:
    """Records of one split (``train``, ``val``, ``test`` or ``excluded``), in the split file's order.

    With ``fold`` the train / val lists of that cross-validation fold are used (test is fixed).
    Warns when the folder is not the one the splits were made from (fingerprint differs).
    """
    if not isinstance(splits, dict):
        splits = read_splits(splits)
    keys = _split_keys(splits, split, fold)
    records = discover_records(data_dir)
    if splits.get("fingerprint") and splits["fingerprint"] != dataset_fingerprint(records):
        warnings.warn(
            f"{data_dir}: the images differ from those the splits were made from (fingerprint mismatch); "
            "results may not be comparable with other runs",
            stacklevel=2,
        )
    by_key = {r.key: r for r in records}
    missing = [k for k in keys if k not in by_key]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(
            f"{missing[0]}: listed in the '{split}' split but not found in {data_dir}{more}; "
            f"check the data folder or re-run `busai data split {data_dir} --out FILE --force`"
        )
    return [by_key[k] for k in keys]


def _split_keys(splits: dict, split: str, fold: int | None) -> list[str]:
    if split not in (*SPLIT_NAMES, "excluded"):
        raise DataError(f"split '{split}': unknown; choose train, val or test")
    if fold is None or split in ("test", "excluded"):
        return list(splits.get(split, []))
    folds = splits.get("folds") or []
    if not folds:
        raise DataError(f"fold {fold}: the split file has no folds; re-run `busai data split DATA_DIR --out FILE --folds K --force`")
    if not 0 <= fold < len(folds):
        raise DataError(f"fold {fold}: out of range; the split file has {len(folds)} folds (0 to {len(folds) - 1})")
    return list(folds[fold][split])
