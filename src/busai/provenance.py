"""What a model was trained on, and the guard that keeps its training images out of its scores.

A model's training data is, per dataset, the dataset's fingerprint and the relative paths of the
images it trained on (``train``) and chose its checkpoint on (``val``). A run folder knows it from
``config.json`` and ``splits.json``; a release folder from ``training_data.json``, which
:func:`busai.release.make_release` writes. Comparing by dataset fingerprint and relative path
(not by split-file hash) lets a model trained on BUSI's part of one split file be scored or
fine-tuned on a larger split file whose BUSI part is the same, and refuses exactly the cases
where an image would be scored by a model that saw it.
"""

from __future__ import annotations

from pathlib import Path

from busai.errors import CheckpointError, ConfigError, read_json
from busai.runs import CONFIG, SPLITS, TRAINING_DATA

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
    return describe_split(splits, config.get("train", {}).get("fold"), config.get("datasets"), config.get("data_fingerprint"))


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
    ``model_dir`` trained on or was selected on (see ``FORBIDDEN``), in a dataset with the same
    fingerprint (``fingerprints``: dataset name -> fingerprint of its whole listing). ``what``
    names the use in the message (e.g. "scoring", "fine-tuning on")."""
    seen = training_data(model_dir)
    if not seen:
        return
    by_fingerprint = {d["fingerprint"]: d for d in seen if d.get("fingerprint")}
    for role, records in records_by_role.items():
        kinds = FORBIDDEN[role]
        for name in dict.fromkeys(r.dataset for r in records):
            entry = by_fingerprint.get(fingerprints.get(name))
            if entry is None or not kinds:
                continue
            forbidden = {k for kind in kinds for k in entry[kind]}
            mine = [r for r in records if r.dataset == name]
            overlap = [r for r in mine if r.relpath in forbidden]
            if overlap:
                label = f"dataset '{name}'" if name else str(mine[0].root)
                raise ConfigError(
                    f"{model_dir}: {len(overlap)} of the {len(mine)} {role} images of {label} (e.g. {overlap[0].relpath}) were in this "
                    f"model's training data; {what} them would leak: use images the model never saw (another split, or --all on another dataset)"
                )


def dataset_fingerprints(specs) -> dict[str, str]:
    """Each dataset's fingerprint (see :func:`busai.data.splits.dataset_fingerprint`), by name."""
    from busai.data.sources import parse_data_specs, scan_source
    from busai.data.splits import dataset_fingerprint

    return {spec.name: dataset_fingerprint(scan_source(spec)[0].records) for spec in parse_data_specs(specs)}
