"""Ensembles: several models of one task (the runs of ``busai train --folds K``, typically) answering
as one, their probabilities averaged.

An ensemble folder holds ``ensemble.json`` (task and member folder names) and one saved model
folder per member (``Model.save``); ``busai.load`` reads it like any model folder. The averaged
probabilities go back out as log-odds (segmentation) or log-probabilities (classification), so
the rest of busai (thresholds, calibration, TTA) treats an ensemble as one network. Each member
keeps its own preprocessing check: members must agree on input size, normalisation and colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from busai.backends import EnsembleLoaded
from busai.errors import CheckpointError
from busai.outputs import atomic_folder
from busai.runs import ENSEMBLE, resolve_model, write_json


def load_ensemble(folder: str | Path, *, device: str = "cpu", task: str | None = None) -> EnsembleLoaded:
    """Read an ensemble folder written by :func:`save_ensemble` (``busai.load`` does the same)."""
    return resolve_model(folder, task, device=device)


def save_ensemble(models: Sequence, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``models`` (:class:`busai.Model` objects) as one ensemble folder; returns its path."""
    folder = Path(folder).expanduser()
    if folder.exists() and not overwrite:
        raise CheckpointError(f"{folder}: already exists; choose a new folder or pass overwrite=True")
    EnsembleLoaded([m.loaded for m in models], source=str(folder))  # refuses mixed tasks or preprocessing before writing
    with atomic_folder(folder) as tmp:
        names = [f"member-{i}" for i in range(len(models))]
        for model, name in zip(models, names):
            model.save(tmp / name)
        write_json(tmp / ENSEMBLE, {"task": models[0].task, "members": names, "sources": [str(m.source) for m in models]})
    return folder
