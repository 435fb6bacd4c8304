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
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from busai.errors import CheckpointError
from busai.outputs import atomic_folder

ENSEMBLE_FILE = "ensemble.json"


@dataclass
class EnsembleLoaded:
    """The backend interface of :class:`busai.runs.LoadedModel` over several members."""

    members: list
    source: str
    temperature: float = 1.0

    backend: ClassVar[str] = "ensemble"
    supports_gradients: ClassVar[bool] = False  # Grad-CAM and ONNX export run on one network: use a member

    def __post_init__(self) -> None:
        if not self.members:
            raise CheckpointError(f"{self.source}: an ensemble needs at least one member")
        first = self.members[0]
        for member in self.members[1:]:
            if member.task != first.task:
                raise CheckpointError(f"{member.source}: a {member.task} model in a {first.task} ensemble; members must share one task")
            mine = (member.image_size, tuple(member.mean), tuple(member.std), member.grayscale)
            theirs = (first.image_size, tuple(first.mean), tuple(first.std), first.grayscale)
            if mine != theirs:
                raise CheckpointError(f"{member.source}: preprocessing {mine} differs from {first.source}'s {theirs}; ensemble models trained alike")

    task = property(lambda self: self.members[0].task)
    image_size = property(lambda self: self.members[0].image_size)
    mean = property(lambda self: self.members[0].mean)
    std = property(lambda self: self.members[0].std)
    grayscale = property(lambda self: self.members[0].grayscale)
    preprocessing = property(lambda self: self.members[0].preprocessing)  # busai.preprocessing.Preprocessing, shared by every member
    device = property(lambda self: self.members[0].device)
    module = property(lambda self: None)

    @property
    def spec(self) -> dict:
        return {**self.members[0].spec, "ensemble": len(self.members)}

    @property
    def config(self) -> dict:
        return {**self.members[0].config, "ensemble": {"members": [m.source for m in self.members]}}

    def logits(self, batch: torch.Tensor, precision: str = "auto") -> torch.Tensor:
        """The members' mean probability, as logits that give it back (sigmoid or softmax)."""
        outputs = [m.logits(batch, precision).float().cpu() for m in self.members]
        if self.task == "segmentation":
            mean = torch.stack([torch.sigmoid(o) for o in outputs]).mean(0)
            return torch.logit(mean.clamp(1e-6, 1 - 1e-6))
        mean = torch.stack([torch.softmax(o / m.temperature, dim=1) for o, m in zip(outputs, self.members)]).mean(0)
        return torch.log(mean.clamp_min(1e-12))


def is_ensemble(folder: Path) -> bool:
    return (Path(folder) / ENSEMBLE_FILE).is_file()


def load_ensemble(folder: str | Path, *, device: str = "cpu", task: str | None = None) -> EnsembleLoaded:
    """Read an ensemble folder written by :func:`save_ensemble`."""
    from busai.api import load
    from busai.errors import read_json

    folder = Path(folder)
    info = read_json(folder / ENSEMBLE_FILE, missing="not an ensemble folder", fix="write it with busai.ensemble.save_ensemble")
    names = info.get("members") if isinstance(info, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and "/" not in n and n not in (".", "..") for n in names):
        raise CheckpointError(f"{folder / ENSEMBLE_FILE}: 'members' must list the member folder names; write it again with busai.ensemble.save_ensemble")
    # The ensemble's task, so a multitask member answers for it (saved multitask runs hold both heads).
    task = task or info.get("task")
    members = [load(folder / name, task=task, device=device).loaded for name in names]
    return EnsembleLoaded(members, source=str(folder))


def save_ensemble(models: Sequence, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``models`` (:class:`busai.Model` objects) as one ensemble folder; returns its path."""
    from busai.runs import write_json

    folder = Path(folder).expanduser()
    if folder.exists() and not overwrite:
        raise CheckpointError(f"{folder}: already exists; choose a new folder or pass overwrite=True")
    EnsembleLoaded([m.loaded for m in models], source=str(folder))  # refuses mixed tasks or preprocessing before writing
    with atomic_folder(folder) as tmp:
        names = [f"member-{i}" for i in range(len(models))]
        for model, name in zip(models, names):
            model.save(tmp / name)
        write_json(tmp / ENSEMBLE_FILE, {"task": models[0].task, "members": names, "sources": [str(m.source) for m in models]})
    return folder
