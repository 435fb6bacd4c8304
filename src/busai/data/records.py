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


TIFF_SUFFIXES = {".tif", ".tiff"}  # the plain images whose pages are frames (busai.data.discover.page_count)


@dataclass(frozen=True)
class Record:
    """One scan: image, lesion masks (union; none for a normal scan or classification-only data),
    label (None when unlabelled), dataset name, group (patient / case id), pixel spacing in mm and
    the 1-based frame of a DICOM cine or a multi-page TIFF (None for a file of one frame)."""

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
        """The label's index in :data:`busai.CLASSES`; a classifier over other labels maps them itself (busai.labels.resolve)."""
        if self.label is None:
            raise DataError(f"{self.image}: has no label; label it (normal, benign or malignant) or leave it out of training and scoring")
        if self.label not in CLASSES:
            raise DataError(f"{self.image}: label '{self.label}' is not one of {', '.join(CLASSES)}; train with --classes naming the data's labels")
        return CLASSES.index(self.label)

    @property
    def segmentable(self) -> bool:
        """Usable for segmentation: it has a mask, or it is a normal scan (its lesion is empty).
        Only ``normal`` means lesion-free: a scan with any other label and no mask is classification-only."""
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


def check_frame(path: Path, frame: int, frames: int) -> None:
    """One rule for every file with frames (DICOM, TIFF, a plain image's only frame): 1 to ``frames``."""
    if not 1 <= frame <= frames:
        raise DataError(f"{path}: --frame {frame} is out of range; the file holds {frames} frame(s), numbered from 1")
