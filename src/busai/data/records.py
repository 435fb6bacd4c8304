"""The record every dataset reader yields and the problems a scan of a dataset finds.

A leaf module: the readers (:mod:`busai.data.discover`, :mod:`busai.data.sources`) and the DICOM
fields (:mod:`busai.data.dicom_records`) all build on these types without importing each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from busai import CLASSES
from busai.errors import DataError


@dataclass(frozen=True)
class Record:
    """One scan: image, lesion masks (union; none for a normal scan or classification-only data),
    label (None when unlabelled), dataset name, group (patient / case id), pixel spacing in mm and
    the 1-based frame of a DICOM cine (None for a plain image or a single-frame DICOM file)."""

    root: Path
    image: Path
    masks: tuple[Path, ...]
    label: str | None
    dataset: str = ""
    group: str | None = None
    pixel_spacing_mm: float | None = None
    frame: int | None = None

    @property
    def relpath(self) -> str:
        """Image path relative to the dataset root, POSIX style (``../`` where a manifest points outside)."""
        return Path(os.path.relpath(self.image, self.root)).as_posix()

    @property
    def key(self) -> str:
        """The identity used in split files: the relative path, prefixed ``DATASET:`` for a named dataset."""
        return f"{self.dataset}:{self.relpath}" if self.dataset else self.relpath

    @property
    def label_index(self) -> int:
        if self.label is None:
            raise DataError(f"{self.image}: has no label; label it (normal, benign or malignant) or leave it out of training and scoring")
        return CLASSES.index(self.label)

    @property
    def segmentable(self) -> bool:
        """Usable for segmentation: it has a mask, or it is a normal scan (its lesion is empty)."""
        return bool(self.masks) or self.label == "normal"


@dataclass(frozen=True)
class Problem:
    """A file-level problem found while scanning or auditing."""

    path: str  # relative to the dataset root
    kind: str  # short machine-readable tag, e.g. "missing_mask"
    message: str  # one line for a person: what is wrong and what to do

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "message": self.message}


@dataclass
class Scan:
    root: Path
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
