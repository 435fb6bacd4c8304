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
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from busai.config import SPLIT_TEST, SPLIT_VAL
from busai import SPLIT_NAMES
from busai.data.discover import Record
from busai.errors import ConfigError, DataError, read_json
from busai.labels import count_names, label_key
from busai.outputs import atomic_write_text

FORMAT = "busai-splits/1"
DUPLICATE_POLICIES = ("group", "exclude", "ignore")


def dataset_fingerprint(records: list[Record]) -> str:
    """sha256 over sorted relative paths, labels and image + mask file sizes: changes when the folder
    does, and not with the name a dataset is given on the command line."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.relpath):
        sizes = " ".join(str(p.stat().st_size) for p in (record.image, *record.masks))
        digest.update(f"{record.relpath}\t{record.label}\t{sizes}\n".encode("utf-8", "surrogateescape"))  # a name's own bytes
    return digest.hexdigest()


def make_splits(
    records: list[Record],
    groups: list[list[str]],
    *,
    val: float = SPLIT_VAL,
    test: float = SPLIT_TEST,
    seed: int = 0,
    folds: int | None = None,
    duplicates: str = "group",
    formats: dict[str, str] | None = None,
) -> dict:
    """Stratified, group-aware train / val / test split (paper: 80:10:10) as a JSON-ready dict.

    ``groups`` are lists of record keys that must stay together (the audit's ``duplicate_groups``);
    each record's ``group`` (patient) adds one more. A group's class for stratification is its
    majority class, ties going to the more severe one. Conflict groups (several classes) are kept
    in train. ``folds=K`` adds K grouped, stratified folds over train + val (test stays fixed).

    Several datasets (records with ``dataset`` names) are split one by one with the same seed, so
    each is stratified by its own classes and a dataset's part does not depend on the others: BUSI
    split beside BUS-UCLM gets exactly the split it gets alone. A duplicate group that spans two
    datasets goes to train in both, where it cannot leak.
    """
    _check_options(val, test, folds, duplicates)
    if not records:
        raise DataError("no images to split; point `busai data split` at a folder with benign/, malignant/ and normal/ images")
    unlabelled = [r for r in records if r.label is None]
    if unlabelled:
        raise DataError(f"{unlabelled[0].image}: has no label ({len(unlabelled)} such images); a split needs labelled images")
    label_of = {r.key: r.label for r in records}
    names_counted = count_names(label_of.values())  # every count table lists the same labels
    order = {r.key: i for i, r in enumerate(records)}
    dataset_of = {r.key: r.dataset for r in records}
    names = list(dict.fromkeys(r.dataset for r in records))
    duplicate = _merge_groups([[k for k in g if k in label_of] for g in groups])
    patients: dict[tuple[str, str], list[str]] = {}
    for r in records:
        if r.group is not None:
            patients.setdefault((r.dataset, r.group), []).append(r.key)
    together = _merge_groups(duplicate + list(patients.values()))
    cross = [g for g in together if len({dataset_of[k] for k in g}) > 1]
    cross_keys = {k for g in cross for k in g}
    # A duplicate group filed under two classes is one scan with two labels: it stays in train. A
    # patient with normal and lesion scans is no conflict.
    conflicted = {k for g in duplicate if len({label_of[x] for x in g}) > 1 for k in g}

    assigned: dict[str, list[list[str]]] = {name: list(cross) if name == "train" else [] for name in SPLIT_NAMES}
    excluded: list[str] = []
    fold_parts: list[list[dict]] = []
    for name in names:
        mine = [r for r in records if r.dataset == name and r.key not in cross_keys]
        keys = {r.key for r in mine}
        dup_d = [g for g in duplicate if keys.issuperset(g)]
        pat_d = [g for (d, _), g in patients.items() if d == name and keys.issuperset(g)]
        units, excluded_d = _units(mine, dup_d, pat_d, duplicates)
        excluded += excluded_d
        if not units:
            raise DataError("every image is in a duplicate group, nothing is left to split; use --duplicates group")
        part = _best_allocation(units, label_of, {"train": 1.0 - val - test, "val": val, "test": test}, seed, conflicted)
        for split_name in SPLIT_NAMES:
            assigned[split_name] += part[split_name]
        if folds:
            fold_parts.append(_grouped_folds(part["train"] + part["val"], label_of, order, folds, seed))

    result: dict = {
        "format": FORMAT,
        "seed": seed,
        "fractions": {"val": val, "test": test},
        "duplicates": duplicates,
        "fingerprint": dataset_fingerprint(records) if names == [""] else None,
        "counts": {},
        **{name: sorted((k for u in assigned[name] for k in u), key=order.get) for name in SPLIT_NAMES},
        "excluded": sorted(excluded, key=order.get),
        "groups": [sorted(g, key=order.get) for g in sorted(together, key=lambda g: min(order[k] for k in g))],
    }
    result["counts"] = {name: _class_counts(result[name], label_of, names_counted) for name in (*SPLIT_NAMES, "excluded")}
    result["leaked"] = leaked_keys(result, duplicate)
    if names != [""]:
        del result["fingerprint"]
        result["datasets"] = {
            name: {
                "format": (formats or {}).get(name),
                "fingerprint": dataset_fingerprint([r for r in records if r.dataset == name]),
                "counts": {s: _class_counts([k for k in result[s] if dataset_of[k] == name], label_of, names_counted) for s in (*SPLIT_NAMES, "excluded")},
                "patients": {s: len({g for (d, g), ks in patients.items() if d == name and ks[0] in set(result[s])}) for s in SPLIT_NAMES},
            }
            for name in names
        }
        if cross:
            result["cross_dataset_groups"] = [sorted(g, key=order.get) for g in cross]
    if folds:
        result["folds"] = [
            {
                "train": sorted((k for part in fold_parts for k in part[i]["train"]), key=order.get) + sorted(cross_keys, key=order.get),
                "val": sorted((k for part in fold_parts for k in part[i]["val"]), key=order.get),
            }
            for i in range(folds)
        ]
        for fold in result["folds"]:
            fold["train"] = sorted(fold["train"], key=order.get)
            fold["counts"] = {name: _class_counts(fold[name], label_of, names_counted) for name in ("train", "val")}
    return result


def _units(records: list[Record], duplicate: list[list[str]], patients: list[list[str]], policy: str) -> tuple[list[list[str]], list[str]]:
    """What the allocation moves as one piece: merged groups, then single images. Patient groups
    always stay together; the duplicate policy decides what happens to duplicate groups."""
    excluded: list[str] = []
    if policy == "exclude":
        excluded = [r.key for r in records if any(r.key in g for g in duplicate)]
        gone = set(excluded)
        together = _merge_groups([[k for k in g if k not in gone] for g in patients])
        pool = [r for r in records if r.key not in gone]
    elif policy == "ignore":
        together, pool = _merge_groups(patients), records
    else:
        together, pool = _merge_groups(duplicate + patients), records
    grouped = {k for g in together for k in g}
    return together + [[r.key] for r in pool if r.key not in grouped], excluded


def duplicate_groups(splits: dict, keys: list[str]) -> list[str]:
    """Each key's duplicate group from a splits file (the key itself where it has none), for CIs
    that resample groups: near-duplicate frames of one lesion are not independent observations."""
    group_of = {key: f"group {i}" for i, group in enumerate(splits.get("groups", [])) for key in group}
    return [group_of.get(key, key) for key in keys]


def leaked_keys(splits: dict, groups: list[list[str]] | None = None) -> dict[str, list[str]]:
    """Per held-out split, its images that have a duplicate-group partner in train (empty unless
    the split was made with ``duplicates="ignore"``)."""
    train = set(splits["train"])
    groups = splits["groups"] if groups is None else groups
    partnered = {k for g in groups if train.intersection(g) for k in g}
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
    """Majority class of a group; a tie goes to the more severe class (malignant > benign > normal;
    other labels after them in busai.labels order, so BI-RADS 5 > 4a > 3)."""
    votes = Counter(label_of[k] for k in keys)
    return max(votes, key=lambda c: (votes[c], label_key(c)))


SEARCH_ORDERS = 2000
"""Seeded random unit orders tried when one greedy pass misses the per-class targets (large groups)."""


def _best_allocation(
    units: list[list[str]], label_of: dict[str, str], fractions: dict[str, float], seed: int, conflicted: set[str]
) -> dict[str, list[list[str]]]:
    """The greedy allocation (largest units first); where large groups (patients) leave a split more
    than two images off a class target, the closest of ``SEARCH_ORDERS`` seeded greedy passes over
    random unit orders instead. Datasets of single images and small duplicate groups never need the
    search, so their splits stay what the single pass gives."""
    rng = np.random.default_rng(seed)
    best = _allocate(units, label_of, fractions, rng, conflicted)
    best_cost, worst = _allocation_cost(best, label_of, fractions)
    if worst <= 2.0:
        return best
    search = np.random.default_rng([seed, 1])
    for _ in range(SEARCH_ORDERS):
        order = [units[i] for i in search.permutation(len(units))]
        candidate = _allocate(order, label_of, fractions, search, conflicted, largest_first=False)
        cost, _ = _allocation_cost(candidate, label_of, fractions)
        if cost < best_cost:
            best, best_cost = candidate, cost
    return best


def _allocation_cost(assigned: dict[str, list[list[str]]], label_of: dict[str, str], fractions: dict[str, float]) -> tuple[float, float]:
    """(sum of squared per-class misses relative to each target, the largest miss in images)."""
    totals = Counter(label_of[k] for units in assigned.values() for u in units for k in u)
    cost, worst = 0.0, 0.0
    for split, f in fractions.items():
        got = Counter(label_of[k] for u in assigned[split] for k in u)
        for c in totals:
            target = f * totals[c]
            miss = abs(got[c] - target)
            cost += miss**2 / max(target, 1.0)
            worst = max(worst, miss)
    return cost, worst


def _allocate(
    units: list[list[str]],
    label_of: dict[str, str],
    fractions: dict[str, float],
    rng: np.random.Generator,
    conflicted: set[str],
    *,
    largest_first: bool = True,
) -> dict[str, list[list[str]]]:
    """Greedy stratified allocation (see module docstring): each unit goes where its classes are most wanted."""
    class_totals = Counter(label_of[k] for u in units for k in u)
    quota = {s: {c: f * class_totals[c] for c in class_totals} for s, f in fractions.items()}
    filled = {s: Counter() for s in fractions}
    assigned: dict[str, list[list[str]]] = {s: [] for s in fractions}
    shuffled = [units[i] for i in rng.permutation(len(units))]
    # A conflict group (one scan filed under two classes) always goes to train: in val or test one of
    # its labels would be scored wrong whatever the model predicts.
    for unit in [u for u in shuffled if conflicted.intersection(u)]:
        assigned["train"].append(unit)
        filled["train"].update(Counter(label_of[k] for k in unit))
    shuffled = [u for u in shuffled if not conflicted.intersection(u)]
    for unit in sorted(shuffled, key=len, reverse=True) if largest_first else shuffled:  # stable: big groups first, ties stay shuffled
        composition = Counter(label_of[k] for k in unit)

        def want(split: str) -> float:
            # Fraction of this split's per-class quota still open, weighted by the unit's classes.
            return sum(n * ((quota[split][c] - filled[split][c]) / quota[split][c] if quota[split][c] > 0 else -1e9) for c, n in composition.items())

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


def _class_counts(keys: list[str], label_of: dict[str, str], names=None) -> dict[str, int]:
    """Images per label among ``keys``, for the labels ``names`` (default: busai.labels.count_names of all of ``label_of``)."""
    counts = Counter(label_of[k] for k in keys)
    return {c: counts[c] for c in (names or count_names(label_of.values()))}


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
    atomic_write_text(path, json.dumps(splits, indent=2) + "\n")  # a reader never sees half a file
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
    """Load and validate a split file written by :func:`write_splits` (or by hand in its format).

    Every list must hold strings, none twice, and train / val / test / excluded must be disjoint
    (each fold's train and val too, and both apart from test): a split that overlaps would score a
    model on images it trained on.
    """
    path = Path(path)
    remake = f"re-create it with `busai data split DATA_DIR --out {path} --force`"
    splits = read_json(path, error=DataError, missing=f"split file not found; create it with `busai data split DATA_DIR --out {path}`", fix=remake)
    found = splits.get("format") if isinstance(splits, dict) else None
    if found != FORMAT:
        raise DataError(f"{path}: not a busai split file (format {found!r}, expected '{FORMAT}'); {remake}")
    for name in SPLIT_NAMES:
        if not isinstance(splits.get(name), list):
            raise DataError(f"{path}: the '{name}' list is missing; {remake}")
    _check_disjoint(path, {name: splits.get(name) or [] for name in (*SPLIT_NAMES, "excluded")}, remake)
    for i, fold in enumerate(splits.get("folds") or []):
        if not isinstance(fold, dict) or not all(isinstance(fold.get(n), list) for n in ("train", "val")):
            raise DataError(f"{path}: fold {i} lacks its train and val lists; {remake}")
        _check_disjoint(path, {f"fold {i} train": fold["train"], f"fold {i} val": fold["val"], "test": splits["test"]}, remake)
    return splits


def _check_disjoint(path: Path, lists: dict[str, list], remake: str) -> None:
    where: dict[str, str] = {}
    for name, keys in lists.items():
        for key in keys:
            if not isinstance(key, str):
                raise DataError(f"{path}: the '{name}' list holds {json.dumps(key)[:60]}, not an image key (a path string); {remake}")
            if key in where:
                twice = f"listed twice in '{name}'" if where[key] == name else f"in both '{where[key]}' and '{name}'"
                raise DataError(f"{path}: '{key}' is {twice}; each image belongs to one split: {remake}")
            where[key] = name


def split_datasets(splits: dict) -> list[str]:
    """The dataset names a split file's keys carry ([''] for a single unnamed dataset)."""
    return list(splits.get("datasets") or {"": None})


def load_split_records(data, splits: dict | str | Path, split: str, fold: int | None = None) -> list[Record]:
    """Records of one split (``train``, ``val``, ``test`` or ``excluded``), in the split file's order.

    ``data`` is one dataset (a path) or several (``NAME=PATH`` strings or
    :class:`~busai.data.sources.DataSpec`); only the given datasets' part of the split is used, so
    one split file over BUSI and BUS-UCLM serves runs on either or both. With ``fold`` the train /
    val lists of that cross-validation fold are used (test is fixed). Warns when a folder is not
    the one the splits were made from (fingerprint differs).
    """
    from busai.data.sources import parse_data_specs, read_records

    if not isinstance(splits, dict):
        splits = read_splits(splits)
    specs = parse_data_specs(data)
    if not specs:
        raise ConfigError("no dataset given; pass --data DIR (or --data NAME=DIR for each dataset of the split file)")
    known = split_datasets(splits)
    given = [s.name for s in specs]
    if known == [""] and given != [""]:
        raise DataError(f"the split file holds one unnamed dataset; pass it as --data DIR, not --data {specs[0]}")
    if known != [""]:
        unknown = [n for n in given if n not in known]
        if unknown:
            named = ", ".join(f"{n}=DIR" for n in known)
            raise DataError(
                f"--data {unknown[0] or specs[0].path}: the split file's datasets are {', '.join(known)}; pass --data {named.replace(', ', ' --data ')}"
            )
    keys = [k for k in _split_keys(splits, split, fold) if known == [""] or k.split(":", 1)[0] in given]
    records = read_records(specs)
    for spec in specs:
        expected = splits.get("fingerprint") if known == [""] else splits["datasets"][spec.name].get("fingerprint")
        mine = [r for r in records if r.dataset == spec.name]
        if expected and expected != dataset_fingerprint(mine):
            warnings.warn(
                f"{spec.path}: the images differ from those the splits were made from (fingerprint mismatch); results may not be comparable with other runs",
                stacklevel=2,
            )
    by_key = {r.key: r for r in records}
    missing = [k for k in keys if k not in by_key]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(
            f"{missing[0]}: listed in the '{split}' split but not found in {specs[0].path if len(specs) == 1 else 'the given datasets'}{more}; "
            "check the data folder or re-run `busai data split ... --out FILE --force`"
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
