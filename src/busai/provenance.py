"""What a model was trained on, and the guard that keeps its training images out of its scores.

A model's training data is, per dataset, the dataset's fingerprint and the relative paths of the
images it trained on (``train``) and chose its checkpoint on (``val``). A run folder knows it from
``config.json`` and ``splits.json``; a release folder from ``training_data.json``, which
:func:`busai.release.make_release` writes. Comparing by dataset fingerprint and relative path
(not by split-file hash) lets a model trained on BUSI's part of one split file be scored or
fine-tuned on a larger split file whose BUSI part is the same, and refuses exactly the cases
where an image would be scored by a model that saw it.

Paths alone miss a training image copied into another folder, or any image of a dataset whose
listing changed (one file added changes the fingerprint). So each dataset entry also carries
``content``: relative path -> [sha256 of the grayscale pixels, 64-bit phash as hex] of every train
and val image (:func:`busai.data.audit.content_hash`, the audit's own duplicate test). A run
writes them at training time (``image_hashes.json``); the guard then refuses an image whose pixels
equal, or whose phash is within the audit's near-duplicate distance of, a forbidden image's,
whatever its folder or dataset. A model recorded before content hashes were hashes what it can
from the dataset paths in its ``config.json``, else is checked by path alone, with a note.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from busai.errors import CheckpointError, ConfigError, DataError, read_json
from busai.runs import CONFIG, HASHES, SPLITS, TRAINING_DATA

# Which of a model's images may not appear in each role of a new use: scoring on test (or on a
# whole dataset as external validation) excludes everything the model saw; a new run's
# validation may reuse the images the weights were selected on, as fine-tuning on one split does.
FORBIDDEN = {"test": ("train", "val"), "all": ("train", "val"), "val": ("train",), "train": ()}


def training_data(model_dir: str | Path) -> list[dict] | None:
    """``[{"name", "fingerprint", "train": [...], "val": [...]}]`` for a run or release folder; None
    when the folder does not record it (a model from elsewhere: the user's responsibility)."""
    model_dir = Path(model_dir)
    if (model_dir / TRAINING_DATA).is_file():
        return read_json(model_dir / TRAINING_DATA, error=CheckpointError, missing="missing", fix="restore it from the release")["datasets"]
    config_path, splits_path = model_dir / CONFIG, model_dir / SPLITS
    if not config_path.is_file() or not splits_path.is_file():
        return None
    config = read_json(config_path, error=CheckpointError, missing="missing", fix="the run folder is damaged")
    splits = read_json(splits_path, error=CheckpointError, missing="missing", fix="the run folder is damaged")
    seen = describe_split(splits, config.get("train", {}).get("fold"), config.get("datasets"), config.get("data_fingerprint"))
    if (model_dir / HASHES).is_file():
        hashes = read_json(model_dir / HASHES, error=CheckpointError, missing="missing", fix="the run folder is damaged")
        for entry in seen:
            prefix = f"{entry['name']}:" if entry["name"] else ""
            entry["content"] = {rel: hashes[prefix + rel] for kind in ("train", "val") for rel in entry[kind] if prefix + rel in hashes}
    return seen


def describe_split(splits: dict, fold: int | None = None, used: dict | None = None, fingerprint: str | None = None) -> list[dict]:
    """A split file's train / val images per dataset, as :func:`training_data` returns them.

    ``used`` (a run config's ``datasets``) limits it to the datasets the run actually read.
    """
    source = splits["folds"][fold] if fold is not None and splits.get("folds") else splits
    datasets = splits.get("datasets")
    if not datasets:
        return [{"name": "", "fingerprint": fingerprint or splits.get("fingerprint"), "train": list(source["train"]), "val": list(source["val"])}]
    out = []
    for name, entry in datasets.items():
        if used is not None and name not in used:
            continue
        prefix = f"{name}:"
        train, val = ([k.removeprefix(prefix) for k in source[part] if k.startswith(prefix)] for part in ("train", "val"))
        out.append({"name": name, "fingerprint": entry.get("fingerprint"), "train": train, "val": val})
    return out


def check_unseen(model_dir: str | Path, records_by_role: dict[str, list], fingerprints: dict[str, str], *, what: str) -> None:
    """Refuse when a record of a role ('test', 'val', 'all', 'train') is an image the model at
    ``model_dir`` trained on or was selected on (see ``FORBIDDEN``): the same relative path in a
    dataset with the same fingerprint (``fingerprints``: dataset name -> fingerprint of its whole
    listing), or the same content (pixels, or a near-identical phash) anywhere. ``what`` names the
    use in the message (e.g. "scoring", "fine-tuning on")."""
    seen = training_data_with_content(model_dir)
    if not seen:
        return
    by_fingerprint = {d["fingerprint"]: d for d in seen if d.get("fingerprint")}
    for role, records in records_by_role.items():
        kinds = FORBIDDEN[role]
        if not kinds:
            continue
        for name in dict.fromkeys(r.dataset for r in records):
            entry = by_fingerprint.get(fingerprints.get(name))
            if entry is None:
                continue
            forbidden = {k for kind in kinds for k in entry[kind]}
            mine = [r for r in records if r.dataset == name]
            overlap = [r for r in mine if r.relpath in forbidden]
            if overlap:
                _refuse(model_dir, role, mine, overlap, overlap[0].relpath, what)
    _check_content(model_dir, seen, records_by_role, what)


def _refuse(model_dir, role: str, mine: list, overlap: list, example: str, what: str) -> None:
    name = mine[0].dataset
    label = f"dataset '{name}'" if name else str(mine[0].root)
    raise ConfigError(
        f"{model_dir}: {len(overlap)} of the {len(mine)} {role} images of {label} (e.g. {example}) were in this "
        f"model's training data; {what} them would leak: use images the model never saw (another split, or --all on another dataset)"
    )


def _check_content(model_dir: str | Path, seen: list[dict], records_by_role: dict[str, list], what: str) -> None:
    """The content half of :func:`check_unseen`: every record's hashes against the forbidden images'."""
    from busai.data.audit import DEFAULT_NEAR_THRESHOLD

    for role, records in records_by_role.items():
        kinds = FORBIDDEN[role]
        origins = [
            (f"{e['name']}:{rel}" if e["name"] else rel, *e["content"][rel]) for e in seen for kind in kinds for rel in e[kind] if rel in e.get("content", {})
        ]
        if not origins:
            continue
        by_digest = {digest: origin for origin, digest, _ in origins}
        phashes = np.array([int(h, 16) for _, _, h in origins], dtype=np.uint64)
        hashes = record_hashes(records)
        for name in dict.fromkeys(r.dataset for r in records):
            mine = [r for r in records if r.dataset == name]
            matches = []
            for r in mine:
                if r.key not in hashes:
                    continue  # unreadable: scoring skips or refuses it on its own
                digest, phash = hashes[r.key]
                if digest in by_digest:
                    matches.append((r, f"the same pixels as {by_digest[digest]}"))
                    continue
                distance = np.bitwise_count(phashes ^ np.uint64(int(phash, 16)))
                nearest = int(distance.argmin())
                if distance[nearest] <= DEFAULT_NEAR_THRESHOLD:
                    matches.append((r, f"a near copy of {origins[nearest][0]}, phash {int(distance[nearest])} bits apart"))
            if matches:
                r, why = matches[0]
                _refuse(model_dir, role, mine, [m for m, _ in matches], f"{r.relpath}: {why}", what)


def training_data_with_content(model_dir: str | Path) -> list[dict] | None:
    """:func:`training_data` with every entry's ``content`` filled in: for a model recorded before
    content hashes were (older runs and releases), hashed from the dataset paths its ``config.json``
    names, with a note on stderr for images not found there."""
    seen = training_data(model_dir)
    if not seen or all("content" in e for e in seen):
        return seen
    config_path = Path(model_dir) / CONFIG
    config = read_json(config_path, error=CheckpointError, missing="missing", fix="restore it") if config_path.is_file() else {}
    paths = {name: entry.get("path") for name, entry in (config.get("datasets") or {}).items()}
    for entry, missing in hash_entries(seen, paths).items():
        if (str(model_dir), entry) in _NOTED:
            continue  # once per process: evaluate checks each split and the pooled one
        _NOTED.add((str(model_dir), entry))
        label = f"dataset '{entry}'" if entry else "its dataset"
        print(
            f"note: {model_dir} records no image hashes and {missing} training images of {label} are not at "
            f"{paths.get(entry) or 'a recorded path'}; those are recognised by path only, in a dataset whose listing is unchanged",
            file=sys.stderr,
        )
    return seen


def hash_entries(seen: list[dict], paths: dict[str, str | Path | None]) -> dict[str, str]:
    """Fill ``content`` of the entries lacking it from the dataset at ``paths[name]`` (any layout);
    returns, per entry not fully hashed, "N of the M" images not found."""
    from busai.data.sources import parse_data_specs, scan_source

    incomplete = {}
    for entry in seen:
        if "content" in entry:
            continue
        path = paths.get(entry["name"])
        wanted = set(entry["train"]) | set(entry["val"])
        try:
            spec = parse_data_specs(f"{entry['name']}={path}" if entry["name"] else str(path))[0] if path else None
            records = [r for r in scan_source(spec)[0].records if r.relpath in wanted] if spec and Path(path).exists() else []
        except (DataError, ConfigError, OSError):
            records = []
        hashes = record_hashes(records)
        entry["content"] = {r.relpath: hashes[r.key] for r in records if r.key in hashes}
        if len(entry["content"]) < len(wanted):
            incomplete[entry["name"]] = f"{len(wanted) - len(entry['content'])} of the {len(wanted)}"
    return incomplete


_NOTED: set[tuple[str, str]] = set()

# Hashing decodes every image; one process (a tune study, a multitask evaluation) hashes each file once.
_HASH_CACHE: dict[tuple, list[str]] = {}


def record_hashes(records) -> dict[str, list[str]]:
    """``{record.key: [sha256, phash hex]}`` of each readable record's image (see the module docstring)."""
    from busai.data.audit import content_hash, in_threads
    from busai.data.discover import read_image

    def hashed(record) -> tuple[str, list[str] | None]:
        try:
            stat = os.stat(record.image)
            cache_key = (str(record.image), record.frame, stat.st_mtime_ns, stat.st_size)
            if cache_key not in _HASH_CACHE:
                digest, phash = content_hash(read_image(record.image, mode="L", frame=record.frame))
                _HASH_CACHE[cache_key] = [digest, f"{phash:016x}"]
        except (DataError, OSError):
            return record.key, None
        return record.key, _HASH_CACHE[cache_key]

    return {key: hashes for key, hashes in in_threads(hashed, list(records)) if hashes is not None}


def dataset_fingerprints(specs) -> dict[str, str]:
    """Each dataset's fingerprint (see :func:`busai.data.splits.dataset_fingerprint`), by name."""
    from busai.data.sources import parse_data_specs, scan_source
    from busai.data.splits import dataset_fingerprint

    return {spec.name: dataset_fingerprint(scan_source(spec)[0].records) for spec in parse_data_specs(specs)}
